"""Config of team adapters: LoRA on replica groups, where adapters and the
teams' training data live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from serving.config._base import Strict
from serving.paths import seed_serve_home

# The ranks vLLM's LoRA kernels take (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LoraConfig(Strict):
    """LoRA adapters on a replica group's engines, loaded and unloaded at run
    time through vLLM's adapter API (never by restarting an engine)."""

    enabled: bool = Field(
        default=False, description="Start the group's engines with LoRA (vLLM --enable-lora)."
    )
    max_loras: int = Field(
        default=2, ge=1, le=256, description="Adapters one engine batch may mix (--max-loras)."
    )
    max_lora_rank: int = Field(
        default=16,
        description=f"Largest adapter rank the engines take (--max-lora-rank; one of "
        f"{', '.join(map(str, LORA_RANKS))}). An adapter of a higher rank is refused when added.",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Adapters each replica keeps loaded (--max-cpu-loras, >= max_loras; null: "
        "max_loras). Loading one more evicts the least recently used.",
    )
    min_resident_s: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="An adapter used within this many seconds is never evicted for another: "
        "two busy adapters on a full replica take turns at most this often, instead of "
        "evicting each other on every request (the newcomer waits in the queue).",
    )

    load_bound: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="Routing: a replica holding the adapter gets its requests while its load "
        "is at most this x the group's average; beyond, the adapter is loaded on a less "
        "loaded replica.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _known_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(f"vLLM takes ranks {', '.join(map(str, LORA_RANKS))}")
        return value

    @model_validator(mode="after")
    def _cpu_holds_a_batch(self) -> LoraConfig:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        return self

    @property
    def capacity(self) -> int:
        """Adapters one replica keeps loaded at once."""
        return self.max_cpu_loras or self.max_loras


class AdaptersConfig(Strict):
    """Where team adapters are registered and stored, and where the teams'
    training data (accepted suggestions of tenants that opted in) is kept."""

    registry_file: str = Field(
        default_factory=lambda: str(seed_serve_home() / "adapters" / "registry.yaml"),
        min_length=1,
        description="The adapter registry (`seed-serve adapters` edits it; reloaded on change). "
        "On Kubernetes: on the shared adapter volume.",
    )
    roots: list[str] = Field(
        default_factory=lambda: [str(seed_serve_home() / "adapters")],
        description="Folders adapters may be loaded from (a local folder, or the shared "
        "volume every replica mounts). An adapter anywhere else is refused.",
    )
    data_dir: str = Field(
        default_factory=lambda: str(seed_serve_home() / "team-data"),
        min_length=1,
        description="Per-tenant training data of tenants with `training_data: collect` "
        "(append-only files; several gateways may share the folder).",
    )
    retention_days: int | None = Field(
        default=180,
        ge=1,
        le=36_500,
        description="Kept examples older than this are dropped (null: kept until deleted).",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, le=3600, description="How often the registry file is checked."
    )
    training_data: Literal["off", "collect"] = Field(
        default="off",
        description="Default of tenants that do not say (`tenants.<name>.training_data` in the "
        "keys file): off keeps nothing.",
    )

    @field_validator("roots")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        import os

        expanded = [os.path.expanduser(root) for root in value]
        bad = [root for root in expanded if not os.path.isabs(root)]
        if bad:
            raise ValueError(f"roots must be absolute paths: {bad}")
        return expanded
