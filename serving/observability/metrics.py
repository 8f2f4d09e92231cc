"""Every Prometheus metric of the gateway, declared in one place.

Names start with ``seed_serve_``; counters end in ``_total``, durations are
``_seconds`` histograms with buckets fit for code completion (fine-grained
from 5 ms). Labels are bounded: task, model, adapter (registered team adapters; empty
for the base model), tenant (configured tenants),
lane, status, replica, reason, language, event, outcome; never users or keys.
Each gateway app owns its own registry (no module-level state). The task
label's values are the tasks of the gateway's route table (and ``other``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.engine_link.replica_info import ENGINE_UP_STATES, ReplicaInfo, ReplicaState

LATENCY_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
)  # fmt: skip

REJECTION_REASONS = ("auth", "forbidden", "quota", "backpressure", "invalid", "draining")
CANCEL_REASONS = ("disconnect", "superseded", "timeout")
SUGGESTION_EVENTS = ("shown", "accepted", "dismissed")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._replicas_exported: set[tuple[str, str]] = set()
        r = self.registry
        self.requests = Counter(
            "seed_serve_requests_total",
            "Requests answered.",
            ["task", "model", "adapter", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "seed_serve_request_duration_seconds",
            "Whole request time, first byte in to last byte out.",
            ["task", "model", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "seed_serve_time_to_first_token_seconds",
            "Time to the first byte of the answer (streams: the first token).",
            ["task", "model", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "seed_serve_time_per_output_token_seconds",
            "Generation time per output token after the first.",
            ["task", "model", "adapter"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "seed_serve_prompt_tokens_total", "Prompt tokens.", ["tenant", "task"], registry=r
        )
        self.completion_tokens = Counter(
            "seed_serve_completion_tokens_total",
            "Completion tokens.",
            ["tenant", "task"],
            registry=r,
        )
        self.rejections = Counter(
            "seed_serve_rejections_total",
            "Requests refused before any engine work.",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "seed_serve_admission_queue_depth",
            "Requests waiting in the admission queue.",
            ["lane"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "seed_serve_admission_queue_wait_seconds",
            "Time a request waited for an engine slot.",
            ["lane"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "seed_serve_inflight_requests", "Requests being answered now.", registry=r
        )
        self.cancellations = Counter(
            "seed_serve_cancellations_total",
            "Requests cancelled before they finished.",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "seed_serve_retries_total",
            "Requests retried on another replica before any token.",
            registry=r,
        )
        self.failovers = Counter(
            "seed_serve_failovers_total",
            "Replica failures met by in-flight requests.",
            ["replica"],
            registry=r,
        )
        self.replica_up = Gauge(
            "seed_serve_replica_up",
            "1 if the replica's engine process is alive.",
            ["replica", "model"],
            registry=r,
        )
        self.replica_ready = Gauge(
            "seed_serve_replica_ready",
            "1 if the replica takes traffic.",
            ["replica", "model"],
            registry=r,
        )
        self.replica_running = Gauge(
            "seed_serve_replica_running_requests",
            "Requests the engine is running.",
            ["replica"],
            registry=r,
        )
        self.replica_waiting = Gauge(
            "seed_serve_replica_waiting_requests",
            "Requests waiting in the engine.",
            ["replica"],
            registry=r,
        )
        self.replica_kv_usage = Gauge(
            "seed_serve_replica_kv_cache_usage_ratio",
            "KV-cache blocks in use (0-1).",
            ["replica"],
            registry=r,
        )
        self.replica_prefix_hit = Gauge(
            "seed_serve_replica_prefix_cache_hit_ratio",
            "Prefix-cache hits / queries since the engine started (0-1).",
            ["replica"],
            registry=r,
        )
        self.replica_inflight_target = Gauge(
            "seed_serve_replica_inflight_target",
            "The gateway's in-flight target.",
            ["replica"],
            registry=r,
        )
        self.sandbox_runs = Counter(
            "seed_serve_sandbox_executions_total",
            "Sandbox runs by outcome.",
            ["outcome"],
            registry=r,
        )
        self.suggestions = Counter(
            "seed_serve_suggestions_total",
            "Suggestion events reported by clients.",
            ["task", "tenant", "language", "event"],
            registry=r,
        )
        self.accepted_chars = Counter(
            "seed_serve_suggestion_accepted_chars_total",
            "Characters of suggestions accepted.",
            ["task", "tenant", "language"],
            registry=r,
        )
        self.quota_store_errors = Counter(
            "seed_serve_quota_store_errors_total",
            "Quota store (Redis) failures.",
            ["mode"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            "seed_serve_audit_write_errors_total",
            "Audit lines that could not be written.",
            registry=r,
        )
        self.adapter_loads = Counter(
            "seed_serve_adapter_loads_total",
            "Team adapters loaded onto a replica at run time, by result (loaded, failed).",
            ["adapter", "result"],
            registry=r,
        )
        self.adapter_evictions = Counter(
            "seed_serve_adapter_evictions_total",
            "Team adapters unloaded from a replica to make room for another.",
            ["adapter"],
            registry=r,
        )
        self.adapter_load_seconds = Histogram(
            "seed_serve_adapter_load_seconds",
            "Time to load a team adapter onto a replica.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_adapters = Gauge(
            "seed_serve_replica_adapters",
            "Team adapters resident on the replica.",
            ["replica"],
            registry=r,
        )
        self.replica_kv_index_blocks = Gauge(
            "seed_serve_replica_kv_index_blocks",
            "KV-cache blocks of the replica this gateway's kv_aware index knows of.",
            ["replica"],
            registry=r,
        )
        self.replica_kv_events_live = Gauge(
            "seed_serve_replica_kv_events_live",
            "1 while this gateway follows the replica's KV-cache events (kv_aware routing).",
            ["replica"],
            registry=r,
        )
        self.kv_routing = Counter(
            "seed_serve_kv_routing_total",
            "kv_aware routing decisions: cached_prefix (to the replica holding the longest "
            "cached prefix), or prefix_affinity because of no_events (a replica's events are "
            "missing), no_tokens (e.g. chat) or nothing_cached.",
            ["outcome"],
            registry=r,
        )
        self.keys_reloads = Counter(
            "seed_serve_keys_reloads_total", "Keys file reloads.", ["result"], registry=r
        )

    def labelled(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the label sets are bounded,
        and looking a child up again on every request is measurable work."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def export_kv_index(self, blocks: dict[str, int], live: dict[str, bool]) -> None:
        """The kv_aware index's gauges, per replica it follows (each refresh)."""
        for rid, count in blocks.items():
            self.replica_kv_index_blocks.labels(replica=rid).set(count)
            self.replica_kv_events_live.labels(replica=rid).set(1 if live.get(rid) else 0)

    def export_replicas(self, replicas: list[ReplicaInfo], is_ready: Callable[[str], bool]) -> None:
        """The per-replica gauges from the replica list (each refresh); the
        series of replicas that are gone are dropped."""
        current: set[tuple[str, str]] = set()
        for replica in replicas:
            rid = replica.replica_id
            current.add((rid, replica.model))
            self.replica_up.labels(replica=rid, model=replica.model).set(
                1 if replica.state in ENGINE_UP_STATES else 0
            )
            self.replica_ready.labels(replica=rid, model=replica.model).set(
                1 if is_ready(rid) else 0
            )
            if replica.state is ReplicaState.READY:
                self.replica_running.labels(replica=rid).set(replica.running)
                self.replica_waiting.labels(replica=rid).set(replica.waiting)
                self.replica_kv_usage.labels(replica=rid).set(replica.kv_cache_usage)
                self.replica_prefix_hit.labels(replica=rid).set(replica.prefix_hit_ratio)
                if replica.lora_capacity:
                    self.replica_adapters.labels(replica=rid).set(len(replica.adapters))
        present = {rid for rid, _ in current}
        for rid, model in self._replicas_exported - current:
            for gauge in (self.replica_up, self.replica_ready):
                with contextlib.suppress(KeyError):
                    gauge.remove(rid, model)
            if rid not in present:
                for gauge in (self.replica_running, self.replica_waiting, self.replica_kv_usage,
                              self.replica_prefix_hit, self.replica_inflight_target,
                              self.replica_adapters, self.replica_kv_index_blocks,
                              self.replica_kv_events_live):  # fmt: skip
                    with contextlib.suppress(KeyError):
                        gauge.remove(rid)
        self._replicas_exported = current

    def render(self) -> bytes:
        return generate_latest(self.registry)
