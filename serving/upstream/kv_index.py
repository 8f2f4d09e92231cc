"""Which replica's KV cache holds which prompt prefix, from the engines' own
KV-cache events (kv_aware routing).

vLLM names a cached block by a hash the gateway cannot recompute (its seed and
hash function are the engine's), but each "stored" event carries the block's
token ids and its parent block. The index names blocks by a chain hash of its
own: ``H(parent's chain hash, the block's token ids)``, rooted at the adapter
(LoRA) the block was computed with. A request's prompt tokens give the same
chain, so its longest cached prefix per replica is a walk down the chain.

:class:`KvBlockIndex` is the data (bounded per replica, oldest forgotten
first); :class:`KvEventFeed` keeps one event stream per replica
(``GET /seed-serve/kv-events`` through the engine's guard, with its secret),
rebuilds a replica's part when its engine restarts, and marks a replica live
only while its stream is up: the router falls back to prefix affinity for
requests that could go to a replica whose events are missing.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.engine_link.http import EngineConnectionPool, EngineHTTPError
from serving.engine_link.replica_info import (
    ENGINE_UP_STATES,
    KV_EVENTS_PATH,
    ReplicaInfo,
    ReplicaState,
)
from serving.upstream.client import EngineTransport
from serving.upstream.sse import SSEReader, split_events

logger = logging.getLogger("seed_serve.kv_index")

_IDLE_S = 20.0  # the relay writes a keepalive every 5 s: longer silence is a dead link
_RETRY_S = 1.0
_STREAM_S = 86_400.0
_FOLLOWED_STATES = ENGINE_UP_STATES - {ReplicaState.STARTING}


def _root(lora: str | None) -> bytes:
    return hashlib.blake2b((lora or "").encode(), digest_size=8).digest()


def _chain(parent: bytes, tokens: Sequence[int]) -> bytes:
    return hashlib.blake2b(parent + array.array("q", tokens).tobytes(), digest_size=8).digest()


def prefix_chain(tokens: Sequence[int], block_size: int, lora: str | None) -> list[bytes]:
    """The chain hashes of ``tokens``' full blocks (what an engine caches)."""
    hashes: list[bytes] = []
    parent = _root(lora)
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = _chain(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


@dataclass
class _ReplicaBlocks:
    """One replica's cached blocks: the engine's block hash -> our chain hash,
    oldest first (the bound forgets those)."""

    instance: str | None = None
    block_size: int | None = None
    by_engine_hash: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    live: bool = False
    last_seq: int = -1


class KvBlockIndex:
    """Which replicas hold each block (by chain hash), bounded per replica."""

    def __init__(self, max_blocks_per_replica: int) -> None:
        self.max_blocks_per_replica = max_blocks_per_replica
        self._replicas: dict[str, _ReplicaBlocks] = {}
        self._holders: dict[bytes, set[str]] = {}

    # ------------------------------------------------------------------ state

    def _blocks(self, replica_id: str) -> _ReplicaBlocks:
        blocks = self._replicas.get(replica_id)
        if blocks is None:
            blocks = self._replicas[replica_id] = _ReplicaBlocks()
        return blocks

    def is_live(self, replica_id: str) -> bool:
        blocks = self._replicas.get(replica_id)
        return blocks is not None and blocks.live

    def set_live(self, replica_id: str, live: bool) -> None:
        self._blocks(replica_id).live = live

    def next_seq(self, replica_id: str) -> int:
        """The first event sequence number not applied yet."""
        blocks = self._replicas.get(replica_id)
        return blocks.last_seq + 1 if blocks else 0

    def summary(self) -> tuple[dict[str, int], dict[str, bool]]:
        """Blocks known and liveness, per replica (for the metrics)."""
        return (
            {rid: len(b.by_engine_hash) for rid, b in self._replicas.items()},
            {rid: b.live for rid, b in self._replicas.items()},
        )

    def block_count(self, replica_id: str) -> int:
        blocks = self._replicas.get(replica_id)
        return len(blocks.by_engine_hash) if blocks else 0

    def forget(self, replica_id: str) -> None:
        """Drop the replica's part (it left, or its engine restarted empty)."""
        blocks = self._replicas.pop(replica_id, None)
        if blocks is None:
            return
        for ours in blocks.by_engine_hash.values():
            self._release(ours, replica_id)

    def _release(self, ours: bytes, replica_id: str) -> None:
        holders = self._holders.get(ours)
        if holders is not None:
            holders.discard(replica_id)
            if not holders:
                del self._holders[ours]

    # ----------------------------------------------------------------- events

    def apply(
        self, replica_id: str, seq: int | None, batch: dict[str, Any]
    ) -> Literal["ok", "restarted", "gap"]:
        """One relayed batch; returns what the feed must do: ``"ok"``,
        ``"restarted"`` (another engine process: its part was dropped) or
        ``"gap"`` (events were missed: replay from ``last_seq + 1``)."""
        blocks = self._blocks(replica_id)
        instance = batch.get("instance")
        if blocks.instance is not None and instance != blocks.instance:
            live = blocks.live
            self.forget(replica_id)
            blocks = self._blocks(replica_id)
            blocks.instance, blocks.live = instance, live
            return "restarted"
        blocks.instance = instance
        if seq is None:  # the hello: no events
            return "ok"
        if blocks.last_seq >= 0 and seq > blocks.last_seq + 1:
            return "gap"
        if seq <= blocks.last_seq:
            return "ok"  # seen already (a replay overlapping the live stream)
        blocks.last_seq = seq
        for event in batch.get("events", ()):
            if "stored" in event:
                self._stored(replica_id, blocks, event["stored"])
            elif "removed" in event:
                for engine_hash in event["removed"]["hashes"]:
                    ours = blocks.by_engine_hash.pop(engine_hash, None)
                    if ours is not None:
                        self._release(ours, replica_id)
            elif event.get("cleared"):
                for ours in blocks.by_engine_hash.values():
                    self._release(ours, replica_id)
                blocks.by_engine_hash.clear()
        return "ok"

    def _stored(self, replica_id: str, blocks: _ReplicaBlocks, stored: dict[str, Any]) -> None:
        size = int(stored["block_size"])
        tokens: list[int] = stored["tokens"]
        if stored["parent"] is None:
            parent: bytes | None = _root(stored.get("lora"))
        else:
            parent = blocks.by_engine_hash.get(stored["parent"])
        if parent is None:
            return  # its parent was never seen (an event missed): cannot be chained
        blocks.block_size = size
        for i, engine_hash in enumerate(stored["hashes"]):
            chunk = tokens[i * size : (i + 1) * size]
            if len(chunk) < size:
                return
            parent = _chain(parent, chunk)
            if engine_hash in blocks.by_engine_hash:
                blocks.by_engine_hash.move_to_end(engine_hash)
            blocks.by_engine_hash[engine_hash] = parent
            self._holders.setdefault(parent, set()).add(replica_id)
        while len(blocks.by_engine_hash) > self.max_blocks_per_replica:
            _, oldest = blocks.by_engine_hash.popitem(last=False)
            self._release(oldest, replica_id)

    # ----------------------------------------------------------------- lookup

    def matched_blocks(
        self, tokens: Sequence[int], lora: str | None, replica_ids: Iterable[str]
    ) -> dict[str, int]:
        """For each replica, how many leading blocks of ``tokens`` it holds."""
        wanted = list(replica_ids)
        matched = dict.fromkeys(wanted, 0)
        sizes = {
            blocks.block_size
            for rid in wanted
            if (blocks := self._replicas.get(rid)) is not None and blocks.block_size
        }
        for size in sizes:
            same_size = [
                rid for rid in wanted if (b := self._replicas.get(rid)) and b.block_size == size
            ]
            still = set(same_size)
            for depth, ours in enumerate(prefix_chain(tokens, size, lora)):
                still &= self._holders.get(ours, set())
                if not still:
                    break
                for rid in still:
                    matched[rid] = depth + 1
        return matched


class KvEventFeed:
    """One event stream per replica whose engine publishes KV-cache events,
    kept in step with the registry's replica list."""

    def __init__(
        self,
        index: KvBlockIndex,
        transport: EngineTransport | None = None,
        *,
        retry_s: float = _RETRY_S,
    ) -> None:
        self.index = index
        self.retry_s = retry_s  # between a stream's end and the next try
        # A stream lives as long as its engine (idle_s tells a dead one); after
        # a day it reconnects and replays what it missed meanwhile.
        self.transport: EngineTransport = transport or EngineConnectionPool(
            connect_s=5.0, total_s=_STREAM_S
        )
        self._streams: dict[str, tuple[tuple[str, int | None], asyncio.Task[None]]] = {}

    def update(
        self, replicas: list[ReplicaInfo], is_ready: Callable[[str], bool] | None = None
    ) -> None:
        """A registry listener: start, restart or stop streams to match (one
        per replica whose engine is up and past its start-up)."""
        wanted = {
            r.replica_id: r
            for r in replicas
            if r.kv_events and r.url and r.state in _FOLLOWED_STATES
        }
        for rid in list(self._streams):
            engine, task = self._streams[rid]
            replica = wanted.get(rid)
            if replica is None or (replica.url, replica.engine_pid) != engine:
                task.cancel()
                del self._streams[rid]
                self.index.forget(rid)
        for rid, replica in wanted.items():
            if rid not in self._streams:
                task = asyncio.create_task(self._follow(replica), name=f"kv-events {rid}")
                self._streams[rid] = ((replica.url, replica.engine_pid), task)

    async def close(self) -> None:
        tasks = [task for _, task in self._streams.values()]
        self._streams.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.transport.close()

    async def _follow(self, replica: ReplicaInfo) -> None:
        rid = replica.replica_id
        since = 0  # what the engine still holds, then live
        headers = f"Authorization: Bearer {replica.token}\r\n".encode()
        try:
            while True:
                try:
                    since = await self._read(replica, headers, since)
                except (EngineHTTPError, TimeoutError, OSError, ValueError) as exc:
                    logger.info("KV events of %s interrupted: %s", rid, exc)
                    since = self.index.next_seq(rid)  # the replay picks up from there
                self.index.set_live(rid, False)
                await asyncio.sleep(self.retry_s)
        finally:
            self.index.set_live(rid, False)

    async def _read(self, replica: ReplicaInfo, headers: bytes, since: int) -> int:
        """Read one connection's events; returns where the next one starts."""
        rid = replica.replica_id
        response = await self.transport.request(
            "GET", replica.url, f"{KV_EVENTS_PATH}?since={since}", b"", headers,
            idle_s=_IDLE_S, total_s=_STREAM_S,
        )  # fmt: skip
        try:
            if response.status != 200:
                raise EngineHTTPError(f"{KV_EVENTS_PATH} answered HTTP {response.status}")
            reader = SSEReader()
            first = True
            while True:
                chunk = await response.readany()
                if not chunk:
                    raise EngineHTTPError("the engine closed its KV event stream")
                for event in split_events(reader.feed(chunk)):
                    if event.data is None:
                        continue  # keepalive
                    seq = event.event_id
                    outcome = self.index.apply(
                        rid, int(seq) if seq is not None else None, json.loads(event.data)
                    )
                    if seq is None:  # the hello: the stream is up
                        self.index.set_live(rid, True)
                    if outcome == "restarted":
                        logger.info("engine of %s restarted: its KV index is rebuilt", rid)
                        return 0
                    if outcome == "gap":
                        if first:
                            # The replay could not go back that far: start over
                            # from what the engine still holds.
                            self.index.forget(rid)
                            return 0
                        return self.index.next_seq(rid)
                    if seq is not None:
                        first = False
        finally:
            response.release()
