"""Fixtures every test folder may use, and the order the suite runs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.paths import demo_model_dir, seed_serve_home
from serving.tiny_model import build_tiny_model
from tests.support.k8s_cluster import K8sCluster
from tests.support.stack import (
    TINY_STACK_ARGS,
    TINY_STACK_ENV,
    SeedServeProcess,
    demo_stack_config,
    scale_out_stack_config,
    tiny_stack_config,
    unplaceable_stack_config,
)

E2E = Path(__file__).parent / "e2e"
TINY = E2E / "tiny"
DEMO = E2E / "demo"
SCALE_OUT = E2E / "test_scale_out.py"
K8S = E2E / "k8s"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first (tiny/'s stack, then k8s/'s cluster boot meanwhile,
    see ``early_tiny_stack`` and ``early_k8s_cluster``); then the end-to-end
    tests: tiny/ (the demo stack boots while it runs, see
    ``early_demo_stack``), k8s/, demo/ (the
    scale-out stack starts while it runs, see
    ``early_scale_out_stack``), test_scale_out.py, and the tests that start
    stacks of their own. pytest's order is kept within each.

    k8s/ right after tiny/: its cluster used to idle through demo/ and
    test_scale_out.py (~8 min; an idle stack costs ~6% of a core per engine
    plus ~5% for Ray, measured), taking CPU from the tests that run there.
    """

    def rank(item: pytest.Item) -> int:
        path = Path(item.path)
        if E2E not in path.parents:
            return 0
        if TINY in path.parents:
            return 1
        if K8S in path.parents:
            return 2
        if DEMO in path.parents:
            return 3
        return 4 if path == SCALE_OUT else 5

    items.sort(key=rank)


def _stopped_after(stack: SeedServeProcess) -> Iterator[SeedServeProcess]:
    """Yields a stack started early; stops it at the session's end if the
    folder that took it over has not (then only this cleans up)."""
    try:
        yield stack
    finally:
        stack.stop()
        stack.kill_tree()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama with Seed-Coder's FIM tokens (built once, cached)."""
    return build_tiny_model(seed_serve_home() / "test-models" / "tiny-llama")


@pytest.fixture(scope="session", autouse=True)
def early_tiny_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess | None]:
    """The tiny stack's `seed-serve up`, started as the session starts when
    tests in tiny/ will run: its engines (one per core) boot while the unit
    tests run, which leave a core about half idle: that hides its start-up
    (49-73 s measured). tests/e2e/tiny/conftest.py takes it over and stops it;
    this only cleans up if that never happened."""
    if not any(TINY in Path(item.path).parents for item in request.session.items):
        yield None
        return
    model_dir = request.getfixturevalue("tiny_model_dir")
    yield from _stopped_after(
        SeedServeProcess(
            "up",
            tiny_stack_config(model_dir),
            tmp_path_factory.mktemp("tiny-stack"),
            extra_args=TINY_STACK_ARGS,
            env=TINY_STACK_ENV,
        )
    )


@pytest.fixture(scope="session")
def early_scale_out_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess | None]:
    """test_scale_out.py's two-replica stack, started (not waited for) when
    first asked: by demo/ once the demo stack is ready, so that its engines
    (on the first core: the demo engine has the last) boot while the demo
    tests run (~90 s of the suite's time on the 2-core CI machine), or by
    test_scale_out.py itself when demo/ does not run. test_scale_out.py
    stops it when its tests end; this only cleans up."""
    if not any(Path(item.path) == SCALE_OUT for item in request.session.items):
        yield None
        return
    model_dir = request.getfixturevalue("tiny_model_dir")
    yield from _stopped_after(
        SeedServeProcess(
            "up", scale_out_stack_config(model_dir), tmp_path_factory.mktemp("scale-stack")
        )
    )


@pytest.fixture(scope="session")
def early_demo_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess | None]:
    """demo/'s stack (the real demo model), started (not waited for) when
    first asked: by tiny/ once k8s/'s cluster serves, so that the demo engine
    (on the first core) boots while tiny/'s later tests leave that core ~55%
    idle (measured; booting beside k8s/'s fine-tune instead made that test
    ~25 s slower), else by k8s/ or by demo/ itself. demo/ stops it when its
    tests end; this only cleans up. None when demo/ does not run or the demo
    model is missing (demo/ then fails saying so)."""
    model = demo_model_dir()
    if (
        not any(DEMO in Path(item.path).parents for item in request.session.items)
        or not (model / ".seed-serve-complete").exists()
    ):
        yield None
        return
    # A process group of its own: demo/test_stopping.py stops it as systemd would.
    yield from _stopped_after(
        SeedServeProcess(
            "up", demo_stack_config(model), tmp_path_factory.mktemp("demo-stack"), own_group=True
        )
    )


@pytest.fixture(scope="session")
def early_unplaceable_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess | None]:
    """test_scale_out.py's `seed-serve up` that must fail to place a replica,
    started (not waited for) by tiny/ once its stack is ready: its Ray start-up
    and refusal (~15 s) then run on the CPU tiny/'s tests leave idle, and the
    test only reads how it ended. None when test_scale_out.py does not run
    (the test then starts it itself)."""
    if not any(Path(item.path) == SCALE_OUT for item in request.session.items):
        yield None
        return
    stack = SeedServeProcess(
        "up",
        unplaceable_stack_config(request.getfixturevalue("tiny_model_dir")),
        tmp_path_factory.mktemp("unplaceable"),
    )
    try:
        yield stack
    finally:
        stack.kill_tree()


@pytest.fixture(scope="session", autouse=True)
def early_k8s_cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    early_tiny_stack: SeedServeProcess | None,
) -> Iterator[K8sCluster | None]:
    """tests/e2e/k8s's Ray head and gateway, booting (not waited for) from the
    moment tiny/'s stack is ready (at once without tiny/): its start-up
    (~60 s) then runs while the unit tests still do. They leave a core about
    half idle (measured: 87 idle core-seconds in 141 s), where tiny/'s
    load benchmarks, beside which it booted before, keep both busy. k8s/
    stops it; this only cleans up."""
    if not any(K8S in Path(item.path).parents for item in request.session.items):
        yield None
        return
    tiny = early_tiny_stack

    def tiny_is_up_or_gone() -> bool:
        return tiny is None or tiny.process.poll() is not None or tiny.is_ready(replicas=2)

    cluster = K8sCluster(
        request.getfixturevalue("tiny_model_dir"),
        tmp_path_factory.mktemp("k8s"),
        after=tiny_is_up_or_gone,
    )
    try:
        yield cluster
    finally:
        cluster.stop()
