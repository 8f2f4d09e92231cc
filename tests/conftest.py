"""Shared, expensive fixtures: engines start once per session (40-170 s each here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from serving.paths import demo_model_dir, seed_serve_home
from serving.tiny_model import build_tiny_model
from tests.support.stack import ENGINE_CORES, SeedServeProcess, free_port, tiny_config

TINY_MODEL = "tiny-llama"
DEMO_MODEL = "smollm2-135m-demo"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama with Seed-Coder's FIM tokens (built once, cached)."""
    return build_tiny_model(seed_serve_home() / "test-models" / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_stack(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with two tiny replicas on real local Ray, over real HTTP."""
    stack = SeedServeProcess(
        "up",
        tiny_config(tiny_model_dir, port=free_port(), replicas=2),
        tmp_path_factory.mktemp("tiny-stack"),
    )
    try:
        stack.wait_ready(replicas=2)
        yield stack
    finally:
        code = stack.stop()
        stack.kill_tree()
        assert code == 0, stack.log()[-3000:]


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with the real demo model (SmolLM2-135M) on CPU."""
    model = demo_model_dir()
    if not (model / ".seed-serve-complete").exists():
        pytest.fail(f"demo model missing at {model}: `make test` builds it (seed-serve demo-model)")
    config = {
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "ray": {"num_cpus": 2, "namespace": "test-demo"},
        "replica_groups": [
            {
                "name": "demo",
                "replicas": 1,
                "engine": {
                    "model": str(model),
                    "served_model_name": DEMO_MODEL,
                    "max_model_len": 2048,
                    "cpu_kv_cache_gib": 1,
                    "cpu_affinity": ENGINE_CORES,
                },
            }
        ],
    }
    stack = SeedServeProcess("up", config, tmp_path_factory.mktemp("demo-stack"))
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        stack.kill_tree()


@pytest.fixture(scope="session")
def tiny_client(tiny_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=tiny_stack.base_url + "/v1", api_key=tiny_stack.api_key, max_retries=0
    )


@pytest.fixture(scope="session")
def demo_client(demo_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=demo_stack.base_url + "/v1", api_key=demo_stack.api_key, max_retries=0
    )
