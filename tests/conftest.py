"""Fixtures every test folder may use, and the order the suite runs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.paths import seed_serve_home
from serving.tiny_model import build_tiny_model
from tests.support.stack import SeedServeProcess, tiny_stack_config

E2E = Path(__file__).parent / "e2e"
TINY = E2E / "tiny"
DEMO = E2E / "demo"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first; then the end-to-end tests: tiny/ (its stack starts
    with the session, see ``early_tiny_stack``), demo/, and the tests that
    start stacks of their own. pytest's order is kept within each."""

    def rank(item: pytest.Item) -> int:
        parents = Path(item.path).parents
        if E2E not in parents:
            return 0
        if TINY in parents:
            return 1
        return 2 if DEMO in parents else 3

    items.sort(key=rank)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama with Seed-Coder's FIM tokens (built once, cached)."""
    return build_tiny_model(seed_serve_home() / "test-models" / "tiny-llama")


@pytest.fixture(scope="session", autouse=True)
def early_tiny_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess | None]:
    """The tiny stack's `seed-serve up`, started as the session starts when
    tests in tiny/ will run: its engines (pinned to the last core) boot while
    the unit tests run on the other core, which hides most of its start-up
    (~80 s on the 2-core CI machine). tests/e2e/tiny/conftest.py takes it
    over and stops it; this only cleans up if that never happened."""
    if not any(TINY in Path(item.path).parents for item in request.session.items):
        yield None
        return
    model_dir = request.getfixturevalue("tiny_model_dir")
    stack = SeedServeProcess(
        "up", tiny_stack_config(model_dir), tmp_path_factory.mktemp("tiny-stack")
    )
    try:
        yield stack
    finally:
        stack.stop()
        stack.kill_tree()
