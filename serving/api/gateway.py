"""The gateway as one ASGI app: every request takes one way in.

It finds the request's route in the route table, hands it to the front door
(ids, limits, keys, quotas, the audit line and metrics when it ends), then
serves it: reads the body into the route's request model, calls the route's
serving call (cancelled if the client leaves), and sends its answer. Errors
raised anywhere on that way are answered here, in the route's protocol
(OpenAI's envelope unless the route speaks another: ``serving.api.dialects``).

Why not FastAPI: its per-request machinery (route matching, dependency
solving, content-type parsing, three layers of exception wrappers) was a
fifth of the gateway's CPU per request (profiled under
``benchmarks/overhead capacity``, README there), and a second way in next to
a faster one let features added on one way be missing from the other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from serving.api.bodies import parse_query, parse_request, read_body
from serving.api.dialects import OPENAI
from serving.api.disconnect import ClientDisconnected, DisconnectWatch
from serving.api.front_door import FrontDoor
from serving.api.responses import (
    Answer,
    EventStream,
    Receive,
    Scope,
    Send,
    client_gone_answer,
    json_answer,
)
from serving.api.route_table import Endpoint, RouteTable
from serving.errors import (
    APIError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
)
from serving.request_context import RequestContext

logger = logging.getLogger("seed_serve.api")

Hook = Callable[[], Awaitable[None]]


class GatewayApp:
    """ASGI app: the route table behind the front door (none: the internal
    metrics port), started and stopped by the server's lifespan events."""

    def __init__(
        self,
        routes: RouteTable,
        *,
        front_door: FrontDoor | None,
        max_request_bytes: int,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
    ) -> None:
        self.routes = routes
        self.front_door = front_door
        self.max_request_bytes = max_request_bytes
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.state: dict[str, Any] = {}  # what the app factory wants reachable (tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            endpoint = self.routes.match(scope["method"], scope["path"])
            if self.front_door is not None:
                await self.front_door(scope, receive, send, endpoint, self.serve)
            else:
                client = (scope.get("client") or ("unknown", 0))[0]
                ctx = RequestContext("", scope["path"], scope["method"], client)
                await self.serve(scope, receive, send, endpoint, ctx)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint | None,
        ctx: RequestContext,
    ) -> None:
        """Answer one request the front door let in."""
        dialect = endpoint.route.dialect if endpoint is not None else OPENAI
        watch: DisconnectWatch | None = None
        try:
            # The body first: the disconnect watch reads the same channel.
            work = await self._work(scope, receive, endpoint, ctx)
            watch = DisconnectWatch(receive)
            reply = await watch.run(work)
            answer: Answer = json_answer(reply) if isinstance(reply, BaseModel) else reply
        except APIError as exc:
            ctx.error_code = exc.code
            if exc.code == "superseded":
                ctx.outcome = "superseded"
            answer = dialect.answer(exc)
        except ClientDisconnected:
            ctx.outcome = "cancelled"
            answer = client_gone_answer()
        except Exception:
            logger.exception("unhandled error on %s", scope["path"])
            answer = dialect.answer(
                InternalServerError("The server had an error while processing your request.")
            )
        if watch is not None:
            if isinstance(answer, EventStream) and not watch.left:
                await answer.send_watched(send, watch)  # one watcher for the whole request
                return
            watch.close()
        await answer(scope, receive, send)

    async def _work(
        self, scope: Scope, receive: Receive, endpoint: Endpoint | None, ctx: RequestContext
    ) -> Awaitable[Any]:
        """The route's serving call, its request read (not yet awaited)."""
        if endpoint is None:
            methods = self.routes.methods(scope["path"])
            if methods:
                raise MethodNotAllowedError(
                    "Method Not Allowed", headers={"Allow": ", ".join(methods)}
                )
            raise NotFoundError(self.routes.unknown_route_message())
        route = endpoint.route
        if route.query is not None:
            return endpoint.call(parse_query(route.query, scope.get("query_string", b"")), ctx)
        if route.request is None:
            return endpoint.call(ctx)
        body = await read_body(receive, self.max_request_bytes)
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
                break
        return endpoint.call(parse_request(route.request, body, content_type), ctx)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_startup is not None:
                        await self.on_startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.on_shutdown is not None:
                        await self.on_shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
