"""Serving logic of the OpenAI routes: resolve the model, pick a replica,
forward, relay the answer (SSE chunks untouched, as they arrive)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi.responses import Response, StreamingResponse

from serving.api.errors import sse_error_event
from serving.api.middleware import REPLICA_HEADER
from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.config import GatewayConfig
from serving.engines.client import EngineClient
from serving.engines.registry import ModelStatus, ReplicaRegistry
from serving.engines.router import RoundRobinRouter
from serving.engines.types import ReplicaInfo
from serving.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamError,
    api_error_for_status,
)

logger = logging.getLogger("seed_serve.serving")

_DONE = b"data: [DONE]\n\n"
_RETRY_AFTER_S = "2"


class OpenAIServing:
    def __init__(
        self,
        config: GatewayConfig,
        registry: ReplicaRegistry,
        client: EngineClient,
        router: RoundRobinRouter | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.client = client
        self.router = router or RoundRobinRouter()

    # ------------------------------------------------------------------ routes

    async def completions(self, request: CompletionRequest, request_id: str) -> Response:
        status = self._resolve(request.model)
        self._check_n(request.n)
        if request.suffix is not None:
            raise BadRequestError(
                f"suffix (fill-in-the-middle) is not supported by model `{request.model}`.",
                param="suffix",
            )
        self._check_output_limit(status, request.max_tokens, "max_tokens")
        payload = request.model_dump(exclude_unset=True)
        return await self.forward("/v1/completions", payload, request.model, request.stream)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> Response:
        status = self._resolve(request.model)
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

    def _resolve(self, model: str) -> ModelStatus:
        status = self.registry.model(model)
        if status is None:
            raise NotFoundError(
                f"The model `{model}` does not exist. Available: "
                + ", ".join(m.name for m in self.registry.models()),
                param="model",
                code="model_not_found",
            )
        return status

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

    # ------------------------------------------------------------------ relay

    def _candidates(self, model: str) -> list[ReplicaInfo]:
        ready = self.registry.ready(model)
        if not ready:
            raise ServiceUnavailableError(
                f"No replica of model `{model}` is ready yet; retry shortly.",
                code="no_ready_replica",
                headers={"Retry-After": _RETRY_AFTER_S},
            )
        return ready

    async def forward(
        self, path: str, payload: dict[str, Any], model: str, stream: bool
    ) -> Response:
        """Send to one replica; on a connection failure before any answer, try another."""
        payload.setdefault("priority", 0)
        body = json.dumps(payload, separators=(",", ":")).encode()
        candidates = self._candidates(model)
        tried: set[str] = set()
        last_error: Exception | None = None
        for _ in range(min(2, len(candidates))):
            remaining = [r for r in candidates if r.replica_id not in tried]
            replica = self.router.pick(model, remaining)
            tried.add(replica.replica_id)
            try:
                upstream = await self.client.post(replica, path, body)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                logger.warning("replica %s unreachable: %s", replica.replica_id, exc)
                last_error = exc
                continue
            return await self._answer(upstream, replica, stream)
        raise UpstreamError(
            f"Could not reach a replica of model `{model}`: {last_error}",
            code="replica_unreachable",
        )

    async def _answer(
        self, upstream: aiohttp.ClientResponse, replica: ReplicaInfo, stream: bool
    ) -> Response:
        headers = {REPLICA_HEADER: replica.replica_id}
        if upstream.status != 200:
            try:
                raw = await upstream.read()
            finally:
                upstream.release()
            raise _upstream_error(upstream.status, raw, replica, headers)
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
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


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
        yield _DONE
        finished = True
    finally:
        if finished:
            upstream.release()
        else:
            upstream.close()


def _upstream_error(
    status: int, raw: bytes, replica: ReplicaInfo, headers: dict[str, str]
) -> APIError:
    message, param = f"Replica {replica.replica_id} answered HTTP {status}.", None
    try:
        data = json.loads(raw)
        error = data.get("error", data)
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param = error.get("param")
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    if status >= 500 and status != 503:
        return UpstreamError(f"Engine error: {message}", code="engine_error", headers=headers)
    cls = api_error_for_status(status)
    return cls(message, param=param, headers=headers)
