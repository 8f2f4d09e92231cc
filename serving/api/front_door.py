"""The gateway's front door, in pure ASGI (cheap on the hot path), run for
every request before its route.

For every request: an id (the client's, if sane); header and body limits;
the client address (X-Forwarded-For only from trusted proxies); the
allow-lists; the API key and role the route asks for (``Route.access``); rate
limits for model tasks. When the request ends, whatever happened: the audit
line, the metrics, the token charge, the concurrency slot back. Every
response carries ``x-request-id`` and ``x-seed-serve-replica``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from serving.admission.auth import Authenticator
from serving.admission.keys import Principal
from serving.admission.quotas import Quotas
from serving.admission.sessions import ConsoleAuth
from serving.api.bodies import too_large
from serving.api.dialects import OPENAI
from serving.api.responses import DONE, Receive, Scope, Send
from serving.api.route_table import Access, Endpoint, Route, RouteTable
from serving.api.state import GatewayState
from serving.api.suggestion_events import SuggestionEvents
from serving.config import GatewayConfig
from serving.errors import (
    APIError,
    BadRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from serving.observability.audit import AuditLog
from serving.observability.logs import request_id_var
from serving.observability.metrics import GatewayMetrics
from serving.observability.usage import UsageRecorder
from serving.request_context import RequestContext

logger = logging.getLogger("seed_serve.api")

NO_REPLICA = b"none"  # the answer did not come from a replica (e.g. a 400)
_INVALID_STATUSES = frozenset({400, 404, 405, 413, 422})
_CONSOLE = (Access.SESSION, Access.SESSION_ADMIN)
_ADMIN = (Access.ADMIN, Access.SESSION_ADMIN)
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")

# What runs the route once the front door let the request in.
ServeRoute = Callable[[Scope, Receive, Send, Endpoint | None, RequestContext], Awaitable[None]]


class FrontDoor:
    def __init__(
        self,
        *,
        routes: RouteTable,
        config: GatewayConfig,
        auth: Authenticator,
        quotas: Quotas,
        audit: AuditLog,
        metrics: GatewayMetrics,
        state: GatewayState,
        events: SuggestionEvents,
        auth_enabled: bool = True,
        session_header: str = "x-seed-serve-session",
        training_data: str = "off",
        usage: UsageRecorder | None = None,
        console: ConsoleAuth | None = None,
        estimate_usage: Callable[[RequestContext], Awaitable[None]] | None = None,
    ) -> None:
        self.routes = routes
        self.training_data = training_data  # tenants' default (adapters.training_data)
        self.config = config
        self.auth = auth
        self.quotas = quotas
        self.audit = audit
        self.metrics = metrics
        self.state = state
        self.events = events
        self.usage = usage
        self.console = console
        self.estimate_usage = estimate_usage
        self.auth_enabled = auth_enabled
        self.session_header = session_header.encode()

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint | None,
        serve: ServeRoute,
    ) -> None:
        route = endpoint.route if endpoint is not None else None
        headers: dict[bytes, bytes] = {}
        header_bytes = 0
        request_id = None
        for name, value in scope["headers"]:
            headers[name] = value
            header_bytes += len(name) + len(value)
            if name == b"x-request-id" and _VALID_REQUEST_ID.match(value):
                request_id = value.decode()
        request_id = request_id or os.urandom(16).hex()  # as unique as uuid4, cheaper
        path = scope["path"]
        peer = (scope.get("client") or ("unknown", 0))[0]
        forwarded = headers.get(b"x-forwarded-for")
        ctx = RequestContext(
            request_id=request_id,
            route=path,
            method=scope.get("method", ""),
            client_ip=self.auth.client_ip(peer, forwarded.decode("latin-1") if forwarded else None),
            scheme=scope.get("scheme", "http"),
            headers=headers,
        )
        if route is not None and route.task is not None:
            ctx.task = route.task
            ctx.lane = route.lane
        document = headers.get(b"x-seed-serve-document")
        if document:
            ctx.document = document.decode("latin-1")[:512]
        session = headers.get(self.session_header)
        if session:
            ctx.session = session.decode("latin-1")[:512]
        log_context = request_id_var.set(request_id)
        tracked = route is not None and route.tracked
        response = _ResponseTracker(send, request_id, ctx, self.events.track if tracked else None)
        access = route.access if route is not None else self.routes.access_of(path)
        principal: Principal | None = None
        slots: list[str] = []
        self.metrics.inflight.inc()
        self.state.enter()
        try:
            try:
                if self.state.draining and access is not Access.OPEN:
                    raise ServiceUnavailableError(
                        "This gateway is shutting down; retry (another replica will answer).",
                        code="draining",
                        headers={"Retry-After": "1", "Connection": "close"},
                    )
                self._check_headers(len(scope["headers"]), header_bytes)
                self._check_body_size(headers.get(b"content-length"))
                if access is not Access.OPEN:
                    self.auth.check_network(ctx.client_ip)
                    if access in _CONSOLE:
                        # Console routes are declared only with the console on.
                        assert self.console is not None
                        principal, signed_in = await self.console.principal(
                            headers, ctx.method, ctx.scheme
                        )
                        ctx.console_sid = signed_in.sid
                    elif self.auth_enabled:
                        credential = self.auth.credential(headers)
                        if self.auth.takes_jwt(credential):
                            assert credential is not None
                            principal = await self.auth.authenticate_jwt(credential, ctx.client_ip)
                        else:
                            principal = self.auth.authenticate(credential, ctx.client_ip)
                    if principal is not None:
                        ctx.key_id = principal.key.id
                        ctx.user = principal.user
                        ctx.role = principal.key.role
                        ctx.tenant = principal.tenant_name
                        ctx.default_adapter = principal.tenant.adapter
                        ctx.keep_training_data = (
                            principal.tenant.training_data or self.training_data
                        ) == "collect"
                        if access in _ADMIN and principal.key.role != "admin":
                            raise PermissionDeniedError(
                                "This route needs an admin key.", code="admin_only"
                            )
                        if route is not None and route.task is not None:
                            ctx.caps = self.quotas.request_caps(principal)
                            slots = await self.quotas.admit(principal)
            except APIError as exc:
                ctx.outcome = "rejected"
                ctx.error_code = exc.code
                self.metrics.rejections.labels(reason=_rejection_reason(exc)).inc()
                dialect = route.dialect if route is not None else OPENAI
                await dialect.answer(exc)(scope, receive, response.send)
                return
            await serve(scope, receive, response.send, endpoint, ctx)
        finally:
            self.metrics.inflight.dec()
            self.state.leave()
            if not response.complete and ctx.outcome in ("ok", "error"):
                ctx.outcome = "cancelled"  # the client left mid-answer
            if ctx.outcome == "cancelled":  # mid-answer, or before it began
                self.metrics.cancellations.labels(reason="disconnect").inc()
            ctx.status = response.status
            await self._finish(ctx, route, principal, slots)
            request_id_var.reset(log_context)

    # ------------------------------------------------------------------ limits

    def _check_headers(self, count: int, size: int) -> None:
        if count > self.config.max_header_count or size > self.config.max_header_bytes:
            raise BadRequestError(
                f"Request headers too large: {count} headers, {size} bytes (limits: "
                f"{self.config.max_header_count} headers, {self.config.max_header_bytes} bytes).",
                code="request_headers_too_large",
            )

    def _check_body_size(self, content_length: bytes | None) -> None:
        if content_length is None:
            return
        try:
            declared = int(content_length)
        except ValueError:
            raise BadRequestError("Invalid Content-Length header.") from None
        if declared > self.config.max_request_bytes:
            raise too_large(self.config.max_request_bytes)

    # ------------------------------------------------------------------ the end

    async def _finish(
        self,
        ctx: RequestContext,
        route: Route | None,
        principal: Principal | None,
        slots: list[str],
    ) -> None:
        try:
            if self.estimate_usage is not None and _cut_short(ctx):
                await self.estimate_usage(ctx)
        except Exception:
            logger.exception("usage estimate failed for %s", ctx.request_id)
        try:
            if slots:
                await self.quotas.release(slots)
            tokens = ctx.prompt_tokens + ctx.completion_tokens
            if principal is not None and tokens:
                await self.quotas.charge(principal, tokens)
        except Exception:
            logger.exception("quota accounting failed for %s", ctx.request_id)
        if route is not None and route.task is not None:
            self._observe(ctx)
            if self.usage is not None and principal is not None:
                self.usage.record(
                    tenant=principal.tenant_name,
                    user=principal.user,
                    task=ctx.task,
                    status=ctx.status,
                    prompt_tokens=ctx.prompt_tokens,
                    completion_tokens=ctx.completion_tokens,
                )
        self._log(ctx, quiet=route is not None and route.quiet)
        if self.audit.enabled:
            model_task = route is not None and route.task is not None
            self.audit.write(self._audit_record(ctx, model_task=model_task))
        if self.audit.write_errors:
            self.metrics.audit_write_errors.inc(self.audit.write_errors)
            self.audit.write_errors = 0

    def _observe(self, ctx: RequestContext) -> None:
        """The metrics of a model task's request."""
        if ctx.outcome == "error" and ctx.status in _INVALID_STATUSES:
            # Bad input answered by the route (the middleware's own refusals are
            # "rejected" and already counted).
            self.metrics.rejections.labels(reason="invalid").inc()
        model = ctx.model or "unknown"
        ended = time.monotonic()
        m = self.metrics
        adapter = ctx.adapter or ""
        m.labelled(m.requests, ctx.task, model, adapter, str(ctx.status)).inc()
        m.labelled(m.request_duration, ctx.task, model, adapter).observe(ended - ctx.started)
        if ctx.first_token is not None and ctx.status == 200 and ctx.outcome == "ok":
            m.labelled(m.ttft, ctx.task, model, adapter).observe(ctx.first_token - ctx.started)
            if ctx.completion_tokens > 1:
                m.labelled(m.tpot, ctx.task, model, adapter).observe(
                    (ended - ctx.first_token) / (ctx.completion_tokens - 1)
                )
        tenant = ctx.tenant or "anonymous"
        if ctx.prompt_tokens:
            m.labelled(m.prompt_tokens, tenant, ctx.task).inc(ctx.prompt_tokens)
        if ctx.completion_tokens:
            m.labelled(m.completion_tokens, tenant, ctx.task).inc(ctx.completion_tokens)

    @staticmethod
    def _log(ctx: RequestContext, *, quiet: bool) -> None:
        """The access-log line: what and how, never the prompt (probes and
        scrapes at debug level)."""
        level = logging.DEBUG if quiet else logging.INFO
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "%s %s %d %s",
            ctx.method,
            ctx.route,
            ctx.status,
            ctx.outcome,
            extra={
                "route": ctx.route,
                "status": ctx.status,
                "outcome": ctx.outcome,
                "task": ctx.task,
                "model": ctx.model,
                "tenant": ctx.tenant,
                "key_id": ctx.key_id,
                "replica": ctx.replica,
                "error_code": ctx.error_code,
                "latency_ms": round((time.monotonic() - ctx.started) * 1000, 2),
                "prompt_tokens": ctx.prompt_tokens,
                "completion_tokens": ctx.completion_tokens,
            },
        )

    def _audit_record(self, ctx: RequestContext, *, model_task: bool) -> dict[str, Any]:
        ended = time.monotonic()
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{int(time.time() * 1000) % 1000:03d}Z",
            "request_id": ctx.request_id,
            "key_id": ctx.key_id,
            "tenant": ctx.tenant,
            "user": ctx.user,
            "client": ctx.client_ip,
            "method": ctx.method,
            "route": ctx.route,
            "task": ctx.task,
            "model": ctx.model,
            "adapter": ctx.adapter,
            "lane": ctx.lane if model_task else None,  # only model tasks are queued
            "replica": ctx.replica,
            "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": ctx.completion_tokens,
            "usage_estimated": ctx.usage_estimated,
            "status": ctx.status,
            "outcome": ctx.outcome,
            "error_code": ctx.error_code,
            "latency_ms": round((ended - ctx.started) * 1000, 2),
            "ttft_ms": round((ctx.first_token - ctx.started) * 1000, 2)
            if ctx.first_token
            else None,
            "queue_wait_ms": round(ctx.queue_wait_s * 1000, 2)
            if ctx.queue_wait_s is not None
            else None,
            "finish_reason": ctx.finish_reason,
        }
        record.update(ctx.audit_extra)
        prompt = self.audit.text_field(ctx.prompt_text)
        if prompt is not None:
            record["prompt"] = prompt
            record["completion"] = self.audit.text_field(ctx.completion_text)
        return record


class _ResponseTracker:
    """Stamps headers on the response and notes its status and whether the
    client got the whole answer."""

    def __init__(
        self,
        send: Send,
        request_id: str,
        ctx: RequestContext,
        before_end: Callable[[RequestContext], Awaitable[None]] | None,
    ) -> None:
        self._send = send
        self._rid = request_id.encode()
        self.ctx = ctx
        self._before_end = before_end
        self.status = 0
        self.complete = False  # the client has the whole answer (an event stream's [DONE])
        self._ended = before_end is None  # before_end ran (or there is none)

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            headers = list(message.get("headers", []))
            names = {name.lower() for name, _ in headers}
            if b"x-request-id" not in names:
                headers.append((b"x-request-id", self._rid))
            if b"x-seed-serve-replica" not in names:
                replica = self.ctx.replica.encode() if self.ctx.replica else NO_REPLICA
                headers.append((b"x-seed-serve-replica", replica))
            message["headers"] = headers
            if self.status >= 400 and self.ctx.outcome == "ok":
                self.ctx.outcome = "error"
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if self.ctx.first_token is None and body:
                self.ctx.first_token = time.monotonic()
            # A client of an event stream is done at ``data: [DONE]`` (the SDKs
            # return there and close the response, often before its last
            # byte): the answer is whole, and what the client may do next (a
            # suggestion event) must already find it tracked.
            done = not message.get("more_body", False) or body.endswith(DONE)
            if not self._ended and done:
                self._ended = True
                self.ctx.status = self.status
                assert self._before_end is not None
                await self._before_end(self.ctx)
            self.complete = self.complete or done
        await self._send(message)


def _cut_short(ctx: RequestContext) -> bool:
    """Whether the answer ended before its engine could report its usage."""
    return ctx.outcome in ("cancelled", "superseded") or (
        ctx.outcome == "error" and ctx.status == 200  # failed mid-stream
    )


def _rejection_reason(exc: APIError) -> str:
    if exc.code == "draining":
        return "draining"
    return {401: "auth", 403: "forbidden", 429: "quota", 503: "backpressure"}.get(
        exc.status_code, "invalid"
    )
