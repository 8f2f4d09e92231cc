"""ASGI middleware loaded *into each vLLM engine process* (``--middleware``).

vLLM's own ``--api-key`` guards only ``/v1``-style paths: ``/invocations``,
``/tokenize`` and friends stay open. This guard requires the per-replica
secret (known only to the replica actor and the gateways, handed over through
Ray) on every path, so an engine is useless to anybody but the gateway even
if its port is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
from typing import Any

from serving.cluster.kv_events import KvEventRelay, since_of
from serving.engine_link.replica_info import KV_EVENTS_PATH
from serving.errors import AuthenticationError, NotFoundError

TOKEN_ENV = "SEED_SERVE_ENGINE_TOKEN"

Scope = dict[str, Any]


class EngineGuard:
    def __init__(self, app: Any) -> None:
        self.app = app
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            # Fail closed: an engine without a secret must not serve at all.
            raise RuntimeError(f"{TOKEN_ENV} is not set; refusing to start an unguarded engine")
        self._digest = hashlib.sha256(token.encode()).digest()
        self._refusal = AuthenticationError(
            "engine access is restricted to the gateway"
        ).envelope_json()
        # The engine's KV-cache events, when it publishes them (kv_aware routing).
        self._kv_events = KvEventRelay.from_environment()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                return hmac.compare_digest(hashlib.sha256(credential).digest(), self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_json(send, 401, self._refusal)
            return
        if scope["type"] == "http" and scope.get("path") == KV_EVENTS_PATH:
            await self._relay_kv_events(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _relay_kv_events(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._kv_events is None:
            error = NotFoundError("this engine publishes no KV-cache events")
            await _send_json(send, 404, error.envelope_json())
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        gone = asyncio.ensure_future(_disconnected(receive))
        events = self._kv_events.stream(since_of(scope.get("query_string", b"")))
        try:
            while not gone.done():
                chunk = asyncio.ensure_future(anext(events))
                await asyncio.wait({chunk, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():
                    chunk.cancel()
                    break
                await send(
                    {"type": "http.response.body", "body": chunk.result(), "more_body": True}
                )
        finally:
            gone.cancel()
            await events.aclose()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
