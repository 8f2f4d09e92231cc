"""Engine load, read from each engine's own Prometheus metrics, off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.engines.registry import ReplicaRegistry
from serving.engines.types import ReplicaState
from serving.observability.metrics import GatewayMetrics

logger = logging.getLogger("seed_serve.stats")

# The engine process is alive in these states (it may still be loading, or draining).
_UP_STATES = frozenset({ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY,
                        ReplicaState.DRAINING})  # fmt: skip

_METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:prefix_cache_queries_total": "prefix_queries",
}


@dataclass
class EngineStats:
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    updated: float = 0.0

    @property
    def prefix_hit_ratio(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def parse_engine_metrics(text: str) -> EngineStats:
    """Sum the series we care about (vLLM labels them by model and engine)."""
    stats = EngineStats(updated=time.monotonic())
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        field = _METRICS.get(name)
        if field is None:
            continue
        try:
            setattr(stats, field, getattr(stats, field) + float(value))
        except ValueError:
            continue
    return stats


def relabel_engine_metrics(texts: dict[str, str]) -> bytes:
    """The engines' own metrics as one exposition, each series labelled with its
    replica (families merged, so HELP/TYPE appear once)."""
    families: dict[str, Metric] = {}
    for replica_id, text in sorted(texts.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            logger.warning("unparsable metrics from %s: %s", replica_id, exc)
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                Sample(s.name, {**s.labels, "replica": replica_id}, s.value, s.timestamp)
                for s in family.samples
            )

    class _Snapshot:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)


class EngineStatsPoller:
    """Polls every ready replica's /metrics: load for the scheduler, the
    ``seed_serve_replica_*`` gauges, and the raw text for /metrics/engines."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        session: aiohttp.ClientSession | None,
        interval_s: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.metrics = metrics
        self._session = session
        self.stats: dict[str, EngineStats] = {}
        self.raw: dict[str, str] = {}
        self._exported: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def poll_once(self) -> None:
        ready = [r for r in self.registry.all() if r.ready]

        async def one(url: str, token: str, replica_id: str) -> None:
            try:
                async with self._client().get(
                    url + "/metrics", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    if response.status == 200:
                        text = await response.text()
                        self.stats[replica_id] = parse_engine_metrics(text)
                        self.raw[replica_id] = text
            except (TimeoutError, aiohttp.ClientError) as exc:
                logger.debug("no stats from %s: %s", replica_id, exc)

        await asyncio.gather(*(one(r.url, r.token, r.replica_id) for r in ready))
        known = {r.replica_id for r in self.registry.all()}
        for gone in set(self.stats) - known:
            del self.stats[gone]
        for gone in set(self.raw) - known:
            del self.raw[gone]
        self._export()

    def _export(self) -> None:
        """Set the per-replica gauges; drop the series of replicas that are gone."""
        if self.metrics is None:
            return
        m = self.metrics
        current: set[tuple[str, str]] = set()
        for replica in self.registry.all():
            rid = replica.replica_id
            current.add((rid, replica.model))
            m.replica_up.labels(replica=rid, model=replica.model).set(
                1 if replica.state in _UP_STATES else 0
            )
            m.replica_ready.labels(replica=rid, model=replica.model).set(
                1 if self.registry.is_ready(rid) else 0
            )
            stats = self.stats.get(rid)
            if stats is not None and replica.state == ReplicaState.READY:
                m.replica_running.labels(replica=rid).set(stats.running)
                m.replica_waiting.labels(replica=rid).set(stats.waiting)
                m.replica_kv_usage.labels(replica=rid).set(stats.kv_cache_usage)
                m.replica_prefix_hit.labels(replica=rid).set(stats.prefix_hit_ratio)
        for rid, model in self._exported - current:
            for gauge in (m.replica_up, m.replica_ready):
                with contextlib.suppress(KeyError):
                    gauge.remove(rid, model)
            if rid not in {r for r, _ in current}:
                for gauge in (m.replica_running, m.replica_waiting, m.replica_kv_usage,
                              m.replica_prefix_hit, m.replica_inflight_target):  # fmt: skip
                    with contextlib.suppress(KeyError):
                        gauge.remove(rid)
        self._exported = current

    def render_engine_metrics(self) -> bytes:
        return relabel_engine_metrics(dict(self.raw))

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("engine stats poll failed")
            await asyncio.sleep(self.interval_s)
