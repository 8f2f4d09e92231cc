"""An engine's load, read from vLLM's own Prometheus metrics (by the replica
that owns the engine, at each health check)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
    # LoRA adapters with requests running or waiting in the engine.
    active_adapters: tuple[str, ...] = field(default=())


# vLLM sets a new series of this gauge (value: the time) whenever the running
# or waiting adapters change, and keeps the old ones: the newest is current.
_LORA_INFO = "vllm:lora_requests_info"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _active_adapters(labels: str) -> tuple[str, ...]:
    values = dict(_LABEL.findall(labels))
    names = values.get("running_lora_adapters", "").split(",")
    names += values.get("waiting_lora_adapters", "").split(",")
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def parse_engine_metrics(text: str) -> EngineLoad:
    """The load series of a vLLM ``/metrics`` page, summed over their labels."""
    load = EngineLoad()
    newest_lora_info = -1.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name == _LORA_INFO:
            try:
                at = float(value)
            except ValueError:
                continue
            if at > newest_lora_info:
                newest_lora_info = at
                load.active_adapters = _active_adapters(name_labels)
            continue
        series = _SERIES.get(name)
        if series is None:
            continue
        try:
            setattr(load, series, getattr(load, series) + float(value))
        except ValueError:
            continue
    return load
