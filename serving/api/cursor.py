"""Completion at the cursor, whatever protocol asked for it.

``/v1/code/completions``, Ollama's ``/api/generate``, llama.cpp's ``/infill``
and Tabby's ``/v1/completions`` are thin fronts: each maps its request onto a
:class:`CursorRequest` and its answer back from the :class:`StartedCompletion`.
The checks, the FIM prompt (with the repository context), admission and
post-processing are the same for all of them: here and below, once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.admission.models import ModelResolver
from serving.config import TasksConfig
from serving.errors import BadRequestError
from serving.request_context import RequestContext
from serving.tasks.completion import CodeCompleter, CompletionRun, PreparedCompletion
from serving.tasks.languages import UnsupportedLanguage, resolve_language
from serving.tasks.postprocess import Mode, choose_mode
from serving.tasks.repo_snippets import Snippet
from serving.upstream.registry import ModelStatus, ReplicaRegistry

# Seed Serve's names of the request fields; a front names its own in errors.
_OWN_NAMES = {
    "model": "model",
    "prefix": "prefix",
    "max_tokens": "max_tokens",
    "language": "language",
    "context": "context",
}


@dataclass(frozen=True)
class CursorRequest:
    """A completion at the cursor, in Seed Serve's terms."""

    prefix: str
    suffix: str = ""
    model: str | None = None  # None: the first served model
    language: str | None = None
    path: str | None = None  # the file being edited (language, supersession, context)
    mode: str = "auto"  # auto | line | block | none (none: no post-processing)
    max_tokens: int | None = None  # None: tasks.completion_max_tokens
    clamp_max_tokens: bool = False  # above the limit: cut to it (protocols without a cap)
    stop: list[str] | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    context: Sequence[Snippet] = ()  # other files of the repository
    repo: str | None = None  # the repository's name, for formats that carry it
    n: int = 1
    # The prompt is already in the model's format (a client rendered the FIM
    # tokens itself): sent as it is, never rendered twice.
    rendered: bool = False
    time_limit_s: float | None = None  # after its first new line (CompletionRun)
    strict_language: bool = True  # an unknown language is a 400 (else: no language)
    names: Mapping[str, str] = field(default_factory=dict)  # the front's field names

    def name(self, field_name: str) -> str:
        return self.names.get(field_name, _OWN_NAMES.get(field_name, field_name))


@dataclass
class StartedCompletion:
    """A completion in flight: iterate ``run.deltas()``, then :meth:`note`."""

    id: str
    created: int
    status: ModelStatus
    prepared: PreparedCompletion
    run: CompletionRun
    language: str | None
    mode: Mode
    started: float  # time.monotonic() at the start (durations in answers)

    def note(self, ctx: RequestContext, *, index: int = 0) -> None:
        """Usage, finish reason and text of the answer into the request's record."""
        ctx.usage(self.run.prompt_tokens, self.run.completion_tokens)
        ctx.finish_reason = self.run.finish_reasons.get(index)
        ctx.completion_text = self.run.texts.get(index)


class CursorCompletions:
    def __init__(
        self,
        config: TasksConfig,
        registry: ReplicaRegistry,
        completer: CodeCompleter,
        models: ModelResolver,
    ) -> None:
        self.config = config
        self.registry = registry
        self.completer = completer
        self.models = models

    def model(
        self, name: str | None, ctx: RequestContext | None, *, field_name: str = "model"
    ) -> ModelStatus:
        """The served model called ``name`` (None: the first one), and the
        team adapter serving it for this caller (``ctx.adapter``)."""
        if name is None:
            models = self.registry.models()
            if not models:
                raise BadRequestError("No model is configured.", param=field_name)
            name = models[0].name
        return self.models.resolve(name, ctx, param=field_name)

    def check_size(self, field_name: str, *texts: str | None) -> None:
        size = sum(len(t.encode("utf-8")) for t in texts if t)
        if size > self.config.max_code_bytes:
            raise BadRequestError(
                f"'{field_name}' is {size} bytes; this server accepts at most "
                f"{self.config.max_code_bytes} bytes of code per request.",
                param=field_name,
                code="code_too_large",
            )

    def _language(self, request: CursorRequest) -> str | None:
        try:
            return resolve_language(request.language, request.path)
        except UnsupportedLanguage as exc:
            if not request.strict_language:
                return None
            name = request.name("language")
            raise BadRequestError(str(exc), param=name, code="unsupported_language") from None

    def _max_tokens(self, request: CursorRequest) -> int:
        max_tokens = request.max_tokens or self.config.completion_max_tokens
        limit = self.config.completion_max_tokens_limit
        if max_tokens > limit:
            if request.clamp_max_tokens:
                return limit
            raise BadRequestError(
                f"Invalid value for '{request.name('max_tokens')}': at most {limit}.",
                param=request.name("max_tokens"),
            )
        return max_tokens

    async def start(self, request: CursorRequest, ctx: RequestContext) -> StartedCompletion:
        """Check, prepare and send the completion (admitted, on a replica)."""
        started = time.monotonic()
        status = self.model(request.model, ctx, field_name=request.name("model"))
        ctx.model = status.name
        ctx.prompt_text = request.prefix
        if ctx.document is None and request.path:
            ctx.document = request.path  # per key: the same path of the same developer
        self.check_size(request.name("prefix"), request.prefix, request.suffix)
        self.check_size(request.name("context"), *(s.text for s in request.context))
        language = self._language(request)
        max_tokens = self._max_tokens(request)
        mode: Mode = (
            "none"
            if request.rendered
            else choose_mode(request.mode, request.prefix, request.suffix)
        )
        prepared = self.completer.prepare(
            status,
            prefix=request.prefix,
            suffix=request.suffix,
            language=language,
            mode=mode,
            max_tokens=max_tokens,
            stop=request.stop,
            context=request.context,
            path=request.path,
            repo=request.repo,
            rendered=request.rendered,
            prefix_field=request.name("prefix"),
        )
        run = await self.completer.start(
            prepared,
            dict(request.sampling),
            n=request.n,
            ctx=ctx,
            time_limit_s=request.time_limit_s,
        )
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        ctx.response_id = completion_id
        ctx.language = language

        return StartedCompletion(
            id=completion_id,
            created=int(time.time()),
            status=status,
            prepared=prepared,
            run=run,
            language=language,
            mode=mode,
            started=started,
        )
