"""kv_aware routing's index of the engines' KV-cache events, and the policy
that routes on it, in process (the events as the engine guard relays them:
tests/e2e/test_kv_aware.py has a real engine publish them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from serving.config import KvAwareRouting, ServingConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.upstream.kv_index import KvBlockIndex, KvEventFeed
from serving.upstream.routing import KvAwareRouter, RouteRequest, build_router

BLOCK = 4
REPLICAS = [ReplicaInfo(f"r-{i}", "g", "m", ReplicaState.READY) for i in range(3)]


def _no_load(_: ReplicaInfo) -> float:
    return 0.0


def stored(
    hashes: list[str], tokens: list[int], parent: str | None = None, lora: str | None = None
) -> dict[str, Any]:
    return {
        "stored": {
            "hashes": hashes, "parent": parent, "tokens": tokens, "block_size": BLOCK,
            "lora": lora,
        }
    }  # fmt: skip


def batch(*events: dict[str, Any], instance: str = "engine-1") -> dict[str, Any]:
    return {"instance": instance, "events": list(events)}


PROMPT = list(range(100, 114))  # 3 full blocks and 2 tokens


def _live_index(*replica_ids: str) -> KvBlockIndex:
    index = KvBlockIndex(max_blocks_per_replica=1000)
    for rid in replica_ids:
        index.apply(rid, None, batch())  # the hello
        index.set_live(rid, True)
    return index


def test_chained_stored_events_give_each_replica_its_longest_prefix() -> None:
    index = _live_index("r-0", "r-1")
    # r-0 caches the whole prompt's full blocks in two events (the second
    # chained to the first by the engine's own hash); r-1 only the first block.
    assert index.apply("r-0", 0, batch(stored(["a", "b"], PROMPT[:8]))) == "ok"
    assert index.apply("r-0", 1, batch(stored(["c"], PROMPT[8:12], parent="b"))) == "ok"
    assert index.apply("r-1", 0, batch(stored(["x"], PROMPT[:4]))) == "ok"
    matched = index.matched_blocks(PROMPT, None, ["r-0", "r-1", "r-2"])
    assert matched == {"r-0": 3, "r-1": 1, "r-2": 0}
    # A prompt that differs in its second block shares only the first.
    other = [*PROMPT[:4], 7, 7, 7, 7, *PROMPT[8:]]
    assert index.matched_blocks(other, None, ["r-0", "r-1"]) == {"r-0": 1, "r-1": 1}
    # The same tokens under an adapter are other blocks (the engine hashes the LoRA in).
    assert index.matched_blocks(PROMPT, "team-a", ["r-0"]) == {"r-0": 0}


def test_adapter_blocks_match_only_requests_for_that_adapter() -> None:
    index = _live_index("r-0")
    index.apply("r-0", 0, batch(stored(["a", "b"], PROMPT[:8], lora="team-a")))
    assert index.matched_blocks(PROMPT, "team-a", ["r-0"]) == {"r-0": 2}
    assert index.matched_blocks(PROMPT, None, ["r-0"]) == {"r-0": 0}


def test_removed_and_cleared_blocks_stop_matching() -> None:
    index = _live_index("r-0")
    index.apply("r-0", 0, batch(stored(["a", "b", "c"], PROMPT[:12])))
    index.apply("r-0", 1, batch({"removed": {"hashes": ["b"]}}))
    assert index.matched_blocks(PROMPT, None, ["r-0"]) == {"r-0": 1}  # a prefix ends at a hole
    index.apply("r-0", 2, batch({"cleared": True}))
    assert index.matched_blocks(PROMPT, None, ["r-0"]) == {"r-0": 0}
    assert index.block_count("r-0") == 0


def test_a_block_whose_parent_was_never_seen_is_not_indexed() -> None:
    index = _live_index("r-0")
    index.apply("r-0", 0, batch(stored(["c"], PROMPT[8:12], parent="unknown")))
    assert index.block_count("r-0") == 0


def test_the_index_is_bounded_per_replica_oldest_forgotten_first() -> None:
    index = KvBlockIndex(max_blocks_per_replica=2)
    index.apply("r-0", 0, batch(stored(["a", "b", "c"], PROMPT[:12])))
    assert index.block_count("r-0") == 2
    # "a" (the root block) went first: nothing chains from the root any more.
    assert index.matched_blocks(PROMPT, None, ["r-0"]) == {"r-0": 0}


def test_another_engine_instance_drops_the_replicas_part() -> None:
    index = _live_index("r-0")
    index.apply("r-0", 0, batch(stored(["a"], PROMPT[:4])))
    assert index.apply("r-0", None, batch(instance="engine-2")) == "restarted"
    assert index.block_count("r-0") == 0 and index.is_live("r-0")
    assert index.next_seq("r-0") == 0  # the new engine's events start over


def test_sequence_gaps_and_repeats() -> None:
    index = _live_index("r-0")
    index.apply("r-0", 0, batch(stored(["a"], PROMPT[:4])))
    assert index.apply("r-0", 0, batch(stored(["z"], [9, 9, 9, 9]))) == "ok"  # a repeat: ignored
    assert index.block_count("r-0") == 1
    assert index.apply("r-0", 5, batch(stored(["b"], PROMPT[4:8], parent="a"))) == "gap"
    assert index.next_seq("r-0") == 1  # replay from the first one missed
    assert index.block_count("r-0") == 1


def test_kv_aware_routes_to_the_longest_cached_prefix_within_the_load_bound() -> None:
    index = _live_index("r-0", "r-1", "r-2")
    index.apply("r-1", 0, batch(stored(["a", "b", "c"], PROMPT[:12])))
    index.apply("r-2", 0, batch(stored(["x"], PROMPT[:4])))
    router = KvAwareRouter(KvAwareRouting(policy="kv_aware", load_bound=1.25), index)
    request = RouteRequest("m", affinity="doc.py", prompt_tokens=PROMPT)
    assert router.pick(request, REPLICAS, REPLICAS, _no_load).replica_id == "r-1"
    # Busy past the bound: the next longest prefix.
    loads = {"r-0": 0.0, "r-1": 6.0, "r-2": 0.0}
    busy = router.pick(request, REPLICAS, REPLICAS, lambda r: loads[r.replica_id])
    assert busy.replica_id == "r-2"
    # Only free replicas are candidates.
    free = [REPLICAS[0], REPLICAS[2]]
    assert router.pick(request, free, REPLICAS, _no_load).replica_id == "r-2"


def test_kv_aware_falls_back_to_prefix_affinity() -> None:
    index = _live_index("r-0", "r-1", "r-2")
    router = KvAwareRouter(KvAwareRouting(policy="kv_aware"), index)
    affinity = build_router(
        ServingConfig.model_validate({"routing": {"policy": "prefix_affinity"}}).routing
    )
    for doc in ("a.py", "b.py", "c.py", "d.py"):
        # Nothing cached, or no tokens (a chat request): where prefix_affinity sends it.
        for tokens in (PROMPT, None):
            request = RouteRequest("m", affinity=doc, prompt_tokens=tokens)
            expected = affinity.pick(request, REPLICAS, REPLICAS, _no_load)
            assert router.pick(request, REPLICAS, REPLICAS, _no_load) == expected
    # A replica whose events are missing: affinity, although r-1 holds the prompt.
    index.apply("r-1", 0, batch(stored(["a", "b", "c"], PROMPT[:12])))
    request = RouteRequest("m", affinity="a.py", prompt_tokens=PROMPT)
    assert router.pick(request, REPLICAS, REPLICAS, _no_load).replica_id == "r-1"
    index.set_live("r-2", False)
    expected = affinity.pick(request, REPLICAS, REPLICAS, _no_load)
    assert router.pick(request, REPLICAS, REPLICAS, _no_load) == expected


def test_kv_aware_needs_its_index_and_checks_its_settings() -> None:
    config = ServingConfig.model_validate(
        {"routing": {"policy": "kv_aware", "load_bound": 2.0}}
    ).routing
    assert isinstance(config, KvAwareRouting) and config.load_bound == 2.0
    with pytest.raises(ValueError, match="KV block index"):
        build_router(config)
    assert isinstance(build_router(config, KvBlockIndex(16)), KvAwareRouter)
    with pytest.raises(ValidationError, match="max_blocks_per_replica"):
        ServingConfig.model_validate(
            {"routing": {"policy": "kv_aware", "max_blocks_per_replica": 1}}
        )


# --------------------------------------------------------------------------- the feed


class _Stream:
    """TEST FIXTURE: one scripted answer of an engine guard's event relay."""

    status = 200

    def __init__(self, chunks: list[bytes], *, hold: bool) -> None:
        self._chunks = list(chunks)
        self._hold = hold  # stay open after the chunks (else the engine hangs up)

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        if not self._chunks and self._hold:
            await asyncio.Event().wait()
        return self._chunks.pop(0) if self._chunks else b""

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Relay:
    """TEST FIXTURE: the relay's answers, one per connection, in order (the
    last one stays open); records what each connection asked for."""

    def __init__(self, *connections: list[bytes]) -> None:
        self.connections = list(connections)
        self.asked: list[str] = []
        self.headers: list[bytes] = []

    async def request(
        self, method: str, url: str, path: str, body: bytes = b"", headers: bytes = b"",
        *, idle_s: float | None = None, total_s: float | None = None,
    ) -> _Stream:  # fmt: skip
        self.asked.append(path)
        self.headers.append(headers)
        chunks = self.connections.pop(0)
        return _Stream(chunks, hold=not self.connections)

    def close(self) -> None:
        pass


def _sse(data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def _until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_the_feed_replays_what_it_missed_and_rebuilds_after_a_restart() -> None:
    asyncio.run(_feed_scenario())


async def _feed_scenario() -> None:
    one, two = batch(instance="one"), batch(instance="two")
    relay = _Relay(
        # First connection: the hello, two batches (the second in two chunks), a keepalive, gone.
        [_sse(one), _sse(batch(stored(["a"], PROMPT[:4]), instance="one"), 0),
         _sse(batch(stored(["b"], PROMPT[4:8], parent="a"), instance="one"), 1)[:9],
         _sse(batch(stored(["b"], PROMPT[4:8], parent="a"), instance="one"), 1)[9:] + b": k\n\n"],
        # Reconnected from 2: the same engine.
        [_sse(one), _sse(batch(stored(["c"], PROMPT[8:12], parent="b"), instance="one"), 2)],
        # Reconnected from 3: another engine process (it restarted, empty).
        [_sse(two)],
        # From 0 on the new engine.
        [_sse(two), _sse(batch(stored(["x"], PROMPT[:4]), instance="two"), 0)],
    )  # fmt: skip
    index = KvBlockIndex(1000)
    feed = KvEventFeed(index, transport=relay, retry_s=0.01)
    replica = ReplicaInfo(
        "r-0", "g", "m", ReplicaState.READY, url="http://e", token="secret", kv_events=True
    )
    feed.update([replica, ReplicaInfo("r-1", "g", "m", ReplicaState.READY, url="http://f")])
    try:
        await _until(lambda: len(relay.asked) == 4 and index.block_count("r-0") == 1)
        assert relay.asked == [
            "/seed-serve/kv-events?since=0", "/seed-serve/kv-events?since=2",
            "/seed-serve/kv-events?since=3", "/seed-serve/kv-events?since=0",
        ]  # fmt: skip
        assert relay.headers[0] == b"Authorization: Bearer secret\r\n"  # the engine's secret
        assert index.matched_blocks(PROMPT, None, ["r-0"]) == {"r-0": 1}  # the new engine's only
        assert index.is_live("r-0") and not index.is_live("r-1")  # r-1 publishes no events
        # The replica leaves: its stream stops, its part is dropped.
        feed.update([])
        assert index.block_count("r-0") == 0 and not index.is_live("r-0")
    finally:
        await feed.close()
