"""The tiny stack: `seed-serve up` with two replicas of the tiny test model on
real local Ray, over real HTTP. It lives while this folder's tests run (one
stack at a time: a second one idling beside it slows every engine on a
2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.stack import SeedServeProcess, free_port, tiny_config


@pytest.fixture(scope="package")
def tiny_stack(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with two tiny replicas on real local Ray, over real HTTP."""
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=2)
    # The tiny model's generations are noise (its weights are random): shorter
    # candidates keep the test-generation and repair routes quick for the
    # fuzzing and the quality run (they spent ~2 of the suite's minutes here).
    config["tasks"] = {"tests_max_tokens": 128, "tests_regenerations": 0, "repair_max_tokens": 128}
    stack = SeedServeProcess("up", config, tmp_path_factory.mktemp("tiny-stack"))
    try:
        stack.wait_ready(replicas=2)
        yield stack
    finally:
        code = stack.stop()
        stack.kill_tree()
        assert code == 0, stack.log()[-3000:]


@pytest.fixture(scope="package")
def tiny_client(tiny_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=tiny_stack.base_url + "/v1", api_key=tiny_stack.api_key, max_retries=0
    )
