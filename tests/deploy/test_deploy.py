"""deploy/: the container images (no Docker engine here: the Dockerfiles are
checked for the essentials) and the example configs (each one loads with the
gateway's own config model and places as its comment says)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from serving.cluster.placement import placement_plan
from serving.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_essentials(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    (base,) = [a for w, a in steps if w == "FROM"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    _, _, tag = image.partition(":")
    # Pinned: an exact version tag (digits and dots), never latest or a bare name.
    assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
    users = [a for w, a in steps if w == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    entrypoint = [a for w, a in steps if w == "ENTRYPOINT"][-1]
    assert "seed-serve" in shlex.split(entrypoint.strip("[]").replace(",", " "))[-1]
    health = [a for w, a in steps if w == "HEALTHCHECK"]
    assert health and "/health" in health[0]
    copies = " ".join(a for w, a in steps if w == "COPY")
    assert "pyproject.toml" in copies and "serving" in copies
    extra = "gpu" if dockerfile.name.endswith("gpu") else "cpu"
    assert any(f'".[{extra}]"' in a for w, a in steps if w == "RUN")
    # The user is created before it is switched to, and it is not set before the installs.
    run_index = max(i for i, (w, _) in enumerate(steps) if w == "RUN" and "pip install" in _)
    user_index = next(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert run_index < user_index
    assert "bubblewrap" in dockerfile.read_text()  # the sandbox for generated code


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)


@pytest.mark.parametrize("example", sorted((ROOT / "deploy" / "config").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_example_configs_load(example: Path) -> None:
    config = load_config(example, env={})
    for group in config.replica_groups:
        assert placement_plan(group).bundles


def test_multi_node_example_spreads_tensor_and_pipeline_parallel_replicas() -> None:
    config = load_config(ROOT / "deploy" / "config" / "multi-node-tp.yaml", env={})
    assert config.ray.address and config.ray.address.startswith("ray://")
    plans = {g.name: placement_plan(g) for g in config.replica_groups}
    tp = plans["seed-coder-tp8"]
    assert tp.strategy == "STRICT_PACK" and tp.totals()["GPU"] == 8
    across = plans["seed-coder-tp8-pp2"]
    assert across.strategy == "PACK" and across.totals()["GPU"] == 16
    assert config.quotas.backend == "redis" and config.telemetry.backend == "redis"


@pytest.mark.parametrize("example", sorted((ROOT / "deploy" / "config").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_seed_coder_is_served_under_a_name_ide_clients_recognise(example: Path) -> None:
    """Continue (openai provider) picks the FIM template by the model's id:
    Seed-Coder's when the id holds "seed" and "coder". Every example serving
    Seed-Coder names it so, and says its FIM format."""
    config = load_config(example, env={})
    for group in config.replica_groups:
        if "seed-coder" in group.engine.model.lower():
            name = group.engine.served_model_name.lower()
            assert "seed" in name and "coder" in name, name
            assert group.engine.fim_template == "seed-coder"
