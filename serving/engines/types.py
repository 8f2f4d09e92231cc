"""What the controller, the replicas and the gateway tell each other."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class ReplicaState(str, enum.Enum):
    PENDING = "pending"  # waiting for Ray to place the actor (resources)
    STARTING = "starting"  # engine process booting
    READY = "ready"  # serving
    UNHEALTHY = "unhealthy"  # process alive but failing health checks
    RESTARTING = "restarting"  # actor died; Ray is restarting it
    DRAINING = "draining"  # being removed: finishes its requests, takes no new ones
    FAILED = "failed"  # gave up (restarts exhausted, start-up error)
    STOPPED = "stopped"


@dataclass
class ReplicaInfo:
    """One replica as the gateway sees it. ``token`` is the engine's secret."""

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
    running: float = 0.0  # engine's running requests at the last health check
    waiting: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaInfo:
        values = dict(data)
        values["state"] = ReplicaState(values["state"])
        return cls(**values)
