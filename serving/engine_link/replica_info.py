"""What the controller, the replicas and the gateways tell each other about a replica."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

# Where an engine's guard relays its KV-cache events (serving/cluster/kv_events.py)
# and the gateway's kv_aware index reads them (serving/upstream/kv_index.py).
KV_EVENTS_PATH = "/seed-serve/kv-events"


class ReplicaState(str, enum.Enum):
    PENDING = "pending"  # waiting for Ray to place the actor (resources)
    STARTING = "starting"  # engine process booting
    READY = "ready"  # serving
    UNHEALTHY = "unhealthy"  # process alive but failing health checks
    RESTARTING = "restarting"  # actor died; Ray is restarting it
    DRAINING = "draining"  # being removed: finishes its requests, takes no new ones
    FAILED = "failed"  # gave up (restarts exhausted, start-up error)
    STOPPED = "stopped"


# The engine process is alive in these states (it may still be loading, or draining).
ENGINE_UP_STATES = frozenset(
    {ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.DRAINING}
)


def adapter_load_failed(message: str, evicted: list[str] | None = None) -> dict[str, Any]:
    """A replica's answer to "make this adapter resident" that failed."""
    return {"status": "failed", "evicted": evicted or [], "load_s": 0.0, "message": message}


@dataclass
class ReplicaInfo:
    """One replica as the gateway sees it. ``token`` is the engine's secret.

    The load fields are the engine's own metrics as the replica read them at
    its last health check: the one place engine load is observed (the
    controller publishes them, every gateway reads them with the replica list).
    """

    replica_id: str
    group: str
    model: str
    state: ReplicaState
    url: str = ""
    token: str = field(default="", repr=False)
    max_model_len: int | None = None
    has_chat_template: bool = False
    fim_template: str = "none"
    engine_pid: int | None = None
    node_ip: str = ""
    log_path: str = ""
    message: str = ""
    running: float = 0.0  # requests the engine runs
    waiting: float = 0.0  # requests waiting in the engine
    kv_cache_usage: float = 0.0  # KV-cache blocks in use, 0-1
    prefix_hits: float = 0.0  # prefix-cache hit tokens since the engine started
    prefix_queries: float = 0.0  # prefix-cache queried tokens since the engine started
    # Team adapters (replica_groups[].lora): how many it keeps loaded (0: no
    # LoRA), how long one must have been idle to be evicted, the routing load
    # bound, and the resident ones: [{"name", "idle_s"}], least recently used first.
    lora_capacity: int = 0
    lora_min_resident_s: float = 0.0
    lora_load_bound: float = 1.5
    adapters: list[dict[str, Any]] = field(default_factory=list)
    # The engine's speculative decoding method ("off": none), and the
    # admission lanes its group serves (None: all).
    speculative: str = "off"
    lanes: list[str] | None = None
    # Whether its engine publishes KV-cache events (GET /seed-serve/kv-events).
    kv_events: bool = False
    # The token ids its engine puts before every prompt (BOS), when kv_events.
    prompt_prefix_ids: list[int] | None = None

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def prefix_hit_ratio(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaInfo:
        values = dict(data)
        values["state"] = ReplicaState(values["state"])
        return cls(**values)
