"""Every answer the gateway sends is built here: JSON (from a pydantic model or
bytes already encoded), plain text, an event stream relayed as it comes, the
error envelope, and the empty answer to a client that left.

Answers are ASGI callables (``await answer(scope, receive, send)``), sent by
the gateway app (``serving.api.gateway``); nothing here knows a route.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from serving.api.disconnect import DisconnectWatch
from serving.errors import APIError, InternalServerError

logger = logging.getLogger("seed_serve.api")

Scope = Any
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DONE = b"data: [DONE]\n\n"
JSON_TYPE = b"application/json"
EVENT_STREAM_TYPE = b"text/event-stream; charset=utf-8"
# Proxies (nginx) must pass events on at once, and nobody may cache them.
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Answer(Protocol):
    status: int

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


# Headers of an answer: a mapping, or pairs where a name repeats (Set-Cookie).
Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def _raw_headers(content_type: bytes | None, headers: Headers | None) -> list[Any]:
    raw: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        raw.append((b"content-type", content_type))
    if headers:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    return raw


class BodyAnswer:
    """An answer whose body is known whole."""

    def __init__(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: bytes | None = JSON_TYPE,
        headers: Headers | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = _raw_headers(content_type, headers)
        self.headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        body = b"" if scope.get("method") == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body})


def json_answer(
    content: BaseModel | dict[str, Any],
    *,
    status: int = 200,
    headers: Headers | None = None,
) -> BodyAnswer:
    """A pydantic model (as its JSON) or plain data as JSON."""
    if isinstance(content, BaseModel):
        body = content.model_dump_json().encode()
    else:
        body = json.dumps(content, separators=(",", ":")).encode()
    return BodyAnswer(body, status=status, headers=headers)


def error_answer(exc: APIError) -> BodyAnswer:
    """An APIError in OpenAI's envelope, with its status and headers."""
    return BodyAnswer(exc.envelope_json(), status=exc.status_code, headers=exc.headers)


def client_gone_answer() -> BodyAnswer:
    """For a client that left before its answer: nobody reads it; 499 is what
    the audit log and the metrics record."""
    return BodyAnswer(b"", status=499, content_type=None)


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def sse_error(exc: APIError) -> bytes:
    """A mid-stream error as an event; the caller follows it with ``[DONE]``."""
    return sse_event(exc.envelope_json())


async def guarded(
    events: AsyncIterator[bytes],
    error_event: Callable[[APIError], bytes] = sse_error,
    *,
    end: bytes = DONE,
) -> AsyncIterator[bytes]:
    """``events``; a failure mid-stream becomes an error event (``error_event``:
    the protocol's own shape), then ``end`` (OpenAI's ``[DONE]``)."""
    try:
        async for chunk in events:
            yield chunk
    except APIError as exc:
        yield error_event(exc) + end
    except Exception:
        logger.exception("stream failed")
        yield error_event(InternalServerError("The stream failed on the server.")) + end


class EventStream:
    """A server-sent event stream, relayed chunk by chunk as it comes.

    When the client leaves, the relay stops at once (one small watcher task,
    no task group per stream: measured with ``benchmarks/overhead capacity``),
    and the chunk iterator is closed, so its clean-up runs: closing the
    engine connection makes vLLM abort the request."""

    status = 200

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        content_type: bytes = EVENT_STREAM_TYPE,  # or NDJSON (Ollama): relayed the same way
    ) -> None:
        self.events = events
        self.headers = _raw_headers(content_type, {**STREAM_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_watched(send, DisconnectWatch(receive))

    async def send_watched(self, send: Send, watch: DisconnectWatch) -> None:
        """Sends the stream under ``watch`` (taken over: closed here)."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if chunk.endswith(DONE):
                    # The answer is whole: the SDKs close the response here, and
                    # the engine's last bytes are still read, so its connection
                    # is kept for the next request instead of being dropped.
                    watch.close()
            watch.close()  # the end of the response wakes the watcher too
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.left:
                raise
            watch.absorb()
        finally:
            watch.close()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
