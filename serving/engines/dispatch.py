"""Sending one request to one replica: wait for a slot in the admission queue,
post it, and on a connection failure before any answer try another replica."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from serving.admission.context import RequestContext
from serving.admission.scheduler import AdmissionScheduler, Lease, Ticket
from serving.config import AdmissionConfig
from serving.engines.client import EngineClient
from serving.engines.registry import ReplicaRegistry
from serving.engines.types import ReplicaInfo
from serving.errors import APIError, UpstreamError, api_error_for_status
from serving.observability.metrics import GatewayMetrics

logger = logging.getLogger("seed_serve.dispatch")

REPLICA_HEADER = "x-seed-serve-replica"
_MAX_ATTEMPTS = 3


@dataclass
class EngineCall:
    """An engine response (status 200) and the replica slot it holds."""

    upstream: aiohttp.ClientResponse
    lease: Lease

    @property
    def replica(self) -> ReplicaInfo:
        return self.lease.replica

    @property
    def cancel_reason(self) -> str | None:
        return self.lease.ticket.cancel_reason

    def cancel(self, reason: str) -> None:
        """Abort (supersession): vLLM aborts a request whose connection closes."""
        self.lease.ticket.cancel_reason = reason
        self.upstream.close()

    def finish(self) -> None:
        """Give the slot back; keep the connection only if the answer was read whole."""
        if self.upstream.content.at_eof() and not self.upstream.closed:
            self.upstream.release()
        else:
            self.upstream.close()
        self.lease.release()


class Dispatcher:
    def __init__(
        self,
        registry: ReplicaRegistry,
        client: EngineClient,
        scheduler: AdmissionScheduler,
        config: AdmissionConfig,
        metrics: GatewayMetrics,
    ) -> None:
        self.registry = registry
        self.client = client
        self.scheduler = scheduler
        self.config = config
        self.metrics = metrics

    async def open(
        self,
        ctx: RequestContext | None,
        model: str,
        path: str,
        payload: dict[str, Any],
        *,
        cost: float = 1.0,
    ) -> EngineCall:
        """Queue for a slot, then post; an engine's own 4xx/5xx becomes our APIError."""
        lane = ctx.lane if ctx else "completion"
        payload["priority"] = self.config.lane_priority.get(lane, 0)
        body = json.dumps(payload, separators=(",", ":")).encode()
        key = (ctx.key_id or ctx.client_ip) if ctx else "internal"
        document = ctx.document if ctx else None
        excluded: set[str] = set()
        last_error: Exception | None = None
        attempts = min(_MAX_ATTEMPTS, max(1, len(self.registry.ready(model))))
        for attempt in range(attempts):
            ticket = Ticket(
                model=model,
                lane=lane,
                key=key,
                document=document if attempt == 0 else None,
                cost=cost,
                exclude=frozenset(excluded),
            )
            lease = await self.scheduler.acquire(ticket)
            replica = lease.replica
            if ctx is not None:
                ctx.replica = replica.replica_id
                ctx.queue_wait_s = (ctx.queue_wait_s or 0.0) + ticket.waited_s
            try:
                upstream = await self.client.post(replica, path, body)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                lease.release()
                logger.warning("replica %s unreachable: %s", replica.replica_id, exc)
                excluded.add(replica.replica_id)
                last_error = exc
                self.metrics.retries.inc()
                continue
            except BaseException:
                lease.release()
                raise
            if upstream.status != 200:
                try:
                    raw = await upstream.read()
                finally:
                    upstream.release()
                    lease.release()
                raise upstream_error(upstream.status, raw, replica)
            call = EngineCall(upstream, lease)
            ticket.on_cancel = call.cancel
            return call
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
