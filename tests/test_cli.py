"""`seed-serve` as users run it: start-up errors, a clean stop, a gateway joining Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import yaml

from serving.ray_cluster import init_ray
from tests.conftest import TINY_MODEL
from tests.support.stack import ROOT, SeedServeProcess, free_port, tiny_config


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("seed-serve ")


def test_config_error_is_one_line_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"gateway": {"port": 70000}})
    result = run_cli("up", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seed-serve: config error: gateway.port:")
    assert "65535" in lines[0]


def test_renamed_key_fails_loudly_with_a_suggestion(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", {"replica_groups": [{"engine": {"tensor_paralel_size": 2}}]}
    )
    result = run_cli("up", "--config", str(config))
    assert result.returncode == 2
    assert "replica_groups[0].engine.tensor_paralel_size" in result.stderr
    assert "did you mean 'tensor_parallel_size'" in result.stderr


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("config", env={"SEED_SERVE_GATEWAY__MAX_N": "lots"})
    assert result.returncode == 2
    assert "gateway.max_n" in result.stderr
    assert "SEED_SERVE_GATEWAY__MAX_N" in result.stderr


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", {"gateway": {"port": 9001, "max_n": 3, "host": "0.0.0.0"}}
    )
    result = run_cli(
        "config",
        "--config",
        str(config),
        "--port",
        "9003",
        env={"SEED_SERVE_GATEWAY__PORT": "9002", "SEED_SERVE_GATEWAY__MAX_N": "5"},
    )
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["gateway"]["port"] == 9003  # CLI beats env and file
    assert effective["gateway"]["max_n"] == 5  # env beats file
    assert effective["gateway"]["host"] == "0.0.0.0"  # file beats default


def test_missing_model_path_is_reported_before_start(tmp_path: Path) -> None:
    result = run_cli("up", "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()))
    assert result.returncode == 2
    assert "replica_groups[0].engine.model" in result.stderr
    assert "does not exist" in result.stderr
    assert "Ray" not in result.stderr  # nothing was started


def test_port_in_use_is_reported_before_start(tiny_model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("up", "--model", str(tiny_model_dir), "--port", str(port))
    assert result.returncode == 2
    assert f"gateway.port: 127.0.0.1:{port} is already in use" in result.stderr


def test_incomplete_demo_model_is_never_served(tmp_path: Path) -> None:
    half_built = tmp_path / "models" / "smollm2-135m-instruct"
    half_built.mkdir(parents=True)
    (half_built / "config.json").write_text("{}")
    result = run_cli("up", "--port", str(free_port()), env={"SEED_SERVE_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "incomplete demo-model build" in result.stderr


def test_up_serves_then_stops_cleanly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Flags and env reach the running stack; SIGTERM stops every process it started."""
    port = free_port()
    config = tiny_config(tiny_model_dir, port=1, replicas=2)  # port and replicas overridden below
    stack = SeedServeProcess(
        "up",
        {**config, "gateway": {**config["gateway"], "port": port}},
        tmp_path,
        extra_args=["--replicas", "1"],
        env={"SEED_SERVE_GATEWAY__MAX_N": "2"},
    )
    try:
        stack.wait_ready()
        client = openai.OpenAI(
            base_url=stack.base_url + "/v1", api_key=stack.api_key, max_retries=0
        )
        assert client.completions.create(model=TINY_MODEL, prompt="x", max_tokens=2).choices[0].text
        assert stack.http.get(stack.base_url + "/ready").json()["replicas"] == {"tiny-0": "ready"}
        with_n3 = stack.http.post(
            stack.base_url + "/v1/completions",
            json={"model": TINY_MODEL, "prompt": "x", "n": 3, "max_tokens": 1},
        )
        assert with_n3.status_code == 400 and with_n3.json()["error"]["param"] == "n"

        started = stack.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in started if p.is_running())
        assert "vllm.entrypoints.openai.api_server" in names
        assert "raylet" in names
        began = time.monotonic()
        assert stack.stop() == 0, stack.log()[-3000:]
        # Give the kernel a moment to reap, then nothing it started may remain.
        deadline = time.monotonic() + 30
        alive = started
        while alive and time.monotonic() < deadline:
            alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.5)
        assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
        assert time.monotonic() - began < 120
        assert not (stack.home / "run" / "up.json").exists()
    finally:
        stack.kill_tree()


def test_gateway_joins_an_existing_ray_cluster(
    tiny_stack: SeedServeProcess, tmp_path: Path
) -> None:
    """`seed-serve gateway --ray-address` finds the replicas through Ray, not URLs."""
    state = tiny_stack.run_state()
    port = free_port()
    config = {
        "gateway": {"host": "127.0.0.1", "port": port},
        "ray": {"namespace": state["namespace"]},
        # The gateway uses the running controller's replicas, whatever it lists here.
        "replica_groups": [{"name": "other", "engine": {"model": "unused/model"}}],
        "auth": {"keys_file": str(tiny_stack.keys_file), "demo_key_file": None},
    }
    gateway = SeedServeProcess(
        "gateway", config, tmp_path, extra_args=["--ray-address", state["ray_address"]]
    )
    try:
        gateway.wait_ready(replicas=2, timeout_s=180)
        client = openai.OpenAI(
            base_url=gateway.base_url + "/v1", api_key=tiny_stack.api_key, max_retries=0
        )
        raw = client.completions.with_raw_response.create(
            model=TINY_MODEL, prompt="x", max_tokens=2
        )
        assert raw.headers["x-seed-serve-replica"] in {"tiny-0", "tiny-1"}
        assert raw.parse().choices[0].text
        assert gateway.stop() == 0
    finally:
        gateway.kill_tree()
    # The shared stack is untouched by the gateway leaving.
    assert tiny_stack.http.get(tiny_stack.base_url + "/ready").status_code == 200


def test_engines_refuse_anyone_but_the_gateway(tiny_stack: SeedServeProcess) -> None:
    """Every engine route, including vLLM's unguarded ones, needs the replica secret."""
    state = tiny_stack.run_state()
    init_ray(address=state["ray_address"], namespace=state["namespace"], log_to_driver=False)
    import ray  # after init_ray: joining needs Ray's auth mode set before import

    try:
        controller = ray.get_actor(state["controller_name"])
        replicas = ray.get(controller.list_replicas.remote())
    finally:
        ray.shutdown()
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["url"].startswith("http://127.0.0.1:")  # loopback only
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/invocations"),
            ("POST", "/tokenize"),
            ("GET", "/metrics"),
            ("GET", "/health"),
        ]:
            anonymous = httpx.request(method, replica["url"] + path, json={}, timeout=10)
            assert anonymous.status_code == 401, (path, anonymous.text)
            wrong = httpx.request(
                method, replica["url"] + path, json={}, headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
        allowed = httpx.get(
            replica["url"] + "/v1/models", headers={"Authorization": f"Bearer {replica['token']}"}
        )
        assert allowed.status_code == 200


def test_fim_template_that_does_not_fit_the_tokenizer_stops_start_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Starcoder's FIM tokens are not single tokens of the tiny model: start-up stops, clearly."""
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=1)
    config["replica_groups"][0]["engine"]["fim_template"] = "starcoder"
    config["replica_groups"][0]["max_restarts"] = 0
    stack = SeedServeProcess("up", config, tmp_path)
    try:
        code = stack.process.wait(timeout=600)
        log = stack.log()
        assert code == 1, log[-3000:]
        assert "engine.fim_template 'starcoder' does not fit this model's tokenizer" in log
        assert "'<fim_prefix>' is" in log
    finally:
        stack.kill_tree()
