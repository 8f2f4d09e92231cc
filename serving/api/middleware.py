"""Pure-ASGI middleware (cheap on the hot path): request ids and body limits."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from serving.errors import PayloadTooLargeError

REQUEST_ID_HEADER = "x-request-id"
REPLICA_HEADER = "x-seed-serve-replica"
NO_REPLICA = "none"  # the answer did not come from a replica (e.g. a 400)
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")

Scope = dict[str, Any]


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


class GatewayMiddleware:
    """Gives every request an id (the client's, if sane), stamps every response
    with ``x-request-id`` and ``x-seed-serve-replica``, and refuses bodies over
    ``max_body_bytes`` with 413 before reading them whole."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _VALID_REQUEST_ID.match(value):
                request_id = value.decode()
            elif name == b"content-length":
                content_length = value
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid = request_id.encode()

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-request-id" not in names:
                    headers.append((b"x-request-id", rid))
                if b"x-seed-serve-replica" not in names:
                    headers.append((b"x-seed-serve-replica", NO_REPLICA.encode()))
                message["headers"] = headers
            await send(message)

        too_large = PayloadTooLargeError(
            f"Request body is larger than the limit of {self.max_body_bytes} bytes.",
            code="request_too_large",
        )
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                declared = -1
            if declared > self.max_body_bytes:
                await _send_json(send_with_headers, 413, too_large.envelope())
                return

        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send_with_headers)


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
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
