"""Seed Serve's configuration: one YAML file < ``SEED_SERVE_*`` env < CLI flags.

Every field has a description and a validator; unknown (renamed, misspelled)
keys fail loudly. The pydantic defaults *are* the embedded default
(``deploy/config/cpu-demo.yaml`` spells them out).

A leaf: it imports only ``serving.errors``, ``serving.paths`` and
``serving.fim_templates``, so every layer, the Ray actors included, can read it.
"""

from serving.config._adapters import LORA_RANKS, AdaptersConfig, LoraConfig
from serving.config._admission import (
    LANES,
    AdmissionConfig,
    AuditConfig,
    AuthConfig,
    Lane,
    LimitsConfig,
    OidcConfig,
    QuotaConfig,
    TenantMapping,
    UsageConfig,
    check_cidrs,
)
from serving.config._engines import (
    MANAGED_ENGINE_ARGS,
    EngineConfig,
    RayConfig,
    ReplicaGroupConfig,
)
from serving.config._gateway import (
    ConsoleConfig,
    GatewayConfig,
    SandboxConfig,
    TasksConfig,
    TelemetryConfig,
)
from serving.config._loading import ENV_PREFIX, dump_config, load_config
from serving.config._model import ServingConfig
from serving.config._scaling import (
    AutoscalingConfig,
    HealthConfig,
    KvAwareRouting,
    LeastLoadedRouting,
    PrefixAffinityRouting,
    RoundRobinRouting,
    RoutingConfig,
    SessionRouting,
    TimeoutsConfig,
)
from serving.config._speculative import IGNORED_BY_SPECULATION, SpeculativeConfig

__all__ = [
    "ENV_PREFIX",
    "IGNORED_BY_SPECULATION",
    "LANES",
    "LORA_RANKS",
    "MANAGED_ENGINE_ARGS",
    "AdaptersConfig",
    "AdmissionConfig",
    "AuditConfig",
    "AuthConfig",
    "AutoscalingConfig",
    "ConsoleConfig",
    "EngineConfig",
    "GatewayConfig",
    "HealthConfig",
    "KvAwareRouting",
    "Lane",
    "LeastLoadedRouting",
    "LimitsConfig",
    "LoraConfig",
    "OidcConfig",
    "PrefixAffinityRouting",
    "QuotaConfig",
    "RayConfig",
    "ReplicaGroupConfig",
    "RoundRobinRouting",
    "RoutingConfig",
    "SandboxConfig",
    "ServingConfig",
    "SessionRouting",
    "SpeculativeConfig",
    "TasksConfig",
    "TelemetryConfig",
    "TenantMapping",
    "TimeoutsConfig",
    "UsageConfig",
    "check_cidrs",
    "dump_config",
    "load_config",
]
