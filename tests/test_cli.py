"""`seed-serve` as users run it: its version, the errors it reports before
starting anything, and what it prints once ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from serving.config import ServingConfig
from serving.runtime import ready_snippet
from tests.support.stack import ROOT, free_port


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


def test_the_ready_snippet_shows_the_console_and_how_to_sign_in() -> None:
    embedded = ServingConfig()
    snippet = ready_snippet(embedded, [], "sk-seed-x")
    assert "Console: http://127.0.0.1:8000/console" in snippet
    assert "--role admin" in snippet  # no identity provider: an admin key signs in
    sso = ServingConfig.model_validate(
        {"auth": {"oidc": {"issuer": "https://idp.example", "client_id": "seed-serve"}}}
    )
    assert "with your company account" in ready_snippet(sso, [], "sk-seed-x")
    off = ServingConfig.model_validate({"console": {"enabled": False}})
    assert "Console" not in ready_snippet(off, [], "sk-seed-x")


def test_a_bad_key_option_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    """Not a traceback; and the keys file is left as it was."""
    home = {"SEED_SERVE_HOME": str(tmp_path)}
    created = run_cli("keys", "create", "--tenant", "team", "--name", "dev", env=home)
    assert created.returncode == 0, created.stderr
    keys_file = tmp_path / "keys.yaml"
    before = keys_file.read_text()
    for args, flag in (
        (["--tenant", "", "--name", "x"], "--tenant"),
        (["--tenant", "team", "--name", "x", "--rpm", "-5"], "--rpm"),
        (["--tenant", "team", "--name", "x" * 200], "--name"),
    ):
        result = run_cli("keys", "create", *args, env=home)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"seed-serve: config error: {flag}:"), lines
    assert keys_file.read_text() == before


def test_a_refused_adapter_is_not_said_to_be_registered(tmp_path: Path) -> None:
    """(The embedded default serves no adapters: the warning that says so
    comes only once an adapter was registered.)"""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = run_cli(
        "adapters", "add", "stray", "--base", "smollm2-135m-demo", "--path", str(outside),
        "--tenant", "house", env={"SEED_SERVE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the configured adapter roots" in lines[0], lines
