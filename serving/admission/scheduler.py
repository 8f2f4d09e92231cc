"""The admission queue: batching across developers, lanes, fairness, supersession.

Each replica runs up to an in-flight *target* of requests (its batch stays full
but not over-full; the target adapts to the engine's own waiting count and KV
usage). Requests beyond that wait here, not in vLLM's first-come queue: the
highest lane first (completion > repair > tests), and inside a lane by
weighted fair queuing on virtual token counters per key, so one developer's
flood cannot delay another developer's completion. A new completion for the
same document of the same key supersedes the older one (queued or running).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.background import Periodic
from serving.config import LANES, AdmissionConfig
from serving.engine_link.replica_info import ReplicaInfo
from serving.errors import ConflictError, ServiceUnavailableError
from serving.observability.metrics import GatewayMetrics
from serving.upstream.adapters import AdapterPlacement
from serving.upstream.registry import ReplicaRegistry
from serving.upstream.routing import Router, RouteRequest

logger = logging.getLogger("seed_serve.admission")

_ORDER = itertools.count()


class Superseded(ConflictError):
    def __init__(self) -> None:
        # The openai SDKs retry a 409 unless told not to: resent, it would
        # supersede the newer completion in turn.
        super().__init__(
            "A newer completion for the same document replaced this one.",
            code="superseded",
            headers={"x-should-retry": "false"},
        )


@dataclass(eq=False)
class Ticket:
    model: str
    lane: str
    key: str
    document: str | None = None
    cost: float = 1.0
    route: RouteRequest | None = None
    exclude: frozenset[str] = frozenset()
    enqueued: float = field(default_factory=time.monotonic)
    dispatched: float | None = None
    replica: ReplicaInfo | None = None
    cancel_reason: str | None = None
    on_cancel: Callable[[str], None] | None = None
    future: asyncio.Future[ReplicaInfo] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    virtual_finish: float = 0.0
    order: int = field(default_factory=lambda: next(_ORDER))

    @property
    def waited_s(self) -> float:
        return (self.dispatched or time.monotonic()) - self.enqueued


@dataclass
class Lease:
    """A replica slot held for one request; release it when the answer is done."""

    scheduler: AdmissionScheduler
    ticket: Ticket
    released: bool = False

    @property
    def replica(self) -> ReplicaInfo:
        assert self.ticket.replica is not None
        return self.ticket.replica

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.scheduler.release(self.ticket)


class AdmissionScheduler:
    def __init__(
        self,
        config: AdmissionConfig,
        registry: ReplicaRegistry,
        router: Router,
        metrics: GatewayMetrics,
        *,
        kv_weight: float = 0.0,
        placement: AdapterPlacement | None = None,
    ) -> None:
        self.config = config
        # Requests for a team adapter wait for a replica that holds it or may
        # load it (a full replica of busy adapters takes no newcomer).
        self.placement = placement
        self.registry = registry
        self.router = router
        self.metrics = metrics
        self.kv_weight = kv_weight
        # model -> lane -> heap of (virtual finish, order, ticket)
        self._queues: dict[str, dict[str, list[tuple[float, int, Ticket]]]] = defaultdict(
            lambda: {lane: [] for lane in LANES}
        )
        self._lane_clock: dict[tuple[str, str], float] = defaultdict(float)
        self._key_clock: dict[tuple[str, str, str], float] = defaultdict(float)
        self._inflight: dict[str, set[Ticket]] = defaultdict(set)
        self._targets: dict[str, int] = {}
        self._documents: dict[tuple[str, str], Ticket] = {}
        self._queued = 0
        self._ticks = Periodic(
            "admission tick",
            self._tick,
            config.stats_interval_s,
            logger=logger,
            first_at_once=False,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._ticks.start()

    async def stop(self) -> None:
        await self._ticks.stop()

    async def _tick(self) -> None:
        """Adapt the in-flight targets to the engines' load, then dispatch what
        the new targets allow."""
        self._adapt()
        for model in list(self._queues):
            self._dispatch(model)

    # ------------------------------------------------------------------ capacity

    def target(self, replica_id: str) -> int:
        return self._targets.get(replica_id, self.config.target_inflight_per_replica)

    def inflight(self, replica_id: str) -> int:
        return len(self._inflight.get(replica_id, ()))

    def load(self, replica: ReplicaInfo) -> float:
        """Work at a replica: what its engine runs and queues (other gateways'
        requests too, as its replica last read it), or what we have in flight
        there if that is more (fresher), plus KV-cache pressure."""
        ours = float(self.inflight(replica.replica_id))
        engine = replica.running + replica.waiting
        return max(ours, engine) + self.kv_weight * replica.kv_cache_usage

    def _adapt(self) -> None:
        """Shrink a replica's target while its engine queues or runs out of KV
        cache; grow it back while it is full and the engine keeps up."""
        base = self.config.target_inflight_per_replica
        for replica in self.registry.all():
            rid = replica.replica_id
            target = self.target(rid)
            if self.config.adaptive:
                if replica.waiting > 0 or replica.kv_cache_usage > 0.95:
                    target = max(1, target - 1)
                elif self.inflight(rid) >= target and replica.kv_cache_usage < 0.85:
                    target = min(4 * base, target + 1)
            self._targets[rid] = target
            self.metrics.replica_inflight_target.labels(replica=rid).set(target)

    # ------------------------------------------------------------------ queueing

    def _candidates(self, ticket: Ticket) -> list[ReplicaInfo]:
        """The model's ready replicas this ticket may go to (not excluded by a
        retry, serving its lane, decoding as it needs)."""
        return self.registry.admitting(ticket.route or RouteRequest(ticket.model), ticket.exclude)

    def _free(self, candidates: list[ReplicaInfo]) -> list[ReplicaInfo]:
        return [r for r in candidates if self.inflight(r.replica_id) < self.target(r.replica_id)]

    def _any_free(self, model: str) -> bool:
        return any(
            self.inflight(r.replica_id) < self.target(r.replica_id)
            for r in self.registry.ready(model)
        )

    def _push(self, ticket: Ticket) -> None:
        lane_key = (ticket.model, ticket.lane)
        key_key = (ticket.model, ticket.lane, ticket.key)
        start = max(self._lane_clock[lane_key], self._key_clock[key_key])
        ticket.virtual_finish = start + ticket.cost
        self._key_clock[key_key] = ticket.virtual_finish
        heapq.heappush(
            self._queues[ticket.model][ticket.lane], (ticket.virtual_finish, ticket.order, ticket)
        )
        self._queued += 1
        self.metrics.labelled(self.metrics.queue_depth, ticket.lane).inc()

    def _remove(self, ticket: Ticket) -> bool:
        heap = self._queues[ticket.model][ticket.lane]
        for index, (_, _, queued) in enumerate(heap):
            if queued is ticket:
                heap.pop(index)
                heapq.heapify(heap)
                self._queued -= 1
                self.metrics.labelled(self.metrics.queue_depth, ticket.lane).dec()
                return True
        return False

    def _dispatch(self, model: str) -> None:
        lanes = self._queues.get(model)
        if not lanes:
            return
        # Adapter requests no free replica can take yet wait aside (for an
        # adapter slot), without holding up the requests behind them.
        deferred: list[tuple[str, tuple[float, int, Ticket]]] = []
        # A lane whose head no free replica may serve waits in order; lower
        # lanes may then take free replicas that head could not use anyway
        # (groups serving some lanes only, a retry's excluded replica).
        blocked: set[str] = set()
        try:
            while True:
                lane = next((ln for ln in LANES if lanes[ln] and ln not in blocked), None)
                if lane is None:
                    return
                heap = lanes[lane]
                ticket = heap[0][2]
                candidates = self._candidates(ticket)
                free = self._free(candidates)
                if not free:
                    blocked.add(lane)
                    if self._any_free(model):
                        continue
                    return  # nothing free at all: nobody overtakes anybody
                adapter = ticket.route.adapter if ticket.route is not None else None
                if adapter is not None and self.placement is not None:
                    free = [r for r in free if self.placement.can_host(r, adapter)]
                    if not free:
                        deferred.append((lane, heapq.heappop(heap)))
                        continue
                heapq.heappop(heap)
                self._queued -= 1
                self.metrics.labelled(self.metrics.queue_depth, ticket.lane).dec()
                self._lane_clock[(model, ticket.lane)] = ticket.virtual_finish
                route = ticket.route or RouteRequest(model)
                replica = self.router.pick(route, free, candidates, self.load)
                ticket.replica = replica
                ticket.dispatched = time.monotonic()
                self._inflight[replica.replica_id].add(ticket)
                self.metrics.labelled(self.metrics.queue_wait, ticket.lane).observe(ticket.waited_s)
                if not ticket.future.done():
                    ticket.future.set_result(replica)
        finally:
            for waiting_lane, entry in deferred:
                heapq.heappush(lanes[waiting_lane], entry)

    def _supersede(self, ticket: Ticket) -> None:
        if ticket.document is None:
            return
        slot = (ticket.key, ticket.document)
        older = self._documents.get(slot)
        self._documents[slot] = ticket
        if older is None or older.cancel_reason is not None:
            return
        older.cancel_reason = "superseded"
        self.metrics.cancellations.labels(reason="superseded").inc()
        if self._remove(older):
            if not older.future.done():
                older.future.set_exception(Superseded())
        elif older.on_cancel is not None:
            older.on_cancel("superseded")

    async def acquire(self, ticket: Ticket) -> Lease:
        """Wait for a replica slot (503 when the queue is full or the wait too long)."""
        if self.config.supersede and ticket.lane == "completion":
            self._supersede(ticket)
        candidates = self._candidates(ticket)
        if not candidates:
            lane = f" for the {ticket.lane} lane" if self.registry.ready(ticket.model) else ""
            raise ServiceUnavailableError(
                f"No replica of model `{ticket.model}`{lane} is ready yet; retry shortly.",
                code="no_ready_replica",
                headers={"Retry-After": "2"},
            )
        if self._queued >= self.config.max_queue and not self._free(candidates):
            self.metrics.rejections.labels(reason="backpressure").inc()
            raise ServiceUnavailableError(
                "The server is at capacity (admission queue full); retry shortly.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self._push(ticket)
        self._dispatch(ticket.model)
        try:
            if not ticket.future.done():  # else it got a slot at once: no timer needed
                async with asyncio.timeout(self.config.queue_timeout_s):
                    await asyncio.shield(ticket.future)
            ticket.future.result()
        except TimeoutError:
            self._remove(ticket)
            self.metrics.rejections.labels(reason="backpressure").inc()
            raise ServiceUnavailableError(
                f"No engine slot within {self.config.queue_timeout_s:g}s; retry shortly.",
                code="queue_timeout",
                headers={"Retry-After": "2"},
            ) from None
        except BaseException:
            # Cancelled while waiting (client gone) or superseded: leave no trace.
            if not self._remove(ticket) and ticket.replica is not None:
                self.release(ticket)
            raise
        return Lease(self, ticket)

    def release(self, ticket: Ticket) -> None:
        if ticket.replica is not None:
            self._inflight[ticket.replica.replica_id].discard(ticket)
        if (
            ticket.document is not None
            and self._documents.get((ticket.key, ticket.document)) is ticket
        ):
            del self._documents[(ticket.key, ticket.document)]
        self._dispatch(ticket.model)

    def queued_by_model(self) -> dict[str, int]:
        return {
            model: sum(len(heap) for heap in lanes.values())
            for model, lanes in self._queues.items()
        }

    def queued(self, lane: str | None = None) -> int:
        if lane is None:
            return self._queued
        return sum(len(lanes[lane]) for lanes in self._queues.values())
