"""Engine load, read from each engine's own Prometheus metrics, off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp

from serving.engines.registry import ReplicaRegistry

logger = logging.getLogger("seed_serve.stats")

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


class EngineStatsPoller:
    def __init__(
        self, registry: ReplicaRegistry, session: aiohttp.ClientSession | None, interval_s: float
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._session = session
        self.stats: dict[str, EngineStats] = {}
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
                        self.stats[replica_id] = parse_engine_metrics(await response.text())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                logger.debug("no stats from %s: %s", replica_id, exc)

        await asyncio.gather(*(one(r.url, r.token, r.replica_id) for r in ready))
        known = {r.replica_id for r in self.registry.all()}
        for gone in set(self.stats) - known:
            del self.stats[gone]

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("engine stats poll failed")
            await asyncio.sleep(self.interval_s)
