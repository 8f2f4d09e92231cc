"""The demo stack: `seed-serve up` with the real demo model (SmolLM2-135M) on
CPU. It lives while this folder's tests run."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from serving.paths import demo_model_dir
from tests.support.stack import (
    DEMO_MODEL,
    ENGINE_CORES,
    TEST_ENGINE_ARGS,
    TEST_ENGINE_ENV,
    SeedServeProcess,
    free_port,
)


@pytest.fixture(scope="package")
def demo_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess]:
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
                    "extra_args": dict(TEST_ENGINE_ARGS),
                    "env": dict(TEST_ENGINE_ENV),
                },
            }
        ],
    }
    # A process group of its own: test_stopping.py stops it as systemd would.
    stack = SeedServeProcess("up", config, tmp_path_factory.mktemp("demo-stack"), own_group=True)
    try:
        stack.wait_ready()
        # The scale-out tests' stack boots on the other core while this folder runs.
        request.getfixturevalue("early_scale_out_stack")
        yield stack
    finally:
        stack.stop()
        stack.kill_tree()


@pytest.fixture(scope="package")
def demo_client(demo_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=demo_stack.base_url + "/v1", api_key=demo_stack.api_key, max_retries=0
    )
