"""Where team adapters are loaded: the gateway's view of each replica's
resident adapters, for adapter-aware routing.

Each replica owns its resident set (it loads, evicts and reports it with its
info: ``ReplicaInfo.adapters``, each adapter with how long it has been idle);
this view merges those reports with what this gateway did since (adapters it
had loaded, requests it sent), so that routing does not wait a refresh to
know. The replica stays the authority: a load this view thought possible may
still be refused (another gateway filled the replica first), and dispatch
then tries elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from serving.engine_link.replica_info import ReplicaInfo
from serving.upstream.routing import LoadFn, Router, RouteRequest


class AdapterPlacement:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last_used: dict[str, dict[str, float]] = {}  # replica -> adapter -> clock time

    def update(self, replicas: Sequence[ReplicaInfo]) -> None:
        """Take the replicas' own reports (after each registry refresh)."""
        now = self.clock()
        merged: dict[str, dict[str, float]] = {}
        for replica in replicas:
            local = self._last_used.get(replica.replica_id, {})
            reported = {a["name"]: now - float(a["idle_s"]) for a in replica.adapters}
            merged[replica.replica_id] = {
                name: max(at, local.get(name, at)) for name, at in reported.items()
            }
        self._last_used = merged

    def resident(self, replica_id: str) -> set[str]:
        return set(self._last_used.get(replica_id, ()))

    def touch(self, replica_id: str, adapter: str) -> None:
        """A request for ``adapter`` was sent to the replica."""
        self._last_used.setdefault(replica_id, {})[adapter] = self.clock()

    def loaded(self, replica_id: str, adapter: str, evicted: Sequence[str]) -> None:
        used = self._last_used.setdefault(replica_id, {})
        for name in evicted:
            used.pop(name, None)
        used[adapter] = self.clock()

    def can_host(self, replica: ReplicaInfo, adapter: str) -> bool:
        """Whether ``adapter`` is resident on ``replica`` or may be loaded there
        now: a free slot, or a resident adapter idle for ``min_resident_s``."""
        if replica.lora_capacity <= 0:
            return False
        used = self._last_used.get(replica.replica_id, {})
        if adapter in used or len(used) < replica.lora_capacity:
            return True
        now = self.clock()
        return any(now - at >= replica.lora_min_resident_s for at in used.values())


class AdapterAwareRouter:
    """Requests for an adapter go where it is resident, within the load bound
    (the replica's load at most ``lora_load_bound`` x the average of the
    model's ready replicas), picked among those by the configured policy;
    otherwise to the least-loaded replica that can load it. Requests for a
    base model are the configured policy's alone."""

    def __init__(self, inner: Router, placement: AdapterPlacement) -> None:
        self.inner = inner
        self.placement = placement

    def pick(
        self,
        request: RouteRequest,
        free: Sequence[ReplicaInfo],
        ready: Sequence[ReplicaInfo],
        load: LoadFn,
    ) -> ReplicaInfo:
        adapter = request.adapter
        if adapter is None:
            return self.inner.pick(request, free, ready, load)
        hosting = [r for r in free if adapter in self.placement.resident(r.replica_id)]
        if hosting:
            average = (sum(load(r) for r in ready) + 1) / max(len(ready), 1)
            within = [r for r in hosting if load(r) + 1 <= math.ceil(r.lora_load_bound * average)]
            if within:
                return self.inner.pick(request, within, within, load)
        return min(free, key=lambda r: (load(r), r.replica_id))
