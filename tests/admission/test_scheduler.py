"""The admission queue: lanes, fairness, backpressure, supersession, and the
in-flight targets that follow the engines' load."""

from __future__ import annotations

import asyncio

import pytest

from serving.admission.scheduler import AdmissionScheduler, Superseded, Ticket
from serving.config import AdmissionConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.errors import ServiceUnavailableError
from serving.observability.metrics import GatewayMetrics
from serving.upstream.registry import ReplicaRegistry, StaticSource
from serving.upstream.routing import RoundRobinRouter


def _scheduler(target: int = 1, **settings: object) -> tuple[AdmissionScheduler, ReplicaRegistry]:
    replica = ReplicaInfo("r-0", "g", "m", ReplicaState.READY, url="http://127.0.0.1:9")
    registry = ReplicaRegistry(StaticSource([replica]))
    config = AdmissionConfig(target_inflight_per_replica=target, adaptive=False, **settings)  # type: ignore[arg-type]
    return AdmissionScheduler(config, registry, RoundRobinRouter(), GatewayMetrics()), registry


def test_lanes_and_fairness_order_dispatch() -> None:
    async def run() -> list[str]:
        scheduler, registry = _scheduler()
        await registry.refresh()
        order: list[str] = []
        holder = await scheduler.acquire(Ticket("m", "completion", "first"))  # fills the replica

        async def request(lane: str, key: str, label: str) -> None:
            lease = await scheduler.acquire(Ticket("m", lane, key, cost=10))
            order.append(label)
            await asyncio.sleep(0)
            lease.release()

        tasks = [asyncio.create_task(request("tests", "flooder", f"tests-{i}")) for i in range(3)]
        tasks += [
            asyncio.create_task(request("completion", "flooder", f"flood-{i}")) for i in range(3)
        ]
        await asyncio.sleep(0.01)
        tasks += [
            asyncio.create_task(request("completion", "quiet", f"quiet-{i}")) for i in range(2)
        ]
        await asyncio.sleep(0.01)
        holder.release()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    # Completions before tests; the quiet key is not stuck behind the flood.
    assert all(label.startswith(("flood", "quiet")) for label in order[:5])
    assert order[-3:] == ["tests-0", "tests-1", "tests-2"]
    assert order.index("quiet-0") <= 2 and order.index("quiet-1") <= 4


def test_full_queue_answers_503_at_once() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(max_queue=1)
        await registry.refresh()
        await scheduler.acquire(Ticket("m", "completion", "a"))
        waiting = asyncio.create_task(scheduler.acquire(Ticket("m", "completion", "b")))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailableError) as caught:
            await scheduler.acquire(Ticket("m", "completion", "c"))
        assert caught.value.code == "queue_full" and caught.value.headers["Retry-After"]
        waiting.cancel()

    asyncio.run(run())


def test_newer_completion_supersedes_a_queued_one() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler()
        await registry.refresh()
        holder = await scheduler.acquire(Ticket("m", "completion", "dev", document="a.py"))
        older = asyncio.create_task(
            scheduler.acquire(Ticket("m", "completion", "dev", document="b.py"))
        )
        await asyncio.sleep(0.01)
        newer = asyncio.create_task(
            scheduler.acquire(Ticket("m", "completion", "dev", document="b.py"))
        )
        await asyncio.sleep(0.01)
        with pytest.raises(Superseded):
            await older
        holder.release()
        (await newer).release()
        assert scheduler.queued() == 0

    asyncio.run(run())


def test_supersession_cancels_a_running_completion() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(target=4)
        await registry.refresh()
        cancelled: list[str] = []
        first = await scheduler.acquire(Ticket("m", "completion", "dev", document="x.py"))
        first.ticket.on_cancel = cancelled.append
        second = await scheduler.acquire(Ticket("m", "completion", "dev", document="x.py"))
        assert cancelled == ["superseded"]
        # Another developer's same file, or another file, is left alone.
        other = await scheduler.acquire(Ticket("m", "completion", "someone", document="x.py"))
        assert cancelled == ["superseded"]
        for lease in (first, second, other):
            lease.release()

    asyncio.run(run())


def test_queue_wait_times_out_with_503() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(queue_timeout_s=0.05)
        await registry.refresh()
        await scheduler.acquire(Ticket("m", "completion", "a"))
        with pytest.raises(ServiceUnavailableError) as caught:
            await scheduler.acquire(Ticket("m", "completion", "b"))
        assert caught.value.code == "queue_timeout"
        assert scheduler.queued() == 0

    asyncio.run(run())


def test_inflight_target_adapts_to_engine_load() -> None:
    async def run() -> list[int]:
        scheduler, registry = _scheduler(target=4)
        scheduler.config.adaptive = True
        await registry.refresh()
        [replica] = registry.all()  # its load, as its replica last read it from the engine
        seen = []
        replica.waiting = 3  # the engine queues: over-full
        scheduler._adapt()
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        leases = [await scheduler.acquire(Ticket("m", "completion", str(i))) for i in range(2)]
        replica.waiting, replica.kv_cache_usage = 0, 0.2  # full, and keeping up
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        replica.kv_cache_usage = 0.99  # out of KV cache
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        for lease in leases:
            lease.release()
        return seen

    assert asyncio.run(run()) == [2, 3, 2]
