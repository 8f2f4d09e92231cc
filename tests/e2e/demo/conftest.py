"""The demo stack: `seed-serve up` with the real demo model (SmolLM2-135M) on
CPU. It lives while this folder's tests run."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import EarlyStack
from tests.support.stack import SeedServeProcess


@pytest.fixture(scope="package")
def demo_stack(early_demo_stack: EarlyStack) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with the real demo model (SmolLM2-135M) on CPU (started
    while the last tiny/ tests run: tests/conftest.py)."""
    stack = early_demo_stack.take()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        stack.kill_tree()


@pytest.fixture(scope="package")
def demo_client(demo_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=demo_stack.base_url + "/v1", api_key=demo_stack.api_key, max_retries=0
    )
