"""Server-sent events as the OpenAI SDKs read them."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from serving.errors import APIError, InternalServerError

logger = logging.getLogger("seed_serve.api")

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def guarded_stream(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay ``events``; a failure mid-stream becomes an error event, then ``[DONE]``."""
    try:
        async for chunk in events:
            yield chunk
    except APIError as exc:
        yield sse_event(exc.envelope())
        yield DONE
    except Exception:
        logger.exception("stream failed")
        yield sse_event(InternalServerError("The stream failed on the server.").envelope())
        yield DONE
