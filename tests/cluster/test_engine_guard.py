"""The engine guard (ASGI middleware inside each vLLM server), in process:
its refusal and the KV-event path of an engine that publishes none."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serving.cluster.engine_guard import TOKEN_ENV, EngineGuard
from serving.cluster.kv_events import EVENTS_ENV
from serving.engine_link.replica_info import KV_EVENTS_PATH


async def _app(scope: Any, receive: Any, send: Any) -> None:  # what vLLM would answer
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"engine"})


def _call(guard: EngineGuard, path: str, token: str | None) -> tuple[int, bytes]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "path": path, "headers": headers, "query_string": b""}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_guard_refuses_without_the_secret_and_says_when_no_events_are_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "secret")
    monkeypatch.delenv(EVENTS_ENV, raising=False)
    guard = EngineGuard(_app)
    status, body = _call(guard, KV_EVENTS_PATH, None)
    assert status == 401
    assert json.loads(body)["error"]["message"] == "engine access is restricted to the gateway"
    status, body = _call(guard, KV_EVENTS_PATH, "secret")
    assert status == 404
    assert "publishes no KV-cache events" in json.loads(body)["error"]["message"]
    assert _call(guard, "/v1/models", "secret") == (200, b"engine")
