"""Serving logic of the OpenAI routes: resolve the model, pick a replica,
forward, relay the answer (SSE chunks untouched, as they arrive).

``/v1/completions`` with ``suffix`` is fill-in-the-middle: the gateway renders
the model family's FIM prompt itself (or, for a model without FIM, sends the
prefix alone) and trims the answer against the suffix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from serving.admission.dispatch import Dispatcher, EngineCall
from serving.admission.models import ModelResolver
from serving.admission.scheduler import Superseded
from serving.api.protocol import (
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from serving.api.responses import (
    DONE,
    Answer,
    BodyAnswer,
    EventStream,
    guarded,
    sse_error,
    sse_event,
)
from serving.config import GatewayConfig, LimitsConfig
from serving.errors import APIError, BadRequestError, UpstreamError
from serving.request_context import RequestContext
from serving.tasks.completion import CodeCompleter
from serving.upstream.client import EngineHTTPError
from serving.upstream.registry import ModelStatus, ReplicaRegistry
from serving.upstream.sse import SSEReader, event_around

logger = logging.getLogger("seed_serve.serving")

_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_NO_CAPS = LimitsConfig()  # no key (auth off): no per-request caps


class OpenAIServing:
    def __init__(
        self,
        config: GatewayConfig,
        registry: ReplicaRegistry,
        dispatcher: Dispatcher,
        completer: CodeCompleter,
        models: ModelResolver,
    ) -> None:
        self.config = config
        self.registry = registry
        self.models = models
        self.dispatcher = dispatcher
        self.completer = completer

    # ------------------------------------------------------------------ routes

    async def completions(self, request: CompletionRequest, ctx: RequestContext) -> Answer:
        status = self.models.resolve(request.model, ctx)
        ctx.model = status.name
        if isinstance(request.prompt, str):
            ctx.prompt_text = request.prompt
            ctx.affinity_text = request.prompt
        self._check_n(request.n, ctx)
        if request.best_of is not None and request.best_of > self.config.max_best_of:
            raise BadRequestError(
                f"Invalid value for 'best_of': at most {self.config.max_best_of}.", param="best_of"
            )
        self._check_output_limit(status, request.max_tokens, "max_tokens", ctx)
        if request.suffix is not None:
            return await self._fill_in_the_middle(request, status, ctx)
        self._check_prompt_fits(request, status, ctx)
        payload = request.model_dump(exclude_unset=True)
        return await self.forward(ctx, "/v1/completions", payload, status.name, request.stream)

    async def chat(self, request: ChatCompletionRequest, ctx: RequestContext) -> Answer:
        status = self._check_chat(request, ctx)
        payload = request.model_dump(exclude_unset=True)
        return await self.forward(ctx, "/v1/chat/completions", payload, status.name, request.stream)

    async def open_chat_stream(
        self, request: ChatCompletionRequest, ctx: RequestContext
    ) -> EngineCall:
        """A chat completion's engine stream (with usage), for fronts that
        translate it into their own protocol (Ollama's /api/chat)."""
        status = self._check_chat(request, ctx)
        payload = request.model_dump(exclude_unset=True)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        return await self.dispatcher.open(
            ctx, status.name, "/v1/chat/completions", payload, stream=True, cost=_cost(payload)
        )

    def _check_chat(self, request: ChatCompletionRequest, ctx: RequestContext) -> ModelStatus:
        status = self.models.resolve(request.model, ctx)
        ctx.model = status.name
        self._check_n(request.n, ctx)
        if status.replicas_ready and not status.has_chat_template:
            raise BadRequestError(
                f"Model `{request.model}` is a base model without a chat template; "
                "use /v1/completions with a plain prompt instead.",
                param="messages",
                code="chat_not_supported",
            )
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        self._check_output_limit(status, request.output_limit(), field, ctx)
        return status

    # ------------------------------------------------------------------ checks

    @staticmethod
    def caps(ctx: RequestContext) -> LimitsConfig:
        """The per-request caps of the caller's key and tenant (looked up by the
        front door; none without a key)."""
        return ctx.caps or _NO_CAPS

    def _check_n(self, n: int, ctx: RequestContext) -> None:
        limit = min(self.config.max_n, self.caps(ctx).max_n or self.config.max_n)
        if n > limit:
            raise BadRequestError(
                f"Invalid value for 'n': {n} is above the limit of {limit}.", param="n"
            )

    def _check_output_limit(
        self, status: ModelStatus, limit: int | None, field: str, ctx: RequestContext
    ) -> None:
        if limit is not None and status.max_model_len is not None and limit > status.max_model_len:
            raise BadRequestError(
                f"Invalid value for '{field}': {limit} is more than the model's context "
                f"length of {status.max_model_len} tokens.",
                param=field,
            )
        cap = self.caps(ctx).max_tokens
        if limit is not None and cap is not None and limit > cap:
            raise BadRequestError(
                f"Invalid value for '{field}': {limit} is above your key's limit of {cap}.",
                param=field,
                code="max_tokens_limit",
            )

    def check_prompt_cap(self, ctx: RequestContext, model: str, texts: list[str]) -> None:
        """The key's max_prompt_tokens (counted only when the bytes could exceed it)."""
        cap = self.caps(ctx).max_prompt_tokens
        if cap is None:
            return
        counter = self.registry.token_counter(model)
        for text in texts:
            if len(text.encode()) > cap and counter.count(text) > cap:
                raise BadRequestError(
                    f"The prompt is longer than your key's limit of {cap} tokens.",
                    param="prompt",
                    code="prompt_too_long",
                )

    def _check_prompt_fits(
        self, request: CompletionRequest, status: ModelStatus, ctx: RequestContext
    ) -> None:
        """Prompt + max_tokens must fit the context (as OpenAI answers; vLLM would
        silently shorten the completion instead)."""
        context = status.max_model_len
        if context is None:
            return
        max_tokens = request.max_tokens or _DEFAULT_MAX_TOKENS
        prompt = request.prompt
        one_prompt = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], int))
        items: list[Any] = [prompt] if one_prompt else list(prompt)
        counter = self.registry.token_counter(status.name)
        self.check_prompt_cap(ctx, status.name, [i for i in items if isinstance(i, str)])
        cap = self.caps(ctx).max_prompt_tokens
        for item in items:
            if isinstance(item, list) and cap is not None and len(item) > cap:
                raise BadRequestError(
                    f"The prompt is longer than your key's limit of {cap} tokens.",
                    param="prompt",
                    code="prompt_too_long",
                )
            if isinstance(item, list):
                prompt_tokens = len(item)
            elif len(item.encode()) + max_tokens <= context or not counter.exact:
                continue  # fits for sure (a token is at least one byte), or cannot tell
            else:
                prompt_tokens = counter.count(item)
            if prompt_tokens + max_tokens > context:
                raise BadRequestError(
                    f"This model's maximum context length is {context} tokens. However, you "
                    f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                    f"prompt, {max_tokens} for the completion). Please reduce the prompt or "
                    "max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )

    # ------------------------------------------------------------------ FIM

    async def _fill_in_the_middle(
        self, request: CompletionRequest, status: ModelStatus, ctx: RequestContext
    ) -> Answer:
        if not isinstance(request.prompt, str):
            raise BadRequestError(
                "suffix needs `prompt` to be a single string (the text before the insertion point).",
                param="prompt",
            )
        if request.echo:
            raise BadRequestError("echo and suffix cannot be used together.", param="echo")
        if request.logprobs is not None:
            raise BadRequestError("logprobs are not available with suffix.", param="logprobs")
        self.check_prompt_cap(ctx, status.name, [request.prompt, request.suffix or ""])
        prepared = self.completer.prepare(
            status,
            prefix=request.prompt,
            suffix=request.suffix or "",
            language=None,
            mode="none",
            max_tokens=request.max_tokens or _DEFAULT_MAX_TOKENS,
            stop=[request.stop] if isinstance(request.stop, str) else request.stop,
        )
        sampling = request.model_dump(
            exclude_unset=True,
            exclude={
                "model",
                "prompt",
                "suffix",
                "max_tokens",
                "stop",
                "n",
                "stream",
                "stream_options",
                "echo",
                "best_of",
            },
        )
        run = await self.completer.start(prepared, sampling, n=request.n, ctx=ctx)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        ctx.response_id = completion_id
        created = int(time.time())

        def answer(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
            return Completion(
                id=completion_id, created=created, model=request.model, choices=choices, usage=usage
            )

        def note_usage() -> Usage:
            ctx.usage(run.prompt_tokens, run.completion_tokens)
            ctx.finish_reason = run.finish_reasons.get(0)
            ctx.completion_text = run.texts.get(0)
            return Usage.of(run.prompt_tokens, run.completion_tokens)

        if not request.stream:
            async for _ in run.deltas():
                pass
            usage = note_usage()
            choices = [
                CompletionChoice(index=i, text=run.texts[i], finish_reason=run.finish_reasons[i])
                for i in range(request.n)
            ]
            return BodyAnswer(answer(choices, usage).json_bytes())

        async def events() -> AsyncIterator[bytes]:
            async for delta in run.deltas():
                choice = CompletionChoice(
                    index=delta.index, text=delta.text, finish_reason=delta.finish_reason
                )
                yield sse_event(answer([choice]).json_bytes())
            usage = note_usage()
            if request.wants_usage_chunk():
                yield sse_event(answer([], usage).json_bytes())
            yield DONE

        return EventStream(guarded(events()))

    # ------------------------------------------------------------------ relay

    async def forward(
        self, ctx: RequestContext, path: str, payload: dict[str, Any], model: str, stream: bool
    ) -> Answer:
        client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        if stream:
            # Always ask for usage (audit, quotas, metrics); drop it again if the
            # client did not ask for it.
            payload["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }
        call = await self.dispatcher.open(
            ctx, model, path, payload, stream=stream, cost=_cost(payload)
        )
        if not stream:
            call.finish()
            raw = call.body or b""
            _note_answer(ctx, raw)
            return BodyAnswer(raw)
        return EventStream(_relay(call, ctx, keep_usage=client_wants_usage))


def _cost(payload: dict[str, Any]) -> float:
    """Scheduling weight: the tokens this request may generate."""
    limit = payload.get("max_tokens") or payload.get("max_completion_tokens") or _DEFAULT_MAX_TOKENS
    return float(limit) * float(payload.get("n") or 1)


def _note_answer(ctx: RequestContext, raw: bytes) -> None:
    """Usage, id, finish reason and text of an engine's whole answer."""
    try:
        data = json.loads(raw)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    _note_usage(ctx, data)
    if isinstance(data.get("id"), str):
        ctx.response_id = data["id"]
    choices = data.get("choices")
    if choices and isinstance(choices[0], dict):
        first = choices[0]
        ctx.finish_reason = first.get("finish_reason")
        text = first.get("text")
        if text is None and isinstance(first.get("message"), dict):
            text = first["message"].get("content")
        if isinstance(text, str):
            ctx.completion_text = text


def _note_usage(ctx: RequestContext, data: dict[str, Any]) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        ctx.usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


# What the relay reads of a stream, found in any JSON (any spacing between a
# key, its colon and its value, any key order) without parsing every event:
# a finish reason's value (a plain word: stop, length, ...), and the usage
# event, which is parsed (and dropped unless the client asked for it).
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([^"\\]{1,64})"')
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class _StreamReading:
    """What the relay reads of a stream it passes on: the answer's id (from the
    first event, parsed), the finish reason, and the usage (whose event it
    drops unless the client asked for it). It reads whole batches of events
    and parses two per stream: reading them one by one was about a fifth of
    the app's CPU per streamed request (cProfile, 8-token streams)."""

    def __init__(self, ctx: RequestContext, keep_usage: bool) -> None:
        self.ctx = ctx
        self.keep_usage = keep_usage
        self.seen_first = False

    def relay(self, batch: bytes) -> bytes:
        """Note what ``batch`` (complete events) says; the bytes to relay."""
        ctx = self.ctx
        ctx.relayed_events += batch.count(b"\n\n")  # usage, if the stream is cut short
        if not self.seen_first:
            self.seen_first = True
            with contextlib.suppress(ValueError, AttributeError):
                answer_id = event_around(batch, 0)[1].json().get("id")
                if isinstance(answer_id, str) and len(answer_id) <= 256:
                    ctx.response_id = answer_id
        if ctx.finish_reason is None and b'"finish_reason"' in batch:
            found = _FINISH_REASON.search(batch)
            if found is not None:
                ctx.finish_reason = found.group(1).decode("ascii", "replace")
        if b'"usage"' in batch:
            batch = self._read_usage(batch)
        return batch

    def _read_usage(self, batch: bytes) -> bytes:
        """Note each usage event's counts; drop it unless the client asked."""
        searched_from = 0
        while (found := _HAS_USAGE.search(batch, searched_from)) is not None:
            start, event = event_around(batch, found.start())
            searched_from = start + len(event.raw)
            try:
                parsed = event.json()
            except ValueError:
                continue  # not the JSON we expect: relay it as it is
            if not isinstance(parsed, dict) or not isinstance(parsed.get("usage"), dict):
                continue
            _note_usage(self.ctx, parsed)
            if not (self.keep_usage or parsed.get("choices")):
                batch = batch[:start] + batch[searched_from:]
                searched_from = start
        return batch


async def _relay(
    call: EngineCall, ctx: RequestContext, *, keep_usage: bool
) -> AsyncIterator[bytes]:
    """The engine's SSE events as they come, each as soon as it is complete.
    The usage event is read (and dropped unless asked for); a failure
    mid-stream becomes an error event and ``[DONE]``. Leaving early (client
    gone) closes the engine connection, which makes vLLM abort the request."""
    reader = SSEReader()
    reading = _StreamReading(ctx, keep_usage)
    try:
        async for chunk in call.chunks():
            complete = reader.feed(chunk)
            if complete:
                relayed = reading.relay(complete)
                if relayed:
                    yield relayed
        rest = reader.rest()
        if rest:
            yield rest
    except (TimeoutError, EngineHTTPError) as exc:
        if call.cancel_reason == "superseded":
            ctx.outcome = "superseded"
            error: APIError = Superseded()
        else:
            logger.warning("replica %s failed mid-stream: %s", call.replica.replica_id, exc)
            ctx.outcome = "error"
            error = UpstreamError(
                f"Replica {call.replica.replica_id} failed mid-stream: {exc or type(exc).__name__}",
                code="replica_failed",
            )
        ctx.error_code = error.code
        yield sse_error(error)
        yield DONE
    finally:
        call.finish()
