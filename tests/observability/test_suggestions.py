"""Suggestion tracking: the store's rules (each event once, one outcome), forgetting."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.config import TelemetryConfig
from serving.observability.suggestions import (
    MemorySuggestionStore,
    OutcomeConflict,
    TrackedSuggestion,
)

COMPLETION = TrackedSuggestion(
    key_id="k1", tenant="alpha", task="code_completion", model="m", language="python", chars=10
)


def test_memory_store_counts_each_event_once_and_one_outcome() -> None:
    async def scenario() -> None:
        store = MemorySuggestionStore(TelemetryConfig())
        await store.remember("c1", COMPLETION)
        assert await store.get("c1") == COMPLETION
        assert await store.mark("c1", "shown") == "recorded"
        assert await store.mark("c1", "shown") == "duplicate"
        assert await store.mark("c1", "dismissed") == "recorded"
        assert await store.mark("c1", "dismissed") == "duplicate"
        with pytest.raises(OutcomeConflict) as conflict:
            await store.mark("c1", "accepted")
        assert conflict.value.earlier == "dismissed"
        assert await store.get("unknown") is None

    asyncio.run(scenario())


def test_memory_store_forgets_the_oldest_and_the_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        store = MemorySuggestionStore(TelemetryConfig(max_tracked=100, ttl_s=60))
        for i in range(101):
            await store.remember(f"c{i}", COMPLETION)
        assert await store.get("c0") is None  # evicted: one over the limit
        assert await store.get("c1") == COMPLETION
        now = time.monotonic()
        monkeypatch.setattr("serving.observability.suggestions.time.monotonic", lambda: now + 61)
        assert await store.get("c100") is None  # expired

    asyncio.run(scenario())


def test_telemetry_redis_backend_needs_a_url() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        TelemetryConfig(backend="redis")
