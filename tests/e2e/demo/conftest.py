"""The demo stack: `seed-serve up` with the real demo model (SmolLM2-135M) on
CPU. It lives while this folder's tests run (started earlier, while k8s/ runs:
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from serving.paths import demo_model_dir
from tests.support.stack import SeedServeProcess


@pytest.fixture(scope="package")
def demo_stack(
    request: pytest.FixtureRequest, early_demo_stack: SeedServeProcess | None
) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with the real demo model (SmolLM2-135M) on CPU, started
    early by tests/conftest.py (while k8s/ runs); stopped when this folder ends."""
    if early_demo_stack is None:
        pytest.fail(
            f"demo model missing at {demo_model_dir()}: `make test` builds it (seed-serve demo-model)"
        )
    stack = early_demo_stack
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
