"""Suggestion events: bounded language labels, and the tracking hook that runs
before a stream's ``[DONE]`` reaches the client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.api.front_door import _ResponseTracker
from serving.api.suggestion_events import language_label
from serving.request_context import RequestContext


@pytest.mark.parametrize(
    ("given", "label"),
    [("py", "python"), ("TypeScript", "typescript"), (None, "unknown"), ("markdown", "other")],
)
def test_language_labels_are_bounded(given: str | None, label: str) -> None:
    assert language_label(given) == label


def test_a_stream_is_tracked_before_its_done_event_reaches_the_client() -> None:
    """The SDKs return at ``data: [DONE]``; an IDE's suggestion event right
    after it must find the completion already remembered."""
    order: list[str] = []

    async def client(message: dict[str, Any]) -> None:
        order.append(message["type"] + ":" + repr(message.get("body", b"")))

    async def track(ctx: RequestContext) -> None:
        order.append(f"tracked {ctx.status}")

    async def scenario() -> None:
        ctx = RequestContext(request_id="r", route="/v1/completions", method="POST", client_ip="x")
        tracker = _ResponseTracker(client, "r", ctx, track)
        await tracker.send({"type": "http.response.start", "status": 200, "headers": []})
        await tracker.send(
            {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
        )
        assert not tracker.complete
        await tracker.send(
            {
                "type": "http.response.body",
                "body": b"data: {}\n\ndata: [DONE]\n\n",
                "more_body": True,
            }
        )
        await tracker.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert tracker.complete

    asyncio.run(scenario())
    assert order == [
        "http.response.start:b''",
        "http.response.body:b'data: {}\\n\\n'",
        "tracked 200",
        "http.response.body:b'data: {}\\n\\ndata: [DONE]\\n\\n'",
        "http.response.body:b''",
    ]
