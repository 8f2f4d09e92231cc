"""Scale-out on Ray, with real engines: routing, health, failover, draining,
runtime scaling and placement. This module kills and freezes engines, so it
runs its own two-replica stack (not the shared one), started early while
demo/ runs (tests/conftest.py)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from serving.admission.keys import create_key
from tests.support.stack import (
    ENGINE_CORES,
    OTHER_ENGINE_CORES,
    ROOT,
    TINY_MODEL,
    JoinedGateway,
    SeedServeProcess,
    engine_metric,
    free_port,
    replica_endpoints,
    unplaceable_stack_config,
)

BODY = {"model": TINY_MODEL, "prompt": "def f(x):", "max_tokens": 4, "temperature": 0}
# The start of one file, longer than the routing key (1024 characters).
FILE_HEADER = "".join(f"import module_{i}  # dependency {i}\n" for i in range(40))


@pytest.fixture(scope="module")
def stack(early_scale_out_stack: SeedServeProcess | None) -> Iterator[SeedServeProcess]:
    """Two tiny replicas (tests/support/stack.py: scale_out_stack_config),
    started early by tests/conftest.py; stopped when this module ends."""
    assert early_scale_out_stack is not None, "tests/conftest.py starts it when this module runs"
    process = early_scale_out_stack
    try:
        process.wait_ready(replicas=2)
        yield process
    finally:
        process.stop()
        process.kill_tree()


@pytest.fixture(scope="module")
def admin(stack: SeedServeProcess) -> str:
    _, secret = create_key(stack.keys_file, tenant="ops", name="root", role="admin")
    deadline = time.monotonic() + 20  # the gateway reloads its keys file
    while time.monotonic() < deadline:
        if (
            httpx.get(
                stack.base_url + "/v1/admin/replicas", headers={"x-api-key": secret}
            ).status_code
            == 200
        ):
            return secret
        time.sleep(0.3)
    raise AssertionError("admin key never became valid")


def replicas_state(stack: SeedServeProcess) -> dict[str, str]:
    return dict(httpx.get(stack.base_url + "/ready").json()["replicas"])


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 120,
    what: str = "condition",
    stack: SeedServeProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    detail = ""
    if stack is not None:  # what the stack looked like, for the failure report
        detail = f"\nreplicas: {replicas_state(stack)}\nlog tail:\n{stack.log()[-4000:]}"
    raise AssertionError(f"timed out waiting for {what}{detail}")


def served_by(response: httpx.Response) -> str:
    return response.headers["x-seed-serve-replica"]


# --------------------------------------------------------------------------- routing


def test_prefix_affinity_keeps_a_document_on_one_replica(stack: SeedServeProcess) -> None:
    same = {
        served_by(
            stack.http.post(
                "/v1/completions", json=BODY, headers={"x-seed-serve-document": "src/app.py"}
            )
        )
        for _ in range(8)
    }
    assert len(same) == 1
    spread = {
        served_by(
            stack.http.post(
                "/v1/completions", json=BODY, headers={"x-seed-serve-document": f"src/m{i}.py"}
            )
        )
        for i in range(16)
    }
    assert spread == {"scale-0", "scale-1"}
    # Without a document id, the prompt's start is the key.
    by_prompt = {
        served_by(
            stack.http.post(
                "/v1/completions", json={**BODY, "prompt": FILE_HEADER + f"value_{i} = {i}\n"}
            )
        )
        for i in range(6)
    }
    assert len(by_prompt) == 1


def test_least_loaded_moves_traffic_away_from_a_busy_replica(
    stack: SeedServeProcess, tmp_path: Path
) -> None:
    gateway = JoinedGateway(
        stack,
        tmp_path,
        {
            "routing": {"policy": "least_loaded"},
            "auth": {"keys_file": str(stack.keys_file)},
            "admission": {"stats_interval_s": 0.2},
            "gateway": {"replica_refresh_interval_s": 0.2},
        },
    )
    try:
        gateway.wait_ready(replicas=2, timeout_s=180)
        busy = next(r for r in replica_endpoints(stack) if r["replica_id"] == "scale-0")
        long = {**BODY, "max_tokens": 900, "min_tokens": 900, "n": 4, "temperature": 0.8}
        occupied: list[int] = []

        def occupy() -> None:  # straight at the engine: load the gateway did not send
            occupied.append(
                httpx.post(
                    busy["url"] + "/v1/completions",
                    json=long,
                    headers={"Authorization": f"Bearer {busy['token']}"},
                    timeout=120,
                ).status_code
            )

        threads = [threading.Thread(target=occupy) for _ in range(3)]
        for thread in threads:
            thread.start()
        # Each replica reads its engine's load at every health check (0.5 s);
        # the gateway refreshes the replica list, load included, every 0.2 s.
        time.sleep(1.5)
        served = [
            served_by(
                gateway.http.post(
                    gateway.base_url + "/v1/completions", json=BODY, headers=stack.headers
                )
            )
            for _ in range(6)
        ]
        for thread in threads:
            thread.join()
        assert occupied == [200, 200, 200]
        assert collections.Counter(served)["scale-1"] == 6
    finally:
        gateway.stop()
        gateway.kill_tree()


# A prompt of many KV-cache blocks (the tiny model's 1,024-token window):
# kv_aware routes on whole blocks, which short prompts do not fill.
LONG_PROMPT = FILE_HEADER + "".join(f"def handler_{i}(event):\n    return {i}\n" for i in range(15))


def gateway_metric(gateway: SeedServeProcess, name: str, admin: str) -> dict[str, float]:
    """One metric of a gateway, by its (first) label value."""
    text = httpx.get(gateway.base_url + "/metrics", headers={"x-api-key": admin}, timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            label = line.split('"')[1]
            values[label] = float(line.rsplit(" ", 1)[1])
    return values


@pytest.fixture(scope="module")
def kv_gateway(
    stack: SeedServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess]:
    """A gateway routing kv_aware, joined to the stack (whose engines publish
    their KV-cache events: scale_out_stack_config sets kv_events)."""
    gateway = JoinedGateway(
        stack,
        tmp_path_factory.mktemp("kv-gateway"),
        {
            "routing": {"policy": "kv_aware"},
            "auth": {"keys_file": str(stack.keys_file)},
            "gateway": {"replica_refresh_interval_s": 0.2},
        },
    )
    try:
        gateway.wait_ready(replicas=2, timeout_s=180)
        yield gateway
    finally:
        gateway.stop()
        gateway.kill_tree()


def test_kv_aware_routes_to_the_replica_whose_cache_holds_the_prompt(
    stack: SeedServeProcess, kv_gateway: SeedServeProcess, admin: str
) -> None:
    # The engines' events reach the gateway only through their guard, with the secret.
    for replica in replica_endpoints(stack):
        assert httpx.get(replica["url"] + "/seed-serve/kv-events", timeout=10).status_code == 401
    wait_for(
        lambda: (
            gateway_metric(kv_gateway, "seed_serve_replica_kv_events_live", admin)
            == {"scale-0": 1.0, "scale-1": 1.0}
        ),
        60,
        "the gateway following both engines' KV-cache events",
        stack,
    )
    body = {**BODY, "prompt": LONG_PROMPT, "max_tokens": 2}
    first = kv_gateway.http.post(
        "/v1/completions", json=body, headers={**stack.headers, "x-seed-serve-document": "kv0.py"}
    )
    assert first.status_code == 200, first.text
    holder = served_by(first)
    wait_for(
        lambda: (
            gateway_metric(kv_gateway, "seed_serve_replica_kv_index_blocks", admin).get(holder, 0)
            > 0
        ),
        30,
        "the holder's blocks in the gateway's index",
        stack,
    )
    engine = next(r for r in replica_endpoints(stack) if r["replica_id"] == holder)
    hits_before = engine_metric(engine, "vllm:prefix_cache_hits_total")
    # Other documents (prefix_affinity would spread them over both replicas):
    # all to the replica that holds the prompt, where its cached prefix is reused.
    served = [
        served_by(
            kv_gateway.http.post(
                "/v1/completions",
                json=body,
                headers={**stack.headers, "x-seed-serve-document": f"kv{i}.py"},
            )
        )
        for i in range(1, 9)
    ]
    assert served == [holder] * 8
    assert gateway_metric(kv_gateway, "seed_serve_kv_routing_total", admin)["cached_prefix"] >= 8
    assert engine_metric(engine, "vllm:prefix_cache_hits_total") > hits_before


# --------------------------------------------------------------------------- faults

# Engines killed by the chaos test, by replica: the restart test after the
# scaling test checks that Ray replaced them.
KILLED_ENGINES: dict[str, int] = {}


def _engine_pids(stack: SeedServeProcess) -> dict[str, int]:
    return {r["replica_id"]: int(r["engine_pid"]) for r in replica_endpoints(stack)}


def test_sigstop_replica_is_ejected_and_traffic_continues(stack: SeedServeProcess) -> None:
    pids = _engine_pids(stack)
    frozen = pids["scale-1"]
    os.killpg(frozen, signal.SIGSTOP)
    try:
        wait_for(
            lambda: replicas_state(stack)["scale-1"] == "unhealthy",
            30,
            "the frozen replica's ejection",
            stack,
        )
        for i in range(6):
            response = stack.http.post(
                "/v1/completions",
                json=BODY,
                headers={"x-seed-serve-document": f"d{i}.py"},
                timeout=60,
            )
            assert response.status_code == 200
            assert served_by(response) == "scale-0"
        assert httpx.get(stack.base_url + "/ready").status_code == 200
    finally:
        os.killpg(frozen, signal.SIGCONT)
    wait_for(
        lambda: replicas_state(stack)["scale-1"] == "ready", 60, "re-admission after SIGCONT", stack
    )


def test_sigterm_drains_the_gateway(stack: SeedServeProcess, tmp_path: Path) -> None:
    gateway = JoinedGateway(
        stack,
        tmp_path,
        {
            "gateway": {"host": "127.0.0.1", "port": free_port(), "drain_timeout_s": 60},
            "auth": {"keys_file": str(stack.keys_file)},
        },
    )
    gateway.wait_ready(replicas=2, timeout_s=180)
    results: list[tuple[int, list[str]]] = []
    long = {**BODY, "max_tokens": 700, "min_tokens": 700, "stream": True}

    def stream(index: int) -> None:
        with httpx.stream(
            "POST",
            gateway.base_url + "/v1/completions",
            json=long,
            headers={**stack.headers, "x-seed-serve-document": f"drain{index}.py"},
            timeout=120,
        ) as response:
            results.append(
                (
                    response.status_code,
                    [line for line in response.iter_lines() if line.startswith("data: ")],
                )
            )

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = httpx.post(gateway.base_url + "/v1/completions", json=BODY, headers=stack.headers)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining" and refused.headers["Retry-After"]
    assert httpx.get(gateway.base_url + "/ready").status_code == 503
    for thread in threads:
        thread.join(timeout=120)
    assert gateway.process.wait(timeout=60) == 0
    gateway.kill_tree()
    assert len(results) == 3
    for status, events in results:
        assert status == 200, (status, events[:2], replicas_state(stack))
        assert events[-1] == "data: [DONE]"
        assert not any('"error"' in e for e in events), "an in-flight request was cut by the drain"


def test_chaos_sigkill_an_engine_while_requests_stream(
    stack: SeedServeProcess, kv_gateway: SeedServeProcess, admin: str
) -> None:
    pids = _engine_pids(stack)
    # The kv_aware gateway knows blocks cached by the engine about to die.
    doomed = next(r for r in replica_endpoints(stack) if r["replica_id"] == "scale-0")
    cached = httpx.post(
        doomed["url"] + "/v1/completions",
        json={**BODY, "prompt": "# doomed\n" + LONG_PROMPT, "max_tokens": 1},
        headers={"Authorization": f"Bearer {doomed['token']}"},
        timeout=60,
    )
    assert cached.status_code == 200
    wait_for(
        lambda: (
            gateway_metric(kv_gateway, "seed_serve_replica_kv_index_blocks", admin).get(
                "scale-0", 0
            )
            > 0
        ),
        30,
        "scale-0's blocks in the kv_aware gateway's index",
        stack,
    )
    outcomes: list[str] = []
    long = {**BODY, "max_tokens": 600, "min_tokens": 600, "stream": True}

    def stream(index: int) -> None:
        started = time.monotonic()
        try:
            with stack.http.stream(
                "POST",
                "/v1/completions",
                json=long,
                headers={"x-seed-serve-document": f"chaos{index}.py"},
                timeout=60,
            ) as response:
                if response.status_code != 200:
                    outcomes.append(f"http {response.status_code}")
                    return
                events = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert time.monotonic() - started < 60
            if events[-1] != "data: [DONE]":
                outcomes.append("no [DONE]")
            elif any('"error"' in e for e in events):
                outcomes.append("error event")
            else:
                outcomes.append("completed")
        except Exception as exc:  # a hang would surface as a timeout here
            outcomes.append(f"exception {type(exc).__name__}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.8)
    os.kill(pids["scale-0"], signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(outcomes) == 6
    # Each ended with a completion or a clear error, never a silent cut.
    assert set(outcomes) <= {"completed", "error event", "http 502", "http 503"}, outcomes
    # Later requests succeed on the survivor while the dead one restarts.
    for i in range(4):
        assert (
            stack.http.post(
                "/v1/completions", json=BODY, headers={"x-seed-serve-document": f"after{i}.py"}
            ).status_code
            == 200
        )
    # Ray restarts it meanwhile: test_the_killed_replica_is_back_with_a_new_engine
    # looks at it after the scaling test, whose new replica boots on the other
    # core at the same time (each start-up is ~45 s here; one after the other
    # they were the module's longest wait).
    KILLED_ENGINES["scale-0"] = pids["scale-0"]


# --------------------------------------------------------------------------- scaling


def test_runtime_scaling_under_traffic(stack: SeedServeProcess, admin: str) -> None:
    failures: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        index = 0
        while not stop.is_set():
            index += 1
            response = stack.http.post(
                "/v1/completions",
                json=BODY,
                headers={"x-seed-serve-document": f"w{worker}-{index}.py"},
                timeout=120,
            )
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
            # Steady traffic, not a flood: flooding both cores starved the new
            # engine's start-up past the wait on the CI machine.
            stop.wait(0.2)

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    try:
        scaled = httpx.post(
            stack.base_url + "/v1/admin/replicas",
            json={"group": "scale", "replicas": 3},
            headers={"x-api-key": admin},
        )
        assert scaled.status_code == 200, scaled.text
        wait_for(
            lambda: list(replicas_state(stack).values()).count("ready") == 3,
            # An engine start-up on a busy 2-core machine (40-170 s idle); the
            # replica the chaos test killed restarts meanwhile, on the other core.
            480,
            "a third ready replica",
            stack,
        )
        # Each replica on its own list of cores (scale_out_stack_config).
        cores = {r: os.sched_getaffinity(pid) for r, pid in _engine_pids(stack).items()}
        assert cores == {
            "scale-0": set(ENGINE_CORES),
            "scale-1": set(ENGINE_CORES),
            "scale-2": set(OTHER_ENGINE_CORES),
        }
        # Down to one with the CLI (acts on the running `seed-serve up`): surplus replicas drain first.
        result = subprocess.run(
            [sys.executable, "-m", "serving", "scale", "--replicas", "1"],
            cwd=ROOT,
            env={**os.environ, "SEED_SERVE_HOME": str(stack.home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "group scale: 1 replica(s)" in result.stdout
        wait_for(
            lambda: list(replicas_state(stack)) == ["scale-0"],
            120,
            "scale-down to one replica",
            stack,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []
    listing = httpx.get(stack.base_url + "/v1/admin/replicas", headers={"x-api-key": admin}).json()
    assert listing["groups"] == [{"group": "scale", "replicas": 1, "model": TINY_MODEL}]
    assert "token" not in json.dumps(listing)  # never the engines' secrets
    # Users may not scale.
    assert (
        httpx.post(
            stack.base_url + "/v1/admin/replicas",
            json={"group": "scale", "replicas": 2},
            headers=stack.headers,
        ).status_code
        == 403
    )
    bad = httpx.post(
        stack.base_url + "/v1/admin/replicas",
        json={"group": "nope", "replicas": 2},
        headers={"x-api-key": admin},
    )
    assert bad.status_code == 400 and "no replica group" in bad.json()["error"]["message"]


def test_the_killed_replica_is_back_with_a_new_engine(
    stack: SeedServeProcess, kv_gateway: SeedServeProcess, admin: str
) -> None:
    """Ray restarted the replica the chaos test killed, with a new engine
    that serves, and the kv_aware gateway rebuilt its part of the index."""
    killed = KILLED_ENGINES.get("scale-0")
    assert killed is not None, "runs after test_chaos_sigkill_an_engine_while_requests_stream"
    pids = {"scale-0": killed}
    # Ray restarts the killed replica with a new engine, and it serves again.
    wait_for(
        lambda: (
            replicas_state(stack).get("scale-0") == "ready"
            and _engine_pids(stack)["scale-0"] != pids["scale-0"]
        ),
        240,
        "the killed replica's restart",
        stack,
    )
    # The scaling test left it the group's only replica: every answer is its own.
    answers = [
        stack.http.post(
            "/v1/completions", json=BODY, headers={"x-seed-serve-document": f"back{i}.py"}
        )
        for i in range(16)
    ]
    assert [a.status_code for a in answers] == [200] * 16
    assert {served_by(a) for a in answers} == {"scale-0"}

    # The kv_aware gateway dropped the dead engine's blocks (the new engine's
    # cache is empty: the prompts since are shorter than a block) and follows
    # the new engine's events.
    def index_of_scale_0() -> tuple[float, float]:
        live = gateway_metric(kv_gateway, "seed_serve_replica_kv_events_live", admin)
        blocks = gateway_metric(kv_gateway, "seed_serve_replica_kv_index_blocks", admin)
        return live.get("scale-0", 0), blocks.get("scale-0", -1)

    wait_for(lambda: index_of_scale_0() == (1.0, 0.0), 60, "scale-0's index rebuilt", stack)
    reborn = next(r for r in replica_endpoints(stack) if r["replica_id"] == "scale-0")
    httpx.post(
        reborn["url"] + "/v1/completions",
        json={**BODY, "prompt": LONG_PROMPT, "max_tokens": 1},
        headers={"Authorization": f"Bearer {reborn['token']}"},
        timeout=60,
    ).raise_for_status()
    wait_for(lambda: index_of_scale_0()[1] > 0, 30, "the new engine's blocks indexed", stack)


def test_unplaceable_replica_fails_clearly(
    early_unplaceable_stack: SeedServeProcess | None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Started early by tests/conftest.py when the whole suite runs (it only waits to fail).
    process = early_unplaceable_stack or SeedServeProcess(
        "up", unplaceable_stack_config(tiny_model_dir), tmp_path
    )
    try:
        code = process.process.wait(timeout=180)
        log = process.log()
        assert code == 1, log[-3000:]
        assert "replica gpu-0 could not be placed within 1s" in log
        assert "missing GPU (needs 2, the cluster has 0)" in log
    finally:
        process.kill_tree()
