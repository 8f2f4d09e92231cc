"""The tiny stack: `seed-serve up` with two replicas of the tiny test model on
real local Ray, over real HTTP. It lives while this folder's tests run (one
stack at a time: a second one idling beside it slows every engine on a
2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.stack import SeedServeProcess


@pytest.fixture(scope="package")
def tiny_stack(
    request: pytest.FixtureRequest, early_tiny_stack: SeedServeProcess | None
) -> Iterator[SeedServeProcess]:
    """`seed-serve up` with two tiny replicas on real local Ray, over real HTTP
    (started with the session: tests/conftest.py)."""
    assert early_tiny_stack is not None, "tests/conftest.py starts it when tiny/ runs"
    stack = early_tiny_stack
    try:
        stack.wait_ready(replicas=2)
        # test_scale_out.py's unplaceable replica is refused while this folder runs.
        request.getfixturevalue("early_unplaceable_stack")
        yield stack
    finally:
        code = stack.stop()
        stack.kill_tree()
        assert code == 0, stack.log()[-3000:]


_DEMO_ASKED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _demo_stack_boots_once_k8s_serves(
    request: pytest.FixtureRequest, tiny_stack: SeedServeProcess
) -> None:
    """Starts demo/'s stack before the first test here after the load
    benchmarks (test_benchmarks.py keeps both cores busy; the tests after it
    leave ~35% idle, measured) that finds k8s/'s cluster serving (two
    start-ups at once slow both), see tests/conftest.py: early_demo_stack."""
    if request.path.name == "test_benchmarks.py" or request.session.stash.get(_DEMO_ASKED, False):
        return
    cluster = request.getfixturevalue("early_k8s_cluster")
    if cluster is not None and cluster.serving():
        request.getfixturevalue("early_demo_stack")
        request.session.stash[_DEMO_ASKED] = True  # no more /ready probes of k8s/


@pytest.fixture(scope="package")
def tiny_client(tiny_stack: SeedServeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=tiny_stack.base_url + "/v1", api_key=tiny_stack.api_key, max_retries=0
    )
