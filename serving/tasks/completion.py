"""Code completion: the prompt (FIM or prefix-only, within the token budget),
one internal streaming generation, post-processed as it arrives and aborted
as soon as the suggestion is complete (no GPU time spent on text we drop)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.admission.dispatch import Dispatcher, EngineCall
from serving.admission.scheduler import Superseded
from serving.config import TasksConfig
from serving.engine_link.replica_info import ReplicaInfo
from serving.errors import BadRequestError, UpstreamError
from serving.fim_templates import (
    PLAIN_REPO_FORMAT,
    FimTemplate,
    RepoFormat,
    fim_template,
    repo_format,
)
from serving.request_context import RequestContext
from serving.tasks.fim import fit_to_budget
from serving.tasks.postprocess import InsertionPoint, Mode, StreamingPostProcessor
from serving.tasks.repo_snippets import Snippet, fit_snippets
from serving.tokens import TokenCounter
from serving.upstream.client import EngineHTTPError
from serving.upstream.registry import ModelStatus, ReplicaRegistry
from serving.upstream.sse import json_events

_SPECIAL_OVERHEAD = 2  # BOS and friends the engine may add
_MIN_PROMPT_BUDGET = 8
_DEFAULT_CONTEXT_LEN = 2048


@dataclass(frozen=True)
class PreparedCompletion:
    model: str
    prompt: str
    point: InsertionPoint  # where the suggestion goes (post-processing reads it)
    max_tokens: int
    stop: list[str]
    stop_token_ids: list[int]
    fim_mode: str  # "native" (the model's FIM template), "prefix-only" or "client" (rendered)
    trimmed: bool
    # Indentation typed before the cursor, held back from the prompt: models
    # continue "...\n" far better than "...\n    " (the spaces would be split
    # into odd tokens). The generation's own copy of it is dropped again.
    healed: str = ""
    # What the model saw of the code, for a tenant's training data: the code
    # before the cursor (with its path line), after it, and other files' context.
    seen_prefix: str = ""
    seen_suffix: str = ""
    seen_context: str = ""
    path: str | None = None

    def seen(self) -> dict[str, Any] | None:
        """What the model saw, for a tenant's training data (None for a prompt
        the client rendered itself: its parts are not known)."""
        if self.fim_mode == "client":
            return None
        return {
            "prefix": self.seen_prefix,
            "suffix": self.seen_suffix,
            "context": self.seen_context,
            "path": self.path,
            # The indentation held back from the prompt: the model writes it
            # before the suggestion (so must a model trained on the example).
            "healed": self.healed,
        }


@dataclass
class ChoiceDelta:
    index: int
    text: str
    finish_reason: str | None = None


@dataclass
class CompletionRun:
    """One generation in flight; iterate :meth:`deltas`, then read the counts."""

    prepared: PreparedCompletion
    call: EngineCall
    n: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)
    # Once a suggestion has a new line, it ends this long after its first token
    # ("time_limit"; llama.cpp's t_max_predict_ms): a slow engine still answers.
    time_limit_s: float | None = None
    ctx: RequestContext | None = None

    async def deltas(self) -> AsyncGenerator[ChoiceDelta, None]:
        processors = {i: StreamingPostProcessor(self.prepared.point) for i in range(self.n)}
        healers = {i: _WhitespaceHealer(self.prepared.healed) for i in range(self.n)}
        self.texts = dict.fromkeys(range(self.n), "")
        first_token: float | None = None
        try:
            async for event in json_events(self.call.chunks()):
                now = time.monotonic()
                first_token = first_token or now
                if event.get("usage") and not event.get("choices"):
                    continue
                for choice in event.get("choices", []):
                    index = int(choice.get("index", 0))
                    self.completion_tokens += len(choice.get("token_ids") or ())
                    if not self.prompt_tokens and choice.get("prompt_token_ids"):
                        self.prompt_tokens = len(choice["prompt_token_ids"])
                    if index in self.finish_reasons or index not in processors:
                        continue
                    processor = processors[index]
                    reason = choice.get("finish_reason")
                    raw = healers[index].feed(choice.get("text") or "", final=bool(reason))
                    text = processor.feed(raw)
                    if processor.done:
                        reason = "stop"
                    else:
                        if (
                            not reason
                            and self.time_limit_s is not None
                            and now - first_token > self.time_limit_s
                            and "\n" in processor.generated
                        ):
                            reason = "time_limit"
                        if reason:
                            text += processor.finish()
                    if text or reason:
                        self.texts[index] += text
                        if reason:
                            self.finish_reasons[index] = reason
                        yield ChoiceDelta(index, text, reason)
                if len(self.finish_reasons) == self.n:
                    break  # every suggestion is complete: stop generating
        except (TimeoutError, EngineHTTPError) as exc:
            if self.call.cancel_reason == "superseded":
                raise Superseded() from None
            raise UpstreamError(
                f"Replica {self.replica.replica_id} failed mid-answer: {exc or type(exc).__name__}",
                code="replica_failed",
            ) from None
        finally:
            # Early exits close the connection, which makes vLLM abort the request.
            self.call.finish()
            ctx = self.ctx
            if ctx is not None and not (ctx.prompt_tokens or ctx.completion_tokens):
                # The engine's own counts so far (token ids), should the answer
                # be cut short: the request's route notes its total when it ends.
                ctx.usage(self.prompt_tokens, self.completion_tokens)
        for index, processor in processors.items():
            if index not in self.finish_reasons:  # stream ended without a reason
                processor.feed(healers[index].feed("", final=True))
                text = processor.finish()
                self.texts[index] += text
                self.finish_reasons[index] = "stop"
                yield ChoiceDelta(index, text, "stop")

    @property
    def replica(self) -> ReplicaInfo:
        return self.call.replica


class _WhitespaceHealer:
    """Re-attaches a generation to the cursor when the prompt's trailing
    whitespace (newlines + indentation) was held back: the generation's
    leading blank lines go, and of the indentation of its first line only
    the model's is kept, and only when the user has typed none (column 0)."""

    def __init__(self, healed: str) -> None:
        self.indent = healed.rsplit("\n", 1)[-1]
        self.pending = ""
        self.settled = not healed

    def feed(self, text: str, *, final: bool = False) -> str:
        if self.settled:
            return text
        self.pending += text
        first = len(self.pending) - len(self.pending.lstrip())
        if first == len(self.pending) and not final:
            return ""  # only whitespace so far
        self.settled = True
        line_start = self.pending.rfind("\n", 0, first) + 1
        # The user's indentation wins; at column 0 the model's is kept.
        indent = "" if self.indent else self.pending[line_start:first]
        out, self.pending = indent + self.pending[first:], ""
        return out


class CodeCompleter:
    def __init__(
        self, dispatcher: Dispatcher, registry: ReplicaRegistry, config: TasksConfig
    ) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.config = config

    def prepare(
        self,
        status: ModelStatus,
        *,
        prefix: str,
        suffix: str,
        language: str | None,
        mode: Mode,
        max_tokens: int,
        stop: list[str] | None = None,
        context: Sequence[Snippet] = (),
        path: str | None = None,
        repo: str | None = None,
        rendered: bool = False,
        prefix_field: str = "prefix",
    ) -> PreparedCompletion:
        """The prompt for a completion at the cursor: the FIM prompt of the
        cursor's prefix and suffix (cut to the budget first), then as much of
        the repository ``context`` (other files) as the tokens left hold, in
        the model family's repository format. ``rendered``: ``prefix`` is a
        prompt a client already put in the model's format, sent as it is."""
        template = fim_template(status.fim_template)
        counter = self.registry.token_counter(status.name)
        context_len = status.max_model_len or _DEFAULT_CONTEXT_LEN
        overhead = _SPECIAL_OVERHEAD + (counter.count(template.overhead_text) if template else 0)
        budget = context_len - max_tokens - overhead
        if budget < _MIN_PROMPT_BUDGET:
            raise BadRequestError(
                f"max_tokens={max_tokens} leaves no room for the code in the model's "
                f"{context_len}-token context.",
                param="max_tokens",
            )
        if rendered:
            return self._as_rendered(
                status, prefix, language, max_tokens, stop, budget, prefix_field
            )
        # Heal when the cursor sits on a blank (or indentation-only) line:
        # send the prefix up to its last code character.
        stripped = prefix.rstrip()
        healed = prefix[len(stripped) :] if stripped and "\n" in prefix[len(stripped) :] else ""
        prefix_sent = prefix[: len(prefix) - len(healed)] if healed else prefix
        sent_suffix = suffix if template else ""
        if len(prefix_sent.encode()) + len(sent_suffix.encode()) <= budget:
            kept_prefix, kept_suffix, trimmed = prefix_sent, sent_suffix, False  # fits for sure
        else:
            fitted = fit_to_budget(
                prefix_sent,
                sent_suffix,
                budget=budget,
                count=counter.count,
                prefix_share=self.config.fim_prefix_share,
            )
            kept_prefix, kept_suffix, trimmed = fitted.prefix, fitted.suffix, fitted.trimmed
        repo_part, head = "", ""
        if context:
            # What the cursor's text left of the budget (counted once, only here).
            left = budget - counter.count(kept_prefix + kept_suffix)
            repo_context = fit_snippets(
                context,
                fmt=self._repo_format(status.fim_template, counter),
                current_path=path,
                current_text=kept_prefix + kept_suffix,
                repo=repo,
                budget=left,
                count=counter.count,
            )
            repo_part, head = repo_context.text, repo_context.prefix_head
        code = head + kept_prefix
        prompt = repo_part + (template.render(code, kept_suffix) if template else code)
        if not prompt:
            prompt = "\n"  # start of an empty file, no FIM: engines refuse an empty prompt
        user_stop = list(stop or [])
        engine_stop, stop_ids = self._stops(counter, template, user_stop)
        point = InsertionPoint(
            prefix=kept_prefix + healed,
            suffix=suffix,
            language=language,
            mode=mode,
            stop=tuple(user_stop) + (template.stop if template else ()),
        )
        return PreparedCompletion(
            model=status.name,
            prompt=prompt,
            point=point,
            max_tokens=max_tokens,
            stop=engine_stop,
            stop_token_ids=stop_ids,
            fim_mode="native" if template else "prefix-only",
            trimmed=trimmed,
            healed=healed,
            seen_prefix=code,
            seen_suffix=kept_suffix if template else suffix,
            seen_context=repo_part,
            path=path,
        )

    @staticmethod
    def _repo_format(template_name: str, counter: TokenCounter) -> RepoFormat:
        """The family's repository format, if the served model has its special
        tokens (a StarCoder 1 model served as ``starcoder`` lacks StarCoder2's
        ``<file_sep>``); else paths as comments in plain text."""
        fmt = repo_format(template_name)
        if counter.exact and any(counter.token_id(token) is None for token in fmt.tokens):
            return PLAIN_REPO_FORMAT
        return fmt

    @staticmethod
    def _stops(
        counter: TokenCounter, template: FimTemplate | None, user_stop: list[str]
    ) -> tuple[list[str], list[int]]:
        """Stop strings and token ids for the engine: the client's, and the
        template's (special tokens by id: they are not in the detokenized text)."""
        engine_stop = list(user_stop)
        stop_ids: list[int] = []
        for token in template.stop if template else ():
            token_id = counter.token_id(token)
            if token_id is not None:
                stop_ids.append(token_id)
            else:
                engine_stop.append(token)
        return engine_stop, stop_ids

    def _as_rendered(
        self,
        status: ModelStatus,
        prompt: str,
        language: str | None,
        max_tokens: int,
        stop: list[str] | None,
        budget: int,
        prefix_field: str,
    ) -> PreparedCompletion:
        """A prompt the client rendered: checked against the budget, never cut
        (cutting would break its FIM tokens) and never rendered again."""
        if not prompt:
            raise BadRequestError(f"'{prefix_field}' is empty.", param=prefix_field)
        counter = self.registry.token_counter(status.name)
        if len(prompt.encode()) > budget and (tokens := counter.count(prompt)) > budget:
            raise BadRequestError(
                f"'{prefix_field}' is {tokens} tokens; with max_tokens={max_tokens} the "
                f"model's context holds {budget} for the prompt.",
                param=prefix_field,
                code="context_length_exceeded",
            )
        template = fim_template(status.fim_template)
        user_stop = list(stop or [])
        engine_stop, stop_ids = self._stops(counter, template, user_stop)
        point = InsertionPoint(
            prefix=prompt,
            suffix="",
            language=language,
            mode="none",
            stop=tuple(user_stop) + (template.stop if template else ()),
        )
        return PreparedCompletion(
            model=status.name,
            prompt=prompt,
            point=point,
            max_tokens=max_tokens,
            stop=engine_stop,
            stop_token_ids=stop_ids,
            fim_mode="client",
            trimmed=False,
        )

    async def start(
        self,
        prepared: PreparedCompletion,
        sampling: dict[str, Any],
        *,
        n: int = 1,
        ctx: RequestContext | None = None,
        time_limit_s: float | None = None,
    ) -> CompletionRun:
        payload: dict[str, Any] = {
            **sampling,
            "model": prepared.model,
            "prompt": prepared.prompt,
            "max_tokens": prepared.max_tokens,
            "n": n,
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if prepared.stop:
            payload["stop"] = prepared.stop[:16]
        if prepared.stop_token_ids:
            payload["stop_token_ids"] = prepared.stop_token_ids
        if ctx is not None and ctx.affinity_text is None:
            ctx.affinity_text = prepared.point.prefix
        if ctx is not None and ctx.keep_training_data:
            ctx.training_context = prepared.seen()
        call = await self.dispatcher.open(
            ctx,
            prepared.model,
            "/v1/completions",
            payload,
            stream=True,
            cost=prepared.max_tokens * n,
        )
        return CompletionRun(prepared=prepared, call=call, n=n, time_limit_s=time_limit_s, ctx=ctx)

    async def complete(
        self,
        prepared: PreparedCompletion,
        sampling: dict[str, Any],
        *,
        n: int = 1,
        ctx: RequestContext | None = None,
    ) -> CompletionRun:
        """Run to the end (non-streaming callers)."""
        run = await self.start(prepared, sampling, n=n, ctx=ctx)
        async for _ in run.deltas():
            pass
        return run
