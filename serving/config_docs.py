"""The configuration reference, generated from the pydantic models (README keeps a copy
that a test holds in sync)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from serving.config import (
    AdaptersConfig,
    AdmissionConfig,
    AuditConfig,
    AuthConfig,
    AutoscalingConfig,
    ConsoleConfig,
    EngineConfig,
    GatewayConfig,
    HealthConfig,
    KvAwareRouting,
    LeastLoadedRouting,
    LimitsConfig,
    LoraConfig,
    OidcConfig,
    PrefixAffinityRouting,
    QuotaConfig,
    RayConfig,
    ReplicaGroupConfig,
    RoundRobinRouting,
    SandboxConfig,
    ServingConfig,
    SessionRouting,
    SpeculativeConfig,
    TasksConfig,
    TelemetryConfig,
    TenantMapping,
    TimeoutsConfig,
    UsageConfig,
)

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("gateway", GatewayConfig),
    ("ray", RayConfig),
    ("replica_groups[]", ReplicaGroupConfig),
    ("replica_groups[].engine", EngineConfig),
    ("replica_groups[].autoscaling", AutoscalingConfig),
    ("replica_groups[].lora", LoraConfig),
    ("replica_groups[].speculative", SpeculativeConfig),
    ("routing (policy: round_robin)", RoundRobinRouting),
    ("routing (policy: least_loaded)", LeastLoadedRouting),
    ("routing (policy: prefix_affinity, the default)", PrefixAffinityRouting),
    ("routing (policy: session)", SessionRouting),
    ("routing (policy: kv_aware)", KvAwareRouting),
    ("health", HealthConfig),
    ("timeouts", TimeoutsConfig),
    ("tasks", TasksConfig),
    ("sandbox", SandboxConfig),
    ("auth", AuthConfig),
    ("auth.oidc", OidcConfig),
    ("auth.oidc.tenants[]", TenantMapping),
    ("audit", AuditConfig),
    ("usage", UsageConfig),
    ("console", ConsoleConfig),
    ("quotas", QuotaConfig),
    ("quotas.key_defaults / quotas.tenant_defaults", LimitsConfig),
    ("admission", AdmissionConfig),
    ("telemetry", TelemetryConfig),
    ("adapters", AdaptersConfig),
]


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = str(annotation) if "[" in str(annotation) or "|" in str(annotation) else text
    return text.replace("typing.", "").replace("NoneType", "null").replace("serving.config.", "")


def _default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "required"
    if isinstance(value, BaseModel | list) and not isinstance(value, str):
        return "see below" if isinstance(value, BaseModel) else "[one group]"
    home = str(Path.home())
    if isinstance(value, str) and value.startswith(home):
        value = "~" + value[len(home) :]
    return json.dumps(value)


def config_reference() -> str:
    lines = [
        "Precedence: CLI flags > `SEED_SERVE_<SECTION>__<FIELD>` environment variables > "
        "YAML file (`--config`) > defaults. Unknown keys are errors.",
        "",
    ]
    for prefix, model in SECTIONS:
        lines += [
            f"**`{prefix}`**",
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            if name in ("engine", "key_defaults", "tenant_defaults", "autoscaling") or (
                model is ServingConfig
            ):
                continue
            description = (field.description or "").replace("|", "\\|")
            type_name = _type_name(field.annotation).replace("|", "\\|")
            lines.append(
                f"| `{name}` | `{type_name}` | `{_default(model, name)}` | {description} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
