"""Suggestion feedback: was a completion shown, accepted or dismissed?

Every successful completion (OpenAI routes and /v1/code/*) is remembered by
its response id for ``telemetry.ttl_s``, with the key that asked for it. An
IDE then reports ``POST /v1/code/events``; only the same key may report on a
completion (any other key gets the same 404 as an unknown id, so ids do not
leak across keys). Each completion counts once per event: ``shown`` at most
once, and one final outcome, ``accepted`` or ``dismissed``. A repeated event is
acknowledged but not counted again (IDEs retry); a second, different outcome is
a 409. Counted events feed ``seed_serve_suggestions_total`` and the audit log.

The memory store serves one gateway; with several gateway replicas behind one
load balancer, the Redis store lets any of them take the event.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from serving.config import TelemetryConfig

SuggestionEvent = Literal["shown", "accepted", "dismissed"]
FINAL_EVENTS = ("accepted", "dismissed")
Recorded = Literal["recorded", "duplicate"]


@dataclass(frozen=True)
class TrackedSuggestion:
    key_id: str | None
    tenant: str
    task: str
    model: str
    language: str
    chars: int | None  # length of the returned text, when the gateway saw it whole
    adapter: str | None = None
    # Only for tenants collecting training data: what the model saw (prefix,
    # suffix, context, path) and the suggestion shown ("shown").
    example: dict[str, Any] | None = None


class OutcomeConflict(Exception):
    """The completion already has the other final outcome."""

    def __init__(self, earlier: str) -> None:
        super().__init__(earlier)
        self.earlier = earlier


class SuggestionStore(Protocol):
    async def remember(self, completion_id: str, completion: TrackedSuggestion) -> None: ...

    async def get(self, completion_id: str) -> TrackedSuggestion | None: ...

    async def mark(self, completion_id: str, event: SuggestionEvent) -> Recorded:
        """Note ``event`` once; raises OutcomeConflict for a second, different outcome."""
        ...

    async def close(self) -> None: ...


class MemorySuggestionStore:
    def __init__(self, config: TelemetryConfig) -> None:
        self.ttl_s = config.ttl_s
        self.max_tracked = config.max_tracked
        self._items: OrderedDict[str, tuple[float, TrackedSuggestion, set[str]]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._items:
            oldest, (created, _, _) = next(iter(self._items.items()))
            if now - created < self.ttl_s and len(self._items) <= self.max_tracked:
                break
            del self._items[oldest]

    async def remember(self, completion_id: str, completion: TrackedSuggestion) -> None:
        now = time.monotonic()
        self._items[completion_id] = (now, completion, set())
        self._items.move_to_end(completion_id)
        self._expire(now)

    async def get(self, completion_id: str) -> TrackedSuggestion | None:
        self._expire(time.monotonic())
        item = self._items.get(completion_id)
        return item[1] if item else None

    async def mark(self, completion_id: str, event: SuggestionEvent) -> Recorded:
        item = self._items.get(completion_id)
        if item is None:
            raise KeyError(completion_id)
        seen = item[2]
        if event in seen:
            return "duplicate"
        if event in FINAL_EVENTS:
            for earlier in FINAL_EVENTS:
                if earlier in seen:
                    raise OutcomeConflict(earlier)
        seen.add(event)
        return "recorded"

    async def close(self) -> None:
        self._items.clear()


class RedisSuggestionStore:
    """One hash per completion: the record, ``shown`` and the final ``outcome``,
    set with HSETNX so that two gateways taking the same event count it once."""

    PREFIX = "seed-serve:completion:"

    def __init__(self, config: TelemetryConfig) -> None:
        import redis.asyncio as redis

        assert config.redis_url is not None
        self.ttl_s = int(config.ttl_s)
        self._redis = redis.Redis.from_url(
            config.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )

    async def remember(self, completion_id: str, completion: TrackedSuggestion) -> None:
        key = self.PREFIX + completion_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "record", json.dumps(asdict(completion)))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def get(self, completion_id: str) -> TrackedSuggestion | None:
        raw = await self._redis.hget(self.PREFIX + completion_id, "record")
        return TrackedSuggestion(**json.loads(raw)) if raw else None

    async def mark(self, completion_id: str, event: SuggestionEvent) -> Recorded:
        key = self.PREFIX + completion_id
        field = "outcome" if event in FINAL_EVENTS else event
        if await self._redis.hsetnx(key, field, event):
            return "recorded"
        raw = await self._redis.hget(key, field)
        earlier = raw.decode() if isinstance(raw, bytes) else (raw or event)
        if earlier != event:
            raise OutcomeConflict(earlier)
        return "duplicate"

    async def close(self) -> None:
        await self._redis.aclose()


def build_suggestion_store(config: TelemetryConfig) -> SuggestionStore:
    if config.backend == "redis":
        return RedisSuggestionStore(config)
    return MemorySuggestionStore(config)
