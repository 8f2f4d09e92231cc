"""Fixtures every test folder may use, and the order the suite runs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.paths import demo_model_dir, seed_serve_home
from serving.tiny_model import build_tiny_model
from tests.support.stack import SeedServeProcess, demo_stack_config, tiny_stack_config

E2E = Path(__file__).parent / "e2e"
TINY = E2E / "tiny"
DEMO = E2E / "demo"
# The demo stack starts when this last module of tiny/ begins: its engine
# boots (~45 s) beside tests that check what is answered, not how fast.
DEMO_STARTS_WITH = TINY / "test_openai_api.py"


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


class EarlyStack:
    """The demo stack's `seed-serve up`, started ahead of its tests
    (``start``); tests/e2e/demo/conftest.py takes it over (``take``: started
    now if it was not yet) and stops it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stack: SeedServeProcess | None = None
        self.taken = False

    def start(self) -> None:
        if self.stack is None:
            model = demo_model_dir()
            if not (model / ".seed-serve-complete").exists():
                pytest.fail(f"demo model missing at {model}: `make test` builds it")
            # A process group of its own: test_stopping.py stops it as systemd would.
            config = demo_stack_config(model)
            self.stack = SeedServeProcess("up", config, self.workdir, own_group=True)

    def take(self) -> SeedServeProcess:
        self.start()
        assert self.stack is not None
        self.taken = True
        return self.stack


EARLY_DEMO = pytest.StashKey[EarlyStack]()


@pytest.fixture(scope="session", autouse=True)
def early_demo_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EarlyStack]:
    early = EarlyStack(tmp_path_factory.mktemp("demo-stack"))
    request.config.stash[EARLY_DEMO] = early
    yield early
    if early.stack is not None and not early.taken:  # started, its tests never ran
        early.stack.stop()
        early.stack.kill_tree()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start the demo stack as the last tiny/ module begins, if demo/ runs."""
    if Path(item.path) != DEMO_STARTS_WITH:
        return
    early = item.config.stash.get(EARLY_DEMO, None)
    if early is not None and any(DEMO in Path(other.path).parents for other in item.session.items):
        early.start()
