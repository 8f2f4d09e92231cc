"""The configuration model: defaults, precedence, validation, examples, docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from serving.cluster.engine_process import engine_command, engine_environment
from serving.config import (
    EngineConfig,
    GatewayConfig,
    RayConfig,
    ReplicaGroupConfig,
    ServingConfig,
    load_config,
)
from serving.config_docs import config_reference
from serving.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "config"


def test_cpu_demo_example_is_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEED_SERVE_HOME", raising=False)  # the file names ~/.cache/seed-serve
    assert load_config(EXAMPLES / "cpu-demo.yaml") == load_config(None)


def test_gpu_node_example_serves_seed_coder_on_eight_gpus() -> None:
    config = load_config(EXAMPLES / "gpu-node.yaml")
    completion, speculating = config.replica_groups
    for group in (completion, speculating):
        assert group.engine.model == "ByteDance-Seed/Seed-Coder-8B-Base"
        assert group.engine.device == "cuda"
        assert group.engine.dtype == "bfloat16"
    assert sum(g.replicas * g.engine.gpus_per_replica for g in config.replica_groups) == 8
    assert config.ray.num_gpus == 8
    # Repairs and tests speculate (measured 2.3-3.2x on CPU), completions do not.
    assert (completion.lanes, completion.speculative.method) == (["completion"], "off")
    assert (speculating.lanes, speculating.speculative.method) == (["repair", "tests"], "ngram")


@pytest.mark.parametrize(
    "model", [ServingConfig, GatewayConfig, RayConfig, ReplicaGroupConfig, EngineConfig]
)
def test_every_field_is_described(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description and len(field.description) > 10, f"{model.__name__}.{name}"


def test_env_overrides_file_and_reaches_lists(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gateway: {port: 9000}\nreplica_groups: [{name: a, replicas: 1}]\n")
    config = load_config(
        path,
        env={
            "SEED_SERVE_GATEWAY__PORT": "9100",
            "SEED_SERVE_REPLICA_GROUPS__0__REPLICAS": "3",
            "SEED_SERVE_REPLICA_GROUPS__0__ENGINE__EXTRA_ARGS": "{enforce-eager: true}",
            "SEED_SERVE_HOME": "/not/config",  # no "__": not a config variable
        },
    )
    assert config.gateway.port == 9100
    assert config.replica_groups[0].replicas == 3
    assert config.replica_groups[0].engine.extra_args == {"enforce-eager": True}


def test_env_can_seed_defaults_of_a_missing_section() -> None:
    config = load_config(None, env={"SEED_SERVE_REPLICA_GROUPS__0__ENGINE__MAX_MODEL_LEN": "4096"})
    assert config.replica_groups[0].engine.max_model_len == 4096
    assert config.replica_groups[0].name == "demo"


def test_cli_overrides_env() -> None:
    config = load_config(
        None, env={"SEED_SERVE_GATEWAY__PORT": "9100"}, overrides=[("gateway.port", "9200")]
    )
    assert config.gateway.port == 9200


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"gateway": {"port": 0}}, "gateway.port", "greater than or equal to 1"),
        ({"gateway": {"prot": 1}}, "gateway.prot", "did you mean 'port'"),
        ({"replica_groups": []}, "replica_groups", "at least 1"),
        ({"replica_groups": [{"name": "a"}, {"name": "a"}]}, "replica_groups", "used twice"),
        ({"replica_groups": [{"replicas": 0}]}, "replica_groups", "at least one replica"),
        ({"replica_groups": [{"name": "Bad_Name"}]}, "replica_groups[0].name", "pattern"),
        (
            {"replica_groups": [{"engine": {"extra_args": {"port": 1}}}]},
            "replica_groups[0].engine.extra_args",
            "set by Seed Serve",
        ),
        (
            {"replica_groups": [{"engine": {"tensor_parallel_size": 2}}]},
            "replica_groups[0].engine",
            "device: cuda",
        ),
        (
            {"replica_groups": [{"engine": {"dtype": "fp8"}}]},
            "replica_groups[0].engine.dtype",
            "float32",
        ),
        ({"ray": {"num_cpus": -1}}, "ray.num_cpus", "greater than or equal to 1"),
        (
            {"replica_groups": [{"engine": {"cpu_affinity": [[0], []]}}]},
            "replica_groups[0].engine.cpu_affinity",
            "give each replica at least one core",
        ),
        (
            {"replica_groups": [{"engine": {"cpu_affinity": [[0], [4096]]}}]},
            "replica_groups[0].engine.cpu_affinity",
            "cores [4096] do not exist here",
        ),
        (
            {"replica_groups": [{"engine": {"cpu_affinity": [0, [1]]}}]},
            "replica_groups[0].engine.cpu_affinity[1]",
            "valid integer",
        ),
    ],
)
def test_invalid_config_names_the_field(
    tmp_path: Path, raw: dict[str, object], field: str, fragment: str
) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field
    assert fragment in caught.value.problem


def test_cpu_affinity_for_every_replica_or_one_list_each() -> None:
    shared = EngineConfig(cpu_affinity=[0])
    assert [shared.cores_of(i) for i in range(3)] == [[0], [0], [0]]
    assert EngineConfig().cores_of(1) is None  # all cores
    each = EngineConfig(cpu_affinity=[[0], [0, 1]])
    # Replica i gets list i, round robin past the end (a group scaled beyond its lists).
    assert [each.cores_of(i) for i in range(4)] == [[0], [0, 1], [0], [0, 1]]


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_engine_command_sets_what_the_gateway_relies_on(tmp_path: Path) -> None:
    engine = EngineConfig(
        model=str(tmp_path),
        served_model_name="m",
        max_model_len=4096,
        max_num_seqs=32,
        extra_args={"enforce-eager": True, "swap_space": 2, "disable-log-stats": False},
    )
    argv = engine_command(engine, host="127.0.0.1", port=1234)
    joined = " ".join(argv)
    assert "--scheduling-policy priority" in joined
    assert "--enable-prefix-caching" in argv
    assert "--middleware serving.cluster.engine_guard.EngineGuard" in joined
    assert "--host 127.0.0.1 --port 1234" in joined
    assert "--max-model-len 4096" in joined and "--max-num-seqs 32" in joined
    assert "--enforce-eager" in argv and "--swap-space 2" in joined
    assert "--disable-log-stats" not in argv
    assert "--gpu-memory-utilization" not in argv  # CPU engine
    env = engine_environment(engine, token="secret", base={"PATH": "/bin"})
    assert env["SEED_SERVE_ENGINE_TOKEN"] == "secret"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "secret" not in joined  # the secret never shows in `ps`


def test_gpu_engine_command() -> None:
    engine = EngineConfig(
        model="ByteDance-Seed/Seed-Coder-8B-Base",
        device="cuda",
        dtype="bfloat16",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
    )
    argv = " ".join(engine_command(engine, host="10.0.0.5", port=9))
    assert "--model ByteDance-Seed/Seed-Coder-8B-Base" in argv
    assert "--tensor-parallel-size 2" in argv
    assert "--gpu-memory-utilization 0.85" in argv
    assert "--dtype bfloat16" in argv


def test_readme_configuration_reference_is_in_sync() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", readme, re.S
    )
    assert match, "README lacks the generated configuration reference block"
    assert match.group(1) == config_reference(), (
        "README's configuration reference is stale: paste `seed-serve config --reference`"
    )


def test_reference_covers_every_config_section() -> None:
    from serving.config_docs import SECTIONS

    documented = {prefix.split(" ")[0].split(".")[0].removesuffix("[]") for prefix, _ in SECTIONS}
    assert set(ServingConfig.model_fields) <= documented


@pytest.mark.parametrize(
    ("overrides", "env"),
    [
        ([("routing.kv_weight", "0.5"), ("routing.policy", "least_loaded")], {}),
        (
            [],
            {"SEED_SERVE_ROUTING__KV_WEIGHT": "0.5", "SEED_SERVE_ROUTING__POLICY": "least_loaded"},
        ),
    ],
)
def test_switching_the_routing_policy_by_flag_or_env(
    overrides: list[tuple[str, str]], env: dict[str, str]
) -> None:
    """The default policy's own fields do not follow a switch to another policy."""
    config = load_config(None, env=env, overrides=overrides)
    assert config.routing.policy == "least_loaded"
    assert config.routing.kv_weight == 0.5  # type: ignore[union-attr]
    plain = load_config(None, overrides=[("routing.policy", "round_robin")])
    assert plain.routing.policy == "round_robin"
    # A field the new policy lacks is still an error, named.
    with pytest.raises(ConfigError, match="routing"):
        load_config(None, overrides=[("routing.policy", "round_robin"), ("routing.kv_weight", "1")])


def test_joining_ray_retries_until_the_head_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """In Kubernetes the gateway may start before the Ray head: it keeps trying."""
    import types

    import ray

    from serving.errors import StartupError
    from serving.ray_cluster import init_ray

    attempts: list[dict[str, object]] = []

    def flaky_init(**kwargs: object) -> object:
        attempts.append(kwargs)
        if len(attempts) < 3:
            raise ConnectionError("head not up yet")
        return types.SimpleNamespace(address_info={"address": "head:6379"})

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr("serving.ray_cluster.time.sleep", lambda _: None)
    assert init_ray(namespace="n", address="head:6379", connect_timeout_s=60) == {
        "address": "head:6379"
    }
    assert len(attempts) == 3 and attempts[0]["address"] == "head:6379"
    attempts.clear()
    with pytest.raises(StartupError, match="could not start or join Ray"):
        init_ray(namespace="n", address="head:6379", connect_timeout_s=0)
    assert len(attempts) == 1


def test_lora_groups_start_engines_with_runtime_adapters(tmp_path: Path) -> None:
    from serving.config import LoraConfig

    engine = EngineConfig(model=str(tmp_path), served_model_name="m")
    lora = LoraConfig(enabled=True, max_loras=2, max_lora_rank=8, max_cpu_loras=4)
    joined = " ".join(engine_command(engine, host="127.0.0.1", port=1, lora=lora))
    assert "--enable-lora --max-loras 2 --max-lora-rank 8 --max-cpu-loras 4" in joined
    env = engine_environment(engine, token="t", base={}, lora=lora)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    off = LoraConfig()
    assert "--enable-lora" not in engine_command(engine, host="127.0.0.1", port=1, lora=off)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_environment(
        engine, token="t", base={}, lora=off
    )
    assert LoraConfig(enabled=True, max_loras=3).capacity == 3
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        LoraConfig(max_loras=4, max_cpu_loras=2)
    with pytest.raises(ValidationError, match="vLLM takes ranks"):
        LoraConfig(max_lora_rank=12)
    with pytest.raises(ValidationError, match="set by Seed Serve"):
        EngineConfig(extra_args={"enable-lora": True})
