"""The whole configuration of one deployment."""

from __future__ import annotations

from pydantic import Field, field_validator

from serving.config._adapters import AdaptersConfig
from serving.config._admission import (
    LANES,
    AdmissionConfig,
    AuditConfig,
    AuthConfig,
    QuotaConfig,
    UsageConfig,
)
from serving.config._base import Strict
from serving.config._engines import RayConfig, ReplicaGroupConfig
from serving.config._gateway import (
    ConsoleConfig,
    GatewayConfig,
    SandboxConfig,
    TasksConfig,
    TelemetryConfig,
)
from serving.config._scaling import (
    HealthConfig,
    PrefixAffinityRouting,
    RoutingConfig,
    TimeoutsConfig,
)


class ServingConfig(Strict):
    """The whole configuration of one Seed Serve deployment."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The HTTP gateway.")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster.")
    routing: RoutingConfig = Field(
        default_factory=lambda: PrefixAffinityRouting(policy="prefix_affinity"),
        description="How a replica is chosen: round_robin, least_loaded, prefix_affinity "
        "(default: code completions of one file share long prefixes), session.",
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="Replica health checks.")
    timeouts: TimeoutsConfig = Field(
        default_factory=TimeoutsConfig, description="Engine timeouts and retries."
    )
    tasks: TasksConfig = Field(
        default_factory=TasksConfig, description="Code completion, repair, test generation."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys, allow-lists.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="The audit log.")
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, description="The web console (/console)."
    )
    usage: UsageConfig = Field(
        default_factory=UsageConfig, description="Usage records per day, tenant, user and task."
    )
    quotas: QuotaConfig = Field(default_factory=QuotaConfig, description="Rate limits.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Admission queue, lanes, fairness."
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="Suggestion feedback (shown/accepted)."
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig, description="Isolated execution of code."
    )
    adapters: AdaptersConfig = Field(
        default_factory=AdaptersConfig,
        description="Team adapters: registry, storage roots, teams' training data.",
    )
    replica_groups: list[ReplicaGroupConfig] = Field(
        default_factory=lambda: [ReplicaGroupConfig()],
        min_length=1,
        description="Engine replica groups; several groups may serve different models.",
    )

    @field_validator("replica_groups")
    @classmethod
    def _unique_names(cls, groups: list[ReplicaGroupConfig]) -> list[ReplicaGroupConfig]:
        seen: set[str] = set()
        for group in groups:
            if group.name in seen:
                raise ValueError(f"group name {group.name!r} is used twice")
            seen.add(group.name)
        if sum(group.replicas for group in groups) < 1:
            raise ValueError("at least one replica is needed")
        served: dict[str, set[str]] = {}
        for group in groups:
            served.setdefault(group.engine.served_model_name, set()).update(
                LANES if group.lanes is None else group.lanes
            )
        for model, lanes in served.items():
            missing = [lane for lane in LANES if lane not in lanes]
            if missing:
                raise ValueError(
                    f"no group of model {model!r} serves the lanes {', '.join(missing)} "
                    "(replica_groups[].lanes)"
                )
        return groups

    def max_lora_rank(self, model: str) -> int | None:
        """The largest adapter rank the engines serving ``model`` take (None: no
        group serves it with LoRA)."""
        ranks = [
            g.lora.max_lora_rank
            for g in self.replica_groups
            if g.lora.enabled and g.engine.served_model_name == model
        ]
        return max(ranks) if ranks else None

    def models(self) -> list[str]:
        """Served model names, in config order, without repeats."""
        return list(dict.fromkeys(g.engine.served_model_name for g in self.replica_groups))
