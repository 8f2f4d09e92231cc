"""Choosing the replica that serves a request (policy from config, a tagged union).

The admission queue calls a router with the replicas that have a free slot;
the router picks one. Load = requests this gateway has in flight there plus
the engine's own waiting count (polled) plus a KV-usage term.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.config import (
    KvAwareRouting,
    LeastLoadedRouting,
    PrefixAffinityRouting,
    RoundRobinRouting,
    RoutingConfig,
    SessionRouting,
)
from serving.engine_link.replica_info import ReplicaInfo
from serving.upstream.kv_index import KvBlockIndex


@dataclass(frozen=True)
class RouteRequest:
    model: str
    affinity: str | None = None  # document identity or prompt start
    session: str | None = None  # session header or API key
    adapter: str | None = None  # a team adapter (LoRA) the replica must hold
    lane: str | None = None  # only replicas whose group serves this lane
    # A sampling field the request sets that speculative decoding ignores
    # (min_p, logit_bias): only replicas that decode without it.
    needs_exact_sampling: str | None = None
    # The prompt's token ids as the engine will see them (kv_aware routing only).
    prompt_tokens: Sequence[int] | None = None

    def admits(self, replica: ReplicaInfo) -> bool:
        """Whether ``replica`` may serve this request at all."""
        if self.lane is not None and replica.lanes is not None and self.lane not in replica.lanes:
            return False
        return self.needs_exact_sampling is None or replica.speculative == "off"


LoadFn = Callable[[ReplicaInfo], float]


class Router(Protocol):
    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        """One of ``free`` (never empty); ``ready`` are all the model's ready replicas."""


class RoundRobinRouter:
    def __init__(self) -> None:
        self._turns: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)

    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        ordered = sorted(ready, key=lambda r: r.replica_id)
        free_ids = {r.replica_id for r in free}
        start = next(self._turns[request.model])
        for offset in range(len(ordered)):
            candidate = ordered[(start + offset) % len(ordered)]
            if candidate.replica_id in free_ids:
                return candidate
        return free[0]


class LeastLoadedRouter:
    def __init__(self, config: LeastLoadedRouting) -> None:
        self.config = config

    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        return min(free, key=lambda r: (load(r), r.replica_id))


def _hash(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big"
    )


class _HashRing:
    """Consistent hashing with bounded loads: a key goes to the first replica
    clockwise from its hash that is not above ``bound`` x the average load."""

    def __init__(self, virtual_nodes: int, bound: float) -> None:
        self.virtual_nodes = virtual_nodes
        self.bound = bound
        self._rings: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    def _ring(self, replica_ids: tuple[str, ...]) -> tuple[list[int], list[str]]:
        ring = self._rings.get(replica_ids)
        if ring is None:
            points = sorted(
                (_hash(f"{rid}#{i}"), rid) for rid in replica_ids for i in range(self.virtual_nodes)
            )
            ring = ([p for p, _ in points], [rid for _, rid in points])
            self._rings = {replica_ids: ring}  # one ring per replica set; sets rarely change
        return ring

    def pick(
        self,
        key: str,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        by_id = {r.replica_id: r for r in ready}
        free_ids = {r.replica_id for r in free}
        hashes, owners = self._ring(tuple(sorted(by_id)))
        total = sum(load(r) for r in ready) + 1  # + the request being placed
        limit = math.ceil(self.bound * total / max(len(ready), 1))
        start = bisect.bisect(hashes, _hash(key)) % len(hashes)
        seen: set[str] = set()
        for offset in range(len(hashes)):
            rid = owners[(start + offset) % len(hashes)]
            if rid in seen:
                continue
            seen.add(rid)
            if rid in free_ids and load(by_id[rid]) + 1 <= limit:
                return by_id[rid]
            if len(seen) == len(by_id):
                break
        return min(free, key=lambda r: (load(r), r.replica_id))


class _KeyedRingRouter:
    """Consistent hashing on one key of the request (round-robin without it)."""

    def __init__(
        self,
        config: PrefixAffinityRouting | SessionRouting,
        key: Callable[[RouteRequest], str | None],
    ) -> None:
        self.ring = _HashRing(config.virtual_nodes, config.load_bound)
        self.fallback = RoundRobinRouter()
        self.key = key

    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        key = self.key(request)
        if not key:
            return self.fallback.pick(request, free, ready, load)
        return self.ring.pick(key, free, ready, load)


class PrefixAffinityRouter(_KeyedRingRouter):
    def __init__(self, config: PrefixAffinityRouting) -> None:
        super().__init__(config, key=lambda request: request.affinity)


class SessionRouter(_KeyedRingRouter):
    def __init__(self, config: SessionRouting) -> None:
        super().__init__(config, key=lambda request: request.session)


class KvAwareRouter:
    """The free replica holding the longest cached prefix of the prompt (the
    engines' KV-cache events), among those within the load bound; prefix
    affinity when a replica's events are missing, the prompt's tokens are not
    known (chat), or no replica holds even its first block."""

    def __init__(
        self,
        config: KvAwareRouting,
        index: KvBlockIndex,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.index = index
        self.count = count or (lambda outcome: None)  # each decision's outcome (metrics)
        self.bound = config.load_bound
        self.fallback = PrefixAffinityRouter(
            PrefixAffinityRouting(
                policy="prefix_affinity",
                prefix_chars=config.prefix_chars,
                load_bound=config.load_bound,
                virtual_nodes=config.virtual_nodes,
            )
        )

    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        tokens = request.prompt_tokens
        if not tokens:
            return self._fall_back("no_tokens", request, free, ready, load)
        if not all(self.index.is_live(r.replica_id) for r in ready):
            return self._fall_back("no_events", request, free, ready, load)
        limit = math.ceil(self.bound * (sum(load(r) for r in ready) + 1) / max(len(ready), 1))
        within = [r for r in free if load(r) + 1 <= limit]
        matched = self.index.matched_blocks(tokens, request.adapter, [r.replica_id for r in within])
        best = max(within, key=lambda r: (matched[r.replica_id], -load(r)), default=None)
        if best is None or matched[best.replica_id] == 0:
            return self._fall_back("nothing_cached", request, free, ready, load)
        self.count("cached_prefix")
        return best

    def _fall_back(
        self,
        outcome: str,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        self.count(outcome)
        return self.fallback.pick(request, free, ready, load)


def build_router(
    config: RoutingConfig,
    kv_index: KvBlockIndex | None = None,
    count: Callable[[str], None] | None = None,
) -> Router:
    """The configured policy; kv_aware needs the gateway's index (and counts
    its decisions' outcomes with ``count``)."""
    if isinstance(config, RoundRobinRouting):
        return RoundRobinRouter()
    if isinstance(config, LeastLoadedRouting):
        return LeastLoadedRouter(config)
    if isinstance(config, PrefixAffinityRouting):
        return PrefixAffinityRouter(config)
    if isinstance(config, KvAwareRouting):
        if kv_index is None:
            raise ValueError("kv_aware routing needs the gateway's KV block index")
        return KvAwareRouter(config, kv_index, count)
    return SessionRouter(config)
