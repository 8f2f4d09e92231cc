"""Sending one request to one replica: wait for a slot in the admission queue,
post it, and when the replica fails before the first token, try another.

Before the first token nothing has reached the client, so a retry is safe
(generation has no side effects): a connection that fails, a first token that
does not come within ``first_token_s``, or a plain answer whose replica turns
unhealthy while we wait. After the first token a failure is the caller's to
report (an SSE error event, then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from serving.admission.scheduler import AdmissionScheduler, Lease, Superseded, Ticket
from serving.config import IGNORED_BY_SPECULATION, AdmissionConfig, TimeoutsConfig
from serving.engine_link.replica_info import ReplicaInfo
from serving.errors import APIError, BadRequestError, UpstreamError, api_error_for_status
from serving.observability.metrics import GatewayMetrics
from serving.request_context import RequestContext
from serving.tokens import count_prompt
from serving.upstream.adapters import AdapterPlacement
from serving.upstream.client import EngineAnswer, EngineClient, EngineHTTPError
from serving.upstream.registry import ReplicaRegistry
from serving.upstream.routing import RouteRequest

logger = logging.getLogger("seed_serve.dispatch")

_HEALTH_WATCH_S = 0.5
_TOKENIZE_S = 5.0  # a cut chat answer's prompt count from its engine, at most this long


class _ReplicaFailed(Exception):
    """The replica failed before answering anything (retry elsewhere)."""


class _NoAdapterSlot(Exception):
    """The replica could not take the adapter now (full of busy adapters)."""


@dataclass
class EngineCall:
    """An engine answer (status 200) and the replica slot it holds.

    Streams come with their first chunk already read; plain answers whole.
    """

    upstream: EngineAnswer
    lease: Lease
    first: bytes = b""
    body: bytes | None = None

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

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's bytes as they arrive (the first one already read)."""
        if self.first:
            yield self.first
        while chunk := await self.upstream.readany():
            yield chunk

    def finish(self) -> None:
        """Give the slot back; keep the connection only if the answer was read whole."""
        self.upstream.release()
        self.lease.release()


class Dispatcher:
    def __init__(
        self,
        registry: ReplicaRegistry,
        client: EngineClient,
        scheduler: AdmissionScheduler,
        config: AdmissionConfig,
        metrics: GatewayMetrics,
        *,
        timeouts: TimeoutsConfig,
        affinity_chars: int = 1024,
        placement: AdapterPlacement | None = None,
        tokenize_prompts: bool = False,
    ) -> None:
        self.registry = registry
        self.client = client
        self.scheduler = scheduler
        self.config = config
        self.metrics = metrics
        self.timeouts = timeouts
        self.affinity_chars = affinity_chars
        self.placement = placement or AdapterPlacement()
        self.tokenize_prompts = tokenize_prompts  # the router routes on prompt tokens

    def route_for(
        self, model: str, ctx: RequestContext | None, payload: dict[str, Any] | None = None
    ) -> RouteRequest:
        exact = _sampling_speculation_ignores(payload or {})
        if ctx is None:
            return RouteRequest(model, needs_exact_sampling=exact)
        tokens = None
        if self.tokenize_prompts and payload and isinstance(payload.get("prompt"), str):
            # Once per request, with the model's own tokenizer (kv_aware routing).
            tokens = self.registry.prompt_tokens(model, payload["prompt"])
        affinity = ctx.document
        if affinity is None and ctx.affinity_text:
            affinity = ctx.affinity_text[: self.affinity_chars]
        elif affinity is not None and ctx.key_id:
            affinity = f"{ctx.key_id}:{affinity}"  # one developer's file
        return RouteRequest(
            model,
            affinity=affinity,
            session=ctx.session or ctx.key_id,
            adapter=ctx.adapter,
            lane=ctx.lane,
            needs_exact_sampling=exact,
            prompt_tokens=tokens,
        )

    def _check_sampling(self, route: RouteRequest) -> None:
        """A request whose sampling speculative decoding would ignore, for a
        model whose every replica (of its lane) decodes speculatively: a clear
        400, not silently different sampling."""
        field = route.needs_exact_sampling
        if field is None:
            return
        lane = replace(route, needs_exact_sampling=None)
        serving = [r for r in self.registry.ready(route.model) if lane.admits(r)]
        if serving and not any(route.admits(r) for r in serving):
            methods = ", ".join(sorted({f"{r.group} ({r.speculative})" for r in serving}))
            raise BadRequestError(
                f"`{field}` is ignored by speculative decoding, which every replica of model "
                f"`{route.model}` uses for this request (replica groups {methods}); leave "
                f"`{field}` out, or ask for a replica group without speculative decoding.",
                param=field,
                code="unsupported_with_speculative_decoding",
            )

    async def open(
        self,
        ctx: RequestContext | None,
        model: str,
        path: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        cost: float = 1.0,
    ) -> EngineCall:
        """Queue for a slot, post, and wait for the first token (streams) or the
        whole answer; an engine's own 4xx/5xx becomes our APIError."""
        lane = ctx.lane if ctx else "completion"
        if ctx is not None and ctx.adapter is not None:
            payload["model"] = ctx.adapter  # the engine knows a loaded adapter by its name
        payload["priority"] = self.config.lane_priority.get(lane, 0)
        body = json.dumps(payload, separators=(",", ":")).encode()
        key = (ctx.key_id or ctx.client_ip) if ctx else "internal"
        route = self.route_for(model, ctx, payload)
        self._check_sampling(route)
        excluded: set[str] = set()
        last_error: Exception | None = None
        for attempt in range(self.timeouts.retries + 1):
            if attempt and not self.registry.admitting(route, excluded):
                break
            ticket = Ticket(
                model=model,
                lane=lane,
                key=key,
                document=(ctx.document if ctx else None) if attempt == 0 else None,
                cost=cost,
                route=route,
                exclude=frozenset(excluded),
            )
            lease = await self.scheduler.acquire(ticket)
            replica = lease.replica
            if ctx is not None:
                ctx.replica = replica.replica_id
                ctx.queue_wait_s = (ctx.queue_wait_s or 0.0) + ticket.waited_s
            try:
                if route.adapter is not None and ctx is not None and ctx.adapter_path:
                    await self._ensure_adapter(replica, route.adapter, ctx.adapter_path)
                if ctx is not None and lease.ticket.cancel_reason is None:
                    ctx.sent_prompt = payload.get("prompt", payload.get("messages"))
                call = await self._attempt(lease, path, body, stream)
            except _NoAdapterSlot as exc:
                lease.release()
                excluded.add(replica.replica_id)
                last_error = exc
                continue
            except _ReplicaFailed as exc:
                lease.release()
                if lease.ticket.cancel_reason == "superseded":
                    raise Superseded() from None  # not a replica failure
                logger.warning("replica %s failed before answering: %s", replica.replica_id, exc)
                self.registry.suspect(replica.replica_id)
                self.metrics.failovers.labels(replica=replica.replica_id).inc()
                if attempt < self.timeouts.retries:
                    self.metrics.retries.inc()
                excluded.add(replica.replica_id)
                last_error = exc
                continue
            except BaseException:
                lease.release()
                raise
            return call
        raise UpstreamError(
            f"No replica of model `{model}` could answer: {last_error}",
            code="replica_failed",
            headers={"Retry-After": "2"},
        )

    async def estimate_usage(self, ctx: RequestContext) -> None:
        """The usage of an answer cut short (the client left, superseded, failed
        mid-stream), which its engine never reported, as the gateway can count
        it: the prompt the engine read, with the model's tokenizer (chat
        messages: as the engine's /tokenize counts them, its chat template
        included), and one token per event relayed (speculative decoding may
        send more). Quotas, usage and metrics count these; the audit line says
        they are estimated."""
        prompt = ctx.sent_prompt
        if prompt is None or ctx.prompt_tokens or ctx.completion_tokens:
            return
        prompt_tokens = None
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            prompt_tokens = await self._chat_prompt_tokens(ctx.replica, ctx.model, prompt)
        if prompt_tokens is None:
            counter = self.registry.token_counter(ctx.model or "")
            prompt_tokens = await asyncio.to_thread(count_prompt, counter, prompt)
        ctx.usage(prompt_tokens, ctx.relayed_events)
        ctx.usage_estimated = True

    async def _chat_prompt_tokens(
        self, replica_id: str | None, model: str | None, messages: list[Any]
    ) -> int | None:
        """Chat messages' tokens as the engine that read them counts them (its
        /tokenize applies the chat template); None if it cannot say now."""
        replica = next((r for r in self.registry.all() if r.replica_id == replica_id), None)
        if replica is None:
            return None
        body = json.dumps({"model": model, "messages": messages}).encode()
        try:
            async with asyncio.timeout(_TOKENIZE_S):
                answer = await self.client.post(replica, "/tokenize", body, stream=False)
                try:
                    raw = await answer.read()
                finally:
                    answer.release()
            if answer.status != 200:
                return None
            return int(json.loads(raw)["count"])
        except (TimeoutError, EngineHTTPError, ValueError, KeyError, TypeError):
            return None

    async def _ensure_adapter(self, replica: ReplicaInfo, adapter: str, path: str) -> None:
        """The adapter resident on ``replica`` before its request is sent:
        loaded there (evicting the least recently used idle one) if needed."""
        rid = replica.replica_id
        if adapter in self.placement.resident(rid):
            self.placement.touch(rid, adapter)
            return
        result = await self.registry.source.ensure_adapter(rid, adapter, path)
        status = result.get("status")
        if status in ("resident", "loaded"):
            self.placement.loaded(rid, adapter, result.get("evicted", []))
            if status == "loaded":
                self.metrics.adapter_loads.labels(adapter=adapter, result="loaded").inc()
                self.metrics.adapter_load_seconds.observe(float(result.get("load_s", 0.0)))
            for name in result.get("evicted", []):
                self.metrics.adapter_evictions.labels(adapter=name).inc()
            return
        if status == "full":
            raise _NoAdapterSlot(result.get("message") or "no adapter slot free")
        self.metrics.adapter_loads.labels(adapter=adapter, result="failed").inc()
        raise UpstreamError(
            f"The adapter `{adapter}` could not be loaded on replica {rid}: "
            f"{result.get('message') or 'unknown error'}",
            code="adapter_load_failed",
        )

    async def _attempt(self, lease: Lease, path: str, body: bytes, stream: bool) -> EngineCall:
        replica = lease.replica
        if lease.ticket.cancel_reason == "superseded":  # between its slot and now
            raise _ReplicaFailed("superseded before it was sent")
        raw: bytes | None = None
        try:
            if stream:
                upstream = await self.client.post(replica, path, body, stream=True)
            else:
                upstream, raw = await self._exchange_while_healthy(lease, path, body)
        except (TimeoutError, EngineHTTPError) as exc:
            raise _ReplicaFailed(exc or type(exc).__name__) from exc
        if upstream.status != 200:
            if raw is None:
                try:
                    raw = await upstream.read()
                finally:
                    upstream.release()
            if upstream.status >= 500 and upstream.status != 503:
                raise _ReplicaFailed(f"HTTP {upstream.status}")
            raise upstream_error(upstream.status, raw, replica)
        call = EngineCall(upstream, lease, body=raw)
        lease.ticket.on_cancel = call.cancel
        if lease.ticket.cancel_reason == "superseded":
            # Superseded while its request was on the way (no on_cancel yet):
            # abort now, or it would run to its end unseen.
            upstream.close()
            raise _ReplicaFailed("superseded while it was sent")
        if not stream:
            return call
        try:
            async with asyncio.timeout(self.timeouts.first_token_s):  # no extra task
                call.first = await upstream.readany()
            if not call.first:
                raise _ReplicaFailed("the stream ended before its first token")
        except (TimeoutError, EngineHTTPError) as exc:
            upstream.close()
            raise _ReplicaFailed(exc or type(exc).__name__) from exc
        except BaseException:
            upstream.close()
            raise
        return call

    async def _exchange_while_healthy(
        self, lease: Lease, path: str, body: bytes
    ) -> tuple[EngineAnswer, bytes]:
        """A plain answer, status and body: vLLM sends both at the end, so the
        whole wait is watched. A replica that turns unhealthy fails it (to be
        retried) instead of a hang, and a supersession aborts it at once
        instead of letting the engine generate an answer nobody will read."""
        replica = lease.replica
        exchange = asyncio.ensure_future(self._exchange(replica, path, body))

        def abort(_reason: str) -> None:
            exchange.cancel()  # the exchange hangs up: vLLM aborts the request

        lease.ticket.on_cancel = abort
        try:
            while True:
                done, _ = await asyncio.wait({exchange}, timeout=_HEALTH_WATCH_S)
                if done:
                    break
                if not self.registry.is_ready(replica.replica_id):
                    raise _ReplicaFailed(f"replica {replica.replica_id} became unhealthy")
        finally:
            lease.ticket.on_cancel = None
            if not exchange.done():
                exchange.cancel()  # client gone or replica unhealthy: the exchange hangs up
        if exchange.cancelled():
            raise _ReplicaFailed("superseded while it was answered")
        return exchange.result()

    async def _exchange(
        self, replica: ReplicaInfo, path: str, body: bytes
    ) -> tuple[EngineAnswer, bytes]:
        upstream = await self.client.post(replica, path, body, stream=False)
        try:
            raw = await upstream.read()
        except BaseException:
            upstream.close()  # vLLM aborts a request whose connection closes
            raise
        upstream.release()  # read to its end: the connection is kept
        return upstream, raw


def upstream_error(status: int, raw: bytes, replica: ReplicaInfo) -> APIError:
    """An engine's error answer as ours (its message and param kept)."""
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
        return UpstreamError(f"Engine error: {message}", code="engine_error")
    cls = api_error_for_status(status)
    return cls(message, param=param)


def _sampling_speculation_ignores(payload: dict[str, Any]) -> str | None:
    """The first field of ``payload`` that speculative decoding would ignore
    (with a value that changes sampling: min_p > 0, a non-empty logit_bias)."""
    return next((field for field in IGNORED_BY_SPECULATION if payload.get(field)), None)
