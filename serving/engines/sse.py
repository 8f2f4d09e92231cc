"""Reading an engine's server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from serving.errors import UpstreamError


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an OpenAI-style SSE stream, until ``[DONE]``."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            event = _event(raw)
            if event is _DONE:
                return
            if event is not None:
                yield event  # type: ignore[misc]
    event = _event(pending)
    if event is not None and event is not _DONE:
        yield event  # type: ignore[misc]


_DONE = object()


def _event(raw: bytes) -> object:
    line = raw.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise UpstreamError(f"Engine error mid-stream: {message}", code="engine_error")
    return event
