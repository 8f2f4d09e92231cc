"""An engine's load, read from vLLM's own Prometheus metrics (by the replica
that owns the engine, at each health check)."""

from __future__ import annotations

from dataclasses import dataclass

# vLLM series -> EngineLoad field (summed over the labels vLLM puts on them).
_SERIES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:prefix_cache_queries_total": "prefix_queries",
}


@dataclass
class EngineLoad:
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0


def parse_engine_metrics(text: str) -> EngineLoad:
    """The load series of a vLLM ``/metrics`` page, summed over their labels."""
    load = EngineLoad()
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_labels, _, value = line.rpartition(" ")
        field = _SERIES.get(name_labels.split("{", 1)[0])
        if field is None:
            continue
        try:
            setattr(load, field, getattr(load, field) + float(value))
        except ValueError:
            continue
    return load
