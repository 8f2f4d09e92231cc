"""Sending one request to one replica of a model (and another, if the first
cannot be reached before it answered anything)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from serving.engines.client import EngineClient
from serving.engines.registry import ReplicaRegistry
from serving.engines.router import RoundRobinRouter
from serving.engines.types import ReplicaInfo
from serving.errors import (
    APIError,
    ServiceUnavailableError,
    UpstreamError,
    api_error_for_status,
)

logger = logging.getLogger("seed_serve.dispatch")

REPLICA_HEADER = "x-seed-serve-replica"
_RETRY_AFTER_S = "2"
_MAX_ATTEMPTS = 2


class Dispatcher:
    def __init__(
        self,
        registry: ReplicaRegistry,
        client: EngineClient,
        router: RoundRobinRouter | None = None,
    ) -> None:
        self.registry = registry
        self.client = client
        self.router = router or RoundRobinRouter()

    def _candidates(self, model: str) -> list[ReplicaInfo]:
        ready = self.registry.ready(model)
        if not ready:
            raise ServiceUnavailableError(
                f"No replica of model `{model}` is ready yet; retry shortly.",
                code="no_ready_replica",
                headers={"Retry-After": _RETRY_AFTER_S},
            )
        return ready

    async def open(
        self, model: str, path: str, payload: dict[str, Any]
    ) -> tuple[aiohttp.ClientResponse, ReplicaInfo]:
        """An engine response with status 200 (the caller reads and releases it).

        An engine's own 4xx/5xx becomes the matching :class:`APIError`.
        """
        payload.setdefault("priority", 0)
        body = json.dumps(payload, separators=(",", ":")).encode()
        candidates = self._candidates(model)
        tried: set[str] = set()
        last_error: Exception | None = None
        for _ in range(min(_MAX_ATTEMPTS, len(candidates))):
            remaining = [r for r in candidates if r.replica_id not in tried]
            replica = self.router.pick(model, remaining)
            tried.add(replica.replica_id)
            try:
                upstream = await self.client.post(replica, path, body)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                logger.warning("replica %s unreachable: %s", replica.replica_id, exc)
                last_error = exc
                continue
            if upstream.status != 200:
                try:
                    raw = await upstream.read()
                finally:
                    upstream.release()
                raise upstream_error(upstream.status, raw, replica)
            return upstream, replica
        raise UpstreamError(
            f"Could not reach a replica of model `{model}`: {last_error}",
            code="replica_unreachable",
        )


def upstream_error(status: int, raw: bytes, replica: ReplicaInfo) -> APIError:
    """An engine's error answer as ours (its message and param kept)."""
    headers = {REPLICA_HEADER: replica.replica_id}
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
