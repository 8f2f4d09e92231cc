"""The systemd unit for a single-server install (deploy/systemd): it runs
`seed-serve up` with the config it names, and gives a stop the time the
config's drain and the engines' grace need. That `seed-serve up` stops at
once and cleanly when the whole group is signalled, as this unit's KillMode
does, is tested end to end in tests/e2e/demo/test_stopping.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.cluster.engine_process import ENGINE_STOP_GRACE_S
from serving.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "seed-serve.service"


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries()[section] if k == key]


def test_the_unit_runs_seed_serve_up_with_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(unit_entries()) == {"Unit", "Service", "Install"}
    [command] = values("Service", "ExecStart")
    program, *args = command.split()
    assert Path(program).name == "seed-serve" and args == ["up"]
    environment = dict(v.split("=", 1) for v in values("Service", "Environment"))
    assert environment["SEED_SERVE_CONFIG"].startswith("/etc/seed-serve/")
    assert environment["SEED_SERVE_HOME"] == values("Service", "ReadWritePaths")[0]
    # `seed-serve up` reads SEED_SERVE_CONFIG when no --config is given.
    monkeypatch.setenv("SEED_SERVE_CONFIG", environment["SEED_SERVE_CONFIG"])
    assert build_parser().parse_args(["up"]).config == environment["SEED_SERVE_CONFIG"]
    assert values("Install", "WantedBy") == ["multi-user.target"]


def test_a_stop_has_the_time_a_drain_needs() -> None:
    assert values("Service", "KillMode") in (["control-group"], [])  # what the e2e test signals
    [timeout] = values("Service", "TimeoutStopSec")
    for example in ("cpu-demo.yaml", "gpu-node.yaml"):
        config = load_config(ROOT / "deploy" / "config" / example)
        assert int(timeout) > config.gateway.drain_timeout_s + ENGINE_STOP_GRACE_S, example


def _verify(unit: Path) -> list[str]:
    """What `systemd-analyze verify` finds wrong (but the program's absence:
    seed-serve is not installed under /opt here)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert _verify(UNIT) == []
    broken = tmp_path / "seed-serve.service"  # the check does find mistakes
    broken.write_text(UNIT.read_text().replace("KillMode=", "KilMode="))
    assert any("Unknown key" in line for line in _verify(broken))
