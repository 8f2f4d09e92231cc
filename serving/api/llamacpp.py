"""llama.cpp server's API as a thin front: ``/infill`` (llama.vscode,
llama.vim) and ``/completion`` are completions at the cursor
(``serving.api.cursor``); the answers are llama.cpp's objects, compact JSON
(llama.vim matches ``"content":"`` in the raw body).

``n_predict: 0`` only fills the prefix cache (the plugins send their ring of
context chunks so): the prompt is rendered as a completion's would be, its
prefill runs, nothing is generated for anyone, and the answer is not a
suggestion (no id, never tracked, never superseding the developer's real
completion).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from serving.api.cursor import CursorCompletions, CursorRequest, StartedCompletion
from serving.api.dialects import LLAMA_CPP
from serving.api.llamacpp_protocol import InfillRequest, LlamaCompletionRequest, _Sampling
from serving.api.responses import Answer, BodyAnswer, EventStream, guarded
from serving.errors import BadRequestError
from serving.request_context import RequestContext
from serving.tasks.completion import ChoiceDelta
from serving.tasks.repo_snippets import Snippet
from serving.upstream.registry import ModelStatus

_NAMES = {"prefix": "input_prefix", "max_tokens": "n_predict", "model": "model",
          "context": "input_extra"}  # fmt: skip
_SAMPLERS = ["top_k", "top_p", "min_p", "temperature"]


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _select(result: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """llama.cpp's ``response_fields``: the named values (``a/b``: nested),
    under their path as the key; missing paths are left out."""
    if fields is None:
        return result
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = result
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[path] = value
    return out


def _max_tokens(request: _Sampling) -> int | None:
    """vLLM generates at least one token: a cache fill (``n_predict: 0``) asks
    for one, which the prefill's own forward pass yields (no decode step),
    and drops it."""
    if request.n_predict == 0:
        return 1
    return request.n_predict if request.n_predict > 0 else None


def _time_limit(request: _Sampling) -> float | None:
    budget = request.t_max_predict_ms
    return budget / 1000 if budget and budget > 0 else None


class IndentStop:
    """llama.cpp's ``n_indent``: once a new line has begun, a line indented
    less than ``n_indent`` ends the completion, without that line."""

    def __init__(self, n_indent: int) -> None:
        self.n_indent = n_indent
        self.pending = ""  # the current line's indentation, its fate not yet known
        self.deciding = False  # in a new line, before its first non-blank character
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if self.n_indent <= 0:
            return text
        out = []
        for char in text:
            if self.deciding:
                if char == "\n":  # a blank line: kept, the next one decides
                    out.append(self.pending + char)
                    self.pending = ""
                elif char in " \t":
                    self.pending += char
                elif len(self.pending) < self.n_indent:
                    self.stopped = True
                    self.pending = ""
                    break
                else:
                    out.append(self.pending + char)
                    self.pending = ""
                    self.deciding = False
            else:
                out.append(char)
                if char == "\n":
                    self.deciding = True
        return "".join(out)

    def finish(self) -> str:
        rest, self.pending = ("" if self.stopped else self.pending), ""
        return rest


class LlamaCppServing:
    def __init__(self, cursor: CursorCompletions) -> None:
        self.cursor = cursor

    async def infill(self, request: InfillRequest, ctx: RequestContext) -> Answer:
        snippets = [
            Snippet(path=chunk.filename, text=chunk.text, kind="snippet", rank=rank)
            # The ring's last chunk is its newest: rank 0.
            for rank, chunk in enumerate(reversed(request.input_extra))
        ]
        warm = request.n_predict == 0
        if warm:
            # A cache fill is nobody's suggestion: it supersedes nothing, even
            # with a document header (admission reads the document at once).
            ctx.document = None
        elif ctx.document is None:
            ctx.document = f"llama.cpp:{request.id_slot}"  # per key: the client's slot
        cursor = CursorRequest(
            prefix=request.input_prefix + request.prompt,
            suffix=request.input_suffix,
            model=request.model,
            mode="none",  # the plugin trims its suggestions itself (n_indent, its own rules)
            max_tokens=_max_tokens(request),
            clamp_max_tokens=True,
            stop=request.stop,
            sampling=request.sampling(),
            context=snippets,
            n=request.n_cmpl,
            time_limit_s=_time_limit(request),
            strict_language=False,
            names=_NAMES,
        )
        return await self._serve(request, cursor, ctx, warm=warm)

    async def completion(self, request: LlamaCompletionRequest, ctx: RequestContext) -> Answer:
        cursor = CursorRequest(
            prefix=request.prompt,
            model=request.model,
            mode="none",
            max_tokens=_max_tokens(request),
            clamp_max_tokens=True,
            stop=request.stop,
            sampling=request.sampling(),
            n=request.n_cmpl,
            time_limit_s=_time_limit(request),
            rendered=True,  # /completion's prompt is the prompt
            strict_language=False,
            names={**_NAMES, "prefix": "prompt"},
        )
        return await self._serve(request, cursor, ctx, warm=request.n_predict == 0)

    async def props(self, ctx: RequestContext) -> BodyAnswer:
        status = self.cursor.model(None, ctx)
        settings = {"n_ctx": status.max_model_len, "params": self._settings(status, None)}
        return BodyAnswer(
            _compact(
                {
                    "default_generation_settings": settings,
                    "total_slots": 1,
                    "model_path": status.name,
                    "build_info": "seed-serve",
                }
            )
        )

    # ------------------------------------------------------------------ answers

    def _settings(self, status: ModelStatus, request: _Sampling | None) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "n_ctx": status.max_model_len,
            "n_predict": self.cursor.config.completion_max_tokens,
            "model": status.name,
            "samplers": _SAMPLERS,
            "stream": False,
        }
        if request is not None:
            settings.update(request.sampling())
            settings["n_predict"] = request.n_predict
            settings["stream"] = request.stream
        return settings

    async def _serve(
        self, request: _Sampling, cursor: CursorRequest, ctx: RequestContext, *, warm: bool
    ) -> Answer:
        if request.n_cmpl > self.cursor.config.max_candidates:
            raise BadRequestError(
                f"Invalid value for 'n_cmpl': at most {self.cursor.config.max_candidates}.",
                param="n_cmpl",
            )
        if warm and request.stream:
            raise BadRequestError("'stream' cannot be used with 'n_predict': 0.", param="stream")
        started = await self.cursor.start(cursor, ctx)
        if warm:
            ctx.response_id = None  # not a suggestion: never tracked
        results = _Results(started, request, self._settings(started.status, request), warm)
        if request.stream:
            return EventStream(guarded(results.events(ctx), LLAMA_CPP.stream_error, end=b""))
        await results.run_to_end()
        started.note(ctx)
        bodies = [_select(results.final(i), request.response_fields) for i in range(started.run.n)]
        return BodyAnswer(_compact(bodies[0] if len(bodies) == 1 else bodies))


class _Results:
    """The completions of one request as llama.cpp reports them."""

    def __init__(
        self,
        started: StartedCompletion,
        request: _Sampling,
        settings: dict[str, Any],
        warm: bool,
    ) -> None:
        self.started = started
        self.request = request
        self.settings = settings
        self.warm = warm
        n = started.run.n
        self.stops = [IndentStop(request.n_indent) for _ in range(n)]
        self.texts = [""] * n
        self.reasons: list[str | None] = [None] * n
        self.first: float | None = None

    def _take(self, delta: ChoiceDelta) -> str:
        """The part of ``delta`` the client gets (after n_indent, t_max_predict_ms)."""
        i = delta.index
        if self.reasons[i] is not None:
            return ""
        self.first = self.first or time.monotonic()
        text = "" if self.warm else self.stops[i].feed(delta.text)
        stop = self.stops[i].stopped
        if delta.finish_reason and not stop:
            text += self.stops[i].finish()
        self.texts[i] += text
        if stop or delta.finish_reason:
            self.reasons[i] = delta.finish_reason or "stop"
        return text

    def _all_done(self) -> bool:
        return all(r is not None for r in self.reasons)

    async def run_to_end(self) -> None:
        deltas = self.started.run.deltas()
        try:
            async for delta in deltas:
                self._take(delta)
                if self._all_done():
                    break  # closing the generation aborts it on the engine
        finally:
            await deltas.aclose()

    async def events(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        run = self.started.run
        deltas = run.deltas()
        try:
            async for delta in deltas:
                text = self._take(delta)
                if text:
                    chunk = {
                        "index": delta.index,
                        "content": text,
                        "tokens": [],
                        "stop": False,
                        "id_slot": self.request.id_slot,
                        "tokens_predicted": run.completion_tokens,
                        "tokens_evaluated": run.prompt_tokens,
                    }
                    yield b"data: " + _compact(chunk) + b"\n\n"
                if self._all_done():
                    break
        finally:
            await deltas.aclose()
        self.started.note(ctx)
        for i in range(run.n):
            final = _select(self.final(i, content=""), self.request.response_fields)
            yield b"data: " + _compact(final) + b"\n\n"

    def final(self, index: int, content: str | None = None) -> dict[str, Any]:
        run = self.started.run
        now = time.monotonic()
        first = self.first or now
        prompt_ms = (first - self.started.started) * 1000
        predicted_ms = (now - first) * 1000
        predicted = 0 if self.warm else run.completion_tokens
        reason = self.reasons[index] or run.finish_reasons.get(index) or "stop"
        text = self.texts[index] if content is None else content
        stop_type = "limit" if reason in ("length", "time_limit") else "eos"
        return {
            "index": index,
            "content": text,
            "tokens": [],
            "id_slot": self.request.id_slot,
            "stop": True,
            "model": self.started.status.name,
            "tokens_predicted": predicted,
            "tokens_evaluated": run.prompt_tokens,
            "generation_settings": self.settings,
            "prompt": "",
            "has_new_line": "\n" in self.texts[index],
            "truncated": self.started.prepared.trimmed,
            "stop_type": stop_type,
            "stopping_word": "",
            "tokens_cached": 0,  # vLLM does not report a request's prefix-cache hits
            "timings": {
                "prompt_n": run.prompt_tokens,
                "prompt_ms": round(prompt_ms, 3),
                "prompt_per_token_ms": round(prompt_ms / max(run.prompt_tokens, 1), 3),
                "prompt_per_second": round(run.prompt_tokens / max(prompt_ms / 1000, 1e-9), 3),
                "predicted_n": predicted,
                "predicted_ms": round(predicted_ms, 3),
                "predicted_per_token_ms": round(predicted_ms / max(predicted, 1), 3),
                "predicted_per_second": round(predicted / max(predicted_ms / 1000, 1e-9), 3),
            },
        }
