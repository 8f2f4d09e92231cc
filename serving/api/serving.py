"""Serving logic of the OpenAI routes: resolve the model, pick a replica,
forward, relay the answer (SSE chunks untouched, as they arrive).

``/v1/completions`` with ``suffix`` is fill-in-the-middle: the gateway renders
the model family's FIM prompt itself (or, for a model without FIM, sends the
prefix alone) and trims the answer against the suffix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.api.errors import sse_error_event
from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.api.sse import DONE, guarded_stream, sse_event
from serving.config import GatewayConfig
from serving.engines.dispatch import REPLICA_HEADER, Dispatcher
from serving.engines.registry import ModelStatus, ReplicaRegistry
from serving.engines.types import ReplicaInfo
from serving.errors import BadRequestError, NotFoundError, UpstreamError
from serving.tasks.completion import CodeCompleter, CompletionRun

logger = logging.getLogger("seed_serve.serving")

_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def resolve_model(registry: ReplicaRegistry, model: str) -> ModelStatus:
    status = registry.model(model)
    if status is None:
        raise NotFoundError(
            f"The model `{model}` does not exist. Available: "
            + ", ".join(m.name for m in registry.models()),
            param="model",
            code="model_not_found",
        )
    return status


class OpenAIServing:
    def __init__(
        self,
        config: GatewayConfig,
        registry: ReplicaRegistry,
        dispatcher: Dispatcher,
        completer: CodeCompleter,
    ) -> None:
        self.config = config
        self.registry = registry
        self.dispatcher = dispatcher
        self.completer = completer

    # ------------------------------------------------------------------ routes

    async def completions(self, request: CompletionRequest, request_id: str) -> Response:
        status = resolve_model(self.registry, request.model)
        self._check_n(request.n)
        self._check_output_limit(status, request.max_tokens, "max_tokens")
        if request.suffix is not None:
            return await self._fill_in_the_middle(request, status)
        self._check_prompt_fits(request, status)
        payload = request.model_dump(exclude_unset=True)
        return await self.forward("/v1/completions", payload, request.model, request.stream)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> Response:
        status = resolve_model(self.registry, request.model)
        self._check_n(request.n)
        if status.replicas_ready and not status.has_chat_template:
            raise BadRequestError(
                f"Model `{request.model}` is a base model without a chat template; "
                "use /v1/completions with a plain prompt instead.",
                param="messages",
                code="chat_not_supported",
            )
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        self._check_output_limit(status, request.output_limit(), field)
        payload = request.model_dump(exclude_unset=True)
        return await self.forward("/v1/chat/completions", payload, request.model, request.stream)

    # ------------------------------------------------------------------ checks

    def _check_n(self, n: int) -> None:
        if n > self.config.max_n:
            raise BadRequestError(
                f"Invalid value for 'n': {n} is above this server's limit of {self.config.max_n}.",
                param="n",
            )

    @staticmethod
    def _check_output_limit(status: ModelStatus, limit: int | None, field: str) -> None:
        if limit is not None and status.max_model_len is not None and limit > status.max_model_len:
            raise BadRequestError(
                f"Invalid value for '{field}': {limit} is more than the model's context "
                f"length of {status.max_model_len} tokens.",
                param=field,
            )

    def _check_prompt_fits(self, request: CompletionRequest, status: ModelStatus) -> None:
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
        for item in items:
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
        self, request: CompletionRequest, status: ModelStatus
    ) -> Response:
        if not isinstance(request.prompt, str):
            raise BadRequestError(
                "suffix needs `prompt` to be a single string (the text before the insertion point).",
                param="prompt",
            )
        if request.echo:
            raise BadRequestError("echo and suffix cannot be used together.", param="echo")
        if request.logprobs is not None:
            raise BadRequestError("logprobs are not available with suffix.", param="logprobs")
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
        run = await self.completer.start(prepared, sampling, n=request.n)
        headers = {REPLICA_HEADER: run.replica.replica_id}
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not request.stream:
            async for _ in run.deltas():
                pass
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "text_completion",
                    "created": created,
                    "model": request.model,
                    "choices": [
                        {
                            "index": i,
                            "text": run.texts[i],
                            "finish_reason": run.finish_reasons[i],
                            "logprobs": None,
                        }
                        for i in range(request.n)
                    ],
                    "usage": _usage(run),
                },
                headers=headers,
            )

        async def events() -> AsyncIterator[bytes]:
            async for delta in run.deltas():
                yield sse_event(
                    {
                        "id": completion_id,
                        "object": "text_completion",
                        "created": created,
                        "model": request.model,
                        "choices": [
                            {
                                "index": delta.index,
                                "text": delta.text,
                                "finish_reason": delta.finish_reason,
                                "logprobs": None,
                            }
                        ],
                    }
                )
            if request.wants_usage_chunk():
                yield sse_event(
                    {
                        "id": completion_id,
                        "object": "text_completion",
                        "created": created,
                        "model": request.model,
                        "choices": [],
                        "usage": _usage(run),
                    }
                )
            yield DONE

        return StreamingResponse(
            guarded_stream(events()),
            media_type="text/event-stream",
            headers={**headers, **_STREAM_HEADERS},
        )

    # ------------------------------------------------------------------ relay

    async def forward(
        self, path: str, payload: dict[str, Any], model: str, stream: bool
    ) -> Response:
        upstream, replica = await self.dispatcher.open(model, path, payload)
        headers = {REPLICA_HEADER: replica.replica_id}
        if not stream:
            try:
                raw = await upstream.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                upstream.close()
                raise UpstreamError(
                    f"Replica {replica.replica_id} failed while answering: {exc}",
                    code="replica_failed",
                    headers=headers,
                ) from exc
            upstream.release()
            return Response(raw, media_type="application/json", headers=headers)
        return StreamingResponse(
            _relay(upstream, replica),
            media_type="text/event-stream",
            headers={**headers, **_STREAM_HEADERS},
        )


def _usage(run: CompletionRun) -> dict[str, int]:
    return {
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
    }


async def _relay(upstream: aiohttp.ClientResponse, replica: ReplicaInfo) -> AsyncIterator[bytes]:
    """The engine's SSE bytes as they come; a failure mid-stream becomes an
    error event and ``[DONE]``. Leaving early (client gone) closes the engine
    connection, which makes vLLM abort the request."""
    finished = False
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
        finished = True
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        logger.warning("replica %s failed mid-stream: %s", replica.replica_id, exc)
        error = UpstreamError(
            f"Replica {replica.replica_id} failed mid-stream: {exc or type(exc).__name__}",
            code="replica_failed",
        )
        yield sse_error_event(error)
        yield DONE
        finished = True
    finally:
        if finished:
            upstream.release()
        else:
            upstream.close()
