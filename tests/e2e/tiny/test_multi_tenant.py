"""Many developers, one endpoint: keys, allow-lists, quotas, audit, lanes,
supersession and cancellation, against real engines through real gateways.

Each test starts `seed-serve gateway` processes joined to the shared tiny
stack's Ray cluster (no engine start-up) with the configuration it needs.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from serving.admission.keys import create_key, load_keys_file, save_keys_file
from serving.api.routes import GATEWAY_ROUTES
from tests.support.redis_server import redis_server as start_redis
from tests.support.stack import (
    ROOT,
    TINY_MODEL,
    JoinedGateway,
    SeedServeProcess,
    engine_metric,
    engines_running,
    free_port,
    replica_endpoints,
    wait_for_engines,
)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


def start_gateway(
    tiny_stack: SeedServeProcess, workdir: Path, keys_file: Path, **config: object
) -> JoinedGateway:
    auth = {"keys_file": str(keys_file), "reload_interval_s": 0.5, **config.pop("auth", {})}  # type: ignore[dict-item]
    gateway = JoinedGateway(tiny_stack, workdir, {"auth": auth, **config})
    gateway.wait_ready(replicas=2, timeout_s=180)
    return gateway


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[JoinedGateway]]:
    started: list[JoinedGateway] = []
    yield started
    for gateway in started:
        gateway.stop()
        gateway.kill_tree()


def client(gateway: SeedServeProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)


def post(
    gateway: SeedServeProcess,
    key: str | None,
    body: dict[str, object],
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> httpx.Response:
    """POST /v1/completions with ``key`` (plus ``headers``)."""
    sent = {"Authorization": f"Bearer {key}"} if key else {}
    sent.update(headers or {})
    return httpx.post(
        gateway.base_url + "/v1/completions", json=body, headers=sent, timeout=timeout
    )


def hang_up_after(
    gateway: SeedServeProcess, key: str, body: dict[str, object], seconds: float, **headers: str
) -> None:
    """Start a request and close the connection after ``seconds`` (whatever arrived).

    (Do not wait for a first token instead: on the 2-core CI machine vLLM may
    hold a whole answer back until it is done.)"""
    started = time.monotonic()
    try:
        with httpx.stream(
            "POST",
            gateway.base_url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", **headers},
            timeout=httpx.Timeout(30, read=seconds),
        ) as response:
            for _ in response.iter_raw():
                if time.monotonic() - started > seconds:
                    break
    except httpx.ReadTimeout:
        pass


def wait_until_inflight(gateway: SeedServeProcess, admin: str, count: int) -> None:
    """Until the gateway reports ``count`` requests in flight (its own gauge)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(gateway.base_url + "/metrics", headers={"x-api-key": admin}).text
        for line in text.splitlines():
            if line.startswith("seed_serve_inflight_requests "):
                # The scrape itself is one of them.
                if float(line.split()[1]) - 1 >= count:
                    return
        time.sleep(0.05)
    raise AssertionError(f"never saw {count} requests in flight")


BODY = {"model": TINY_MODEL, "prompt": "def f(x):", "max_tokens": 4, "temperature": 0}
# Long enough to still run while the test does something else: on the 2-core CI
# machine the whole system can stall for ~1 s while an engine generates.
LONG = {**BODY, "max_tokens": 900, "min_tokens": 900, "n": 4, "temperature": 0.8}


# --------------------------------------------------------------------------- keys and allow-lists


def test_authentication_and_authorization(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, user = create_key(keys_file, tenant="team", name="dev")
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    _, remote_only = create_key(keys_file, tenant="remote", name="vpn")
    keys = load_keys_file(keys_file)
    keys.tenants["remote"].allowed_cidrs = ["10.8.0.0/16"]
    save_keys_file(keys_file, keys)
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)

    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-seed-000000000000-" + "x" * 43).completions.create(**BODY)  # type: ignore[arg-type]
    assert post(gateway, None, BODY).status_code == 401
    assert post(gateway, None, BODY).json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, remote_only).completions.create(**BODY)  # type: ignore[arg-type]
    assert client(gateway, user).completions.create(**BODY).choices  # type: ignore[arg-type]
    # The headers other SDKs use work too.
    for header in ("api-key", "x-api-key"):
        response = httpx.post(
            gateway.base_url + "/v1/completions", json=BODY, headers={header: user}
        )
        assert response.status_code == 200, header
    # Every route needs a key, even unknown ones; health and readiness do not.
    assert httpx.get(gateway.base_url + "/v1/models").status_code == 401
    assert httpx.get(gateway.base_url + "/v1/nothing-here").status_code == 401
    assert httpx.get(gateway.base_url + "/health").status_code == 200
    assert httpx.get(gateway.base_url + "/ready").status_code == 200
    # /metrics: admin keys only on the main port.
    assert httpx.get(gateway.base_url + "/metrics", headers={"x-api-key": user}).status_code == 403
    metrics = httpx.get(gateway.base_url + "/metrics", headers={"x-api-key": admin})
    assert metrics.status_code == 200 and "seed_serve_requests_total" in metrics.text


def test_global_allow_list_and_trusted_proxies(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, user = create_key(keys_file, tenant="team", name="dev")
    gateway = start_gateway(
        tiny_stack,
        tmp_path / "gw",
        keys_file,
        auth={"allowed_cidrs": ["192.0.2.0/24"], "trusted_proxies": ["127.0.0.0/8"]},
    )
    gateways.append(gateway)
    headers = {"Authorization": f"Bearer {user}"}
    # Loopback is a trusted proxy here: the address it forwards decides.
    allowed = post(gateway, user, BODY, headers={**headers, "X-Forwarded-For": "192.0.2.10"})
    assert allowed.status_code == 200
    refused = post(gateway, user, BODY, headers={**headers, "X-Forwarded-For": "198.51.100.1"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ip_not_allowed"
    assert post(gateway, user, BODY).status_code == 403  # loopback itself is not allowed

    # Without trusted proxies nobody picks their address, not even a local peer
    # (uvicorn would believe X-Forwarded-For from loopback unless told not to).
    untrusting = start_gateway(
        tiny_stack, tmp_path / "gw2", keys_file, auth={"allowed_cidrs": ["192.0.2.0/24"]}
    )
    gateways.append(untrusting)
    spoofed = post(untrusting, user, BODY, headers={**headers, "X-Forwarded-For": "192.0.2.10"})
    assert spoofed.status_code == 403
    assert spoofed.json()["error"]["code"] == "ip_not_allowed"
    assert "127.0.0.1" in spoofed.json()["error"]["message"]


def test_metrics_on_a_separate_port_need_no_key(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    port = free_port()
    gateway = start_gateway(
        tiny_stack,
        tmp_path / "gw",
        keys_file,
        gateway={"host": "127.0.0.1", "port": free_port(), "metrics_port": port},
    )
    gateways.append(gateway)
    assert "seed_serve_inflight_requests" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    # ...and the main port no longer serves it at all.
    assert httpx.get(gateway.base_url + "/metrics", headers={"x-api-key": admin}).status_code == 404


def test_keys_file_hot_reload(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, first = create_key(keys_file, tenant="team", name="first")
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)
    config = tmp_path / "keys-config.yaml"
    config.write_text(yaml.safe_dump({"auth": {"keys_file": str(keys_file)}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving", "keys", "--config", str(config), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    created = cli(
        "create", "--tenant", "team", "--name", "second", "--rpm", "100", "--owner", "ana@corp"
    )
    second = created.stdout.strip()
    assert second.startswith("sk-seed-") and second not in keys_file.read_text()
    assert next(r.owner for r in load_keys_file(keys_file).keys if r.name == "second") == "ana@corp"
    listing = cli("list").stdout
    assert "second" in listing and "sk-seed-" not in listing

    def status_with(key: str) -> int:
        return post(gateway, key, BODY).status_code

    deadline = time.monotonic() + 20
    while status_with(second) != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status_with(second) == 200
    key_id = next(r.id for r in load_keys_file(keys_file).keys if r.name == "second")
    cli("revoke", key_id)
    deadline = time.monotonic() + 20
    while status_with(second) != 401 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status_with(second) == 401
    # A malformed file (a bad Secret update) keeps the last good keys.
    keys_file.write_text("keys: [{id: broken")
    time.sleep(2)
    assert status_with(first) == 200
    assert "keeping the previous keys" in gateway.log()


# --------------------------------------------------------------------------- quotas


def test_rate_limits_are_429s_with_retry_after(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, limited = create_key(keys_file, tenant="team", name="rpm", limits={"rpm": 2})
    _, capped = create_key(
        keys_file, tenant="team", name="caps", limits={"max_tokens": 8, "max_n": 1}
    )
    _, tokens = create_key(keys_file, tenant="team", name="tpm", limits={"tpm": 30})
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)
    sdk = client(gateway, limited)
    sdk.completions.create(**BODY)  # type: ignore[arg-type]
    sdk.completions.create(**BODY)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.completions.create(**BODY)  # type: ignore[arg-type]
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    # Request caps are bad requests naming the field (retrying cannot help).
    too_long = post(gateway, capped, {**BODY, "max_tokens": 9})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    too_many = post(gateway, capped, {**BODY, "n": 2})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
    # Tokens per minute: real usage is charged, the next request waits.
    first = post(gateway, tokens, {**BODY, "max_tokens": 40})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 30
    assert post(gateway, tokens, BODY).status_code == 429


def test_concurrency_limit(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, single = create_key(keys_file, tenant="team", name="one", limits={"max_concurrency": 1})
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)
    first: list[httpx.Response] = []
    running = threading.Thread(target=lambda: first.append(post(gateway, single, LONG)))
    running.start()
    wait_until_inflight(gateway, admin, 1)
    second = post(gateway, single, BODY)
    running.join()
    assert first[0].status_code == 200
    assert second.status_code == 429
    assert "at once" in second.json()["error"]["message"]
    assert post(gateway, single, BODY).status_code == 200  # the slot came back


# --------------------------------------------------------------------------- audit


def test_audit_line_for_every_outcome(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, user = create_key(keys_file, tenant="team", name="dev", limits={"rpm": 3})
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)
    secret_prompt = "def very_secret_function_name_4711():"
    ok = post(gateway, user, {**BODY, "prompt": secret_prompt})
    bad = post(gateway, user, {**BODY, "max_tokens": -5})
    unauthorized = post(gateway, "sk-wrong", BODY)
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/completions",
        json={**BODY, "max_tokens": 800, "min_tokens": 800, "stream": True},
        headers={"Authorization": f"Bearer {user}"},
        timeout=60,
    ) as stream:
        next(stream.iter_lines())  # then hang up: a cancelled request
    limited = post(gateway, user, BODY)
    assert [r.status_code for r in (ok, bad, unauthorized, limited)] == [200, 400, 401, 429]
    time.sleep(1)
    lines = {line["request_id"]: line for line in gateway.audit_lines()}
    success = lines[ok.headers["x-request-id"]]
    assert success["key_id"] and success["tenant"] == "team"
    assert success["status"] == 200 and success["outcome"] == "ok"
    assert success["prompt_tokens"] == ok.json()["usage"]["prompt_tokens"]
    assert success["completion_tokens"] == ok.json()["usage"]["completion_tokens"]
    assert success["replica"] == ok.headers["x-seed-serve-replica"]
    assert success["finish_reason"] == "length"
    assert success["lane"] == "completion" and success["task"] == "completion"
    assert success["latency_ms"] > 0
    assert lines[bad.headers["x-request-id"]]["outcome"] == "error"
    assert lines[bad.headers["x-request-id"]]["status"] == 400
    rejected = lines[unauthorized.headers["x-request-id"]]
    assert (
        rejected["outcome"] == "rejected"
        and rejected["status"] == 401
        and rejected["key_id"] is None
    )
    assert lines[limited.headers["x-request-id"]]["outcome"] == "rejected"
    assert lines[limited.headers["x-request-id"]]["status"] == 429
    cancelled = [line for line in lines.values() if line["outcome"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["status"] == 200
    # No prompt text unless the operator asks for it.
    assert "very_secret_function_name_4711" not in gateway.audit_file.read_text()
    for line in lines.values():
        assert {"time", "client", "route", "model", "latency_ms", "ttft_ms"} <= set(line)


# --------------------------------------------------------------------------- Redis-shared limits


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    with start_redis(tmp_path) as server:
        yield server


def test_redis_shares_limits_across_gateways_and_fails_as_configured(
    tiny_stack: SeedServeProcess,
    tmp_path: Path,
    keys_file: Path,
    gateways: list[JoinedGateway],
    redis_server: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, redis_process = redis_server
    _, limited = create_key(keys_file, tenant="team", name="shared", limits={"rpm": 3})
    _, plain = create_key(keys_file, tenant="team", name="plain", limits={"rpm": 1000})
    quotas = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}
    fail_open = start_gateway(
        tiny_stack, tmp_path / "a", keys_file, quotas={**quotas, "on_redis_failure": "open"}
    )
    gateways.append(fail_open)
    fail_closed = start_gateway(
        tiny_stack, tmp_path / "b", keys_file, quotas={**quotas, "on_redis_failure": "closed"}
    )
    gateways.append(fail_closed)
    statuses = [
        post(gw, limited, BODY).status_code
        for gw in (fail_open, fail_closed, fail_open, fail_closed)
    ]
    assert statuses == [200, 200, 200, 429]  # three per minute, counted across both gateways

    redis_process.send_signal(signal.SIGKILL)
    redis_process.wait()
    assert post(fail_open, plain, BODY).status_code == 200
    closed = post(fail_closed, plain, BODY)
    assert closed.status_code == 503
    assert closed.json()["error"]["code"] == "quota_store_unavailable"
    assert "Retry-After" in closed.headers
    assert "quota store unreachable" in fail_open.log()
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")  # hot-reloaded
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        scrape = httpx.get(fail_open.base_url + "/metrics", headers={"x-api-key": admin})
        if scrape.status_code == 200:
            text = scrape.text
            break
        time.sleep(0.5)
    assert 'seed_serve_quota_store_errors_total{mode="open"}' in text


# --------------------------------------------------------------------------- backpressure


def test_full_admission_queue_answers_503_at_once(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, user = create_key(keys_file, tenant="team", name="dev")
    gateway = start_gateway(
        tiny_stack,
        tmp_path / "gw",
        keys_file,
        admission={"target_inflight_per_replica": 1, "max_queue": 1, "adaptive": False},
    )
    gateways.append(gateway)
    # Long enough that the first three still hold both slots and the queue
    # when the other three arrive (the threads start within milliseconds).
    body = {**LONG, "max_tokens": 300, "min_tokens": 300}
    results: list[httpx.Response] = []

    def one() -> None:
        results.append(post(gateway, user, body))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 3  # two running (one per replica) + one queued
    rejected = [r for r in results if r.status_code == 503]
    assert len(rejected) == 3
    assert all(
        r.json()["error"]["code"] == "queue_full" and r.headers["Retry-After"] for r in rejected
    )


# --------------------------------------------------------------------------- lanes and fairness


def _waits(gateway: SeedServeProcess, key_id: str, route: str) -> list[float]:
    return [
        line["queue_wait_ms"]
        for line in gateway.audit_lines()
        if line["key_id"] == key_id and line["route"] == route and line["status"] == 200
    ]


def test_completions_overtake_a_test_generation_flood(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    flood_record, flooder = create_key(keys_file, tenant="batch", name="flooder")
    quiet_record, quiet = create_key(keys_file, tenant="team", name="quiet")
    gateway = start_gateway(
        tiny_stack,
        tmp_path / "gw",
        keys_file,
        admission={"target_inflight_per_replica": 1, "adaptive": False},
        tasks={"tests_max_tokens": 100, "tests_candidates": 1, "tests_regenerations": 0},
    )
    gateways.append(gateway)

    def flood_one() -> None:
        httpx.post(
            gateway.base_url + "/v1/code/tests",
            json={"code": "def f(x):\n    return x + 1\n", "temperature": 0.9},
            headers={"Authorization": f"Bearer {flooder}"},
            timeout=300,
        )

    threads = [threading.Thread(target=flood_one) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # the engines are saturated, the queue holds the rest of the flood
    for _ in range(3):
        response = httpx.post(
            gateway.base_url + "/v1/code/completions",
            json={"prefix": "def g(y):\n    ", "language": "python", "max_tokens": 8},
            headers={"Authorization": f"Bearer {quiet}"},
            timeout=120,
        )
        assert response.status_code == 200
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    flood_waits = _waits(gateway, flood_record.id, "/v1/code/tests")
    quiet_waits = _waits(gateway, quiet_record.id, "/v1/code/completions")
    assert len(flood_waits) == 16 and len(quiet_waits) == 3
    # Each completion waits for one slot to free up (a flood request holds it
    # while it generates), never behind the flood's queue.
    assert max(quiet_waits) < statistics.median(flood_waits)
    assert statistics.mean(quiet_waits) < 0.35 * statistics.mean(flood_waits)


def test_one_developer_cannot_starve_another_in_the_same_lane(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    flood_record, flooder = create_key(keys_file, tenant="team", name="flooder")
    quiet_record, quiet = create_key(keys_file, tenant="team", name="quiet")
    gateway = start_gateway(
        tiny_stack,
        tmp_path / "gw",
        keys_file,
        admission={"target_inflight_per_replica": 1, "adaptive": False},
    )
    gateways.append(gateway)
    body = {**BODY, "max_tokens": 150, "min_tokens": 150}
    threads = [threading.Thread(target=post, args=(gateway, flooder, body)) for _ in range(12)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    for _ in range(3):
        assert post(gateway, quiet, body).status_code == 200
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    flood_waits = _waits(gateway, flood_record.id, "/v1/completions")
    quiet_waits = _waits(gateway, quiet_record.id, "/v1/completions")
    assert len(flood_waits) == 12 and len(quiet_waits) == 3
    assert max(quiet_waits) < statistics.median(flood_waits)


# --------------------------------------------------------------------------- supersession, disconnects


def test_latest_keystroke_wins(
    tiny_stack: SeedServeProcess, tmp_path: Path, keys_file: Path, gateways: list[JoinedGateway]
) -> None:
    _, user = create_key(keys_file, tenant="team", name="dev")
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    gateway = start_gateway(tiny_stack, tmp_path / "gw", keys_file)
    gateways.append(gateway)
    document = {"x-seed-serve-document": "src/app.py"}
    older_lines: list[str] = []
    streaming = threading.Event()

    def older() -> None:
        with httpx.stream(
            "POST",
            gateway.base_url + "/v1/completions",
            json={**LONG, "stream": True},
            headers={"Authorization": f"Bearer {user}", **document},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    older_lines.append(line)
                    streaming.set()
        streaming.set()

    thread = threading.Thread(target=older)
    thread.start()
    wait_until_inflight(gateway, admin, 1)
    # Supersede a stream that is already sending tokens (the case that needs an SSE error
    # chunk); before the first token the older request simply gets a JSON error.
    assert streaming.wait(60)
    newer = post(gateway, user, BODY, headers=document)
    thread.join()
    assert newer.status_code == 200
    assert older_lines[-1] == "data: [DONE]"
    error = json.loads(older_lines[-2][6:])["error"]
    assert error["code"] == "superseded"
    # Supersession stopped the engine work: far fewer tokens than asked for.
    audit = {line["request_id"]: line for line in gateway.audit_lines()}
    superseded = [line for line in audit.values() if line["outcome"] == "superseded"]
    assert len(superseded) == 1
    # A different document of the same developer is left alone.
    other = post(gateway, user, BODY, headers={"x-seed-serve-document": "src/other.py"})
    assert other.status_code == 200


def test_latest_keystroke_wins_over_a_plain_answer(tiny_stack: SeedServeProcess) -> None:
    """vLLM sends a plain (not streamed) answer's status and body together at
    the end: a superseded plain request is still aborted at once, not left to
    generate an answer nobody will read."""
    replicas = replica_endpoints(tiny_stack)
    wait_for_engines(replicas, busy=False)
    before = _generated(replicas)
    document = {"x-seed-serve-document": "src/plain.py"}
    older: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: older.append(post(tiny_stack, tiny_stack.api_key, LONG, headers=document))
    )
    thread.start()
    wait_for_engines(replicas, busy=True)  # the older one is generating
    newer = post(tiny_stack, tiny_stack.api_key, BODY, headers=document)
    thread.join(60)
    assert newer.status_code == 200
    assert older[0].status_code == 409 and older[0].json()["error"]["code"] == "superseded"
    time.sleep(0.5)
    generated = _generated(replicas) - before
    assert generated < 0.8 * 4 * 900, "the engine kept generating a superseded answer"


def test_a_superseded_completion_is_not_retried_by_the_sdk(tiny_stack: SeedServeProcess) -> None:
    """The openai SDKs retry a 409 by default: resent, a superseded completion
    would supersede the newer one in turn (and so on). The gateway tells them
    not to (``x-should-retry: false``), so the newer answer stands."""
    client = openai.OpenAI(
        base_url=tiny_stack.base_url + "/v1", api_key=tiny_stack.api_key,
        default_headers={"x-seed-serve-document": "src/sdk.py"},
    )  # fmt: skip
    replicas = replica_endpoints(tiny_stack)
    wait_for_engines(replicas, busy=False)  # so the wait below sees the older one
    long = {k: v for k, v in LONG.items() if k != "min_tokens"}
    outcome: list[object] = []

    def older() -> None:
        try:
            outcome.append(client.completions.create(**long, extra_body={"min_tokens": 900}))
        except openai.ConflictError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=older)
    thread.start()
    wait_for_engines(replicas, busy=True)  # the older one is generating
    newer = client.completions.with_raw_response.create(
        **{**long, "max_tokens": 300}, extra_body={"min_tokens": 300}
    )
    thread.join(120)
    assert newer.http_response.status_code == 200
    assert isinstance(outcome[0], openai.ConflictError)
    assert outcome[0].response.headers["x-should-retry"] == "false"
    older_line = tiny_stack.audit_line(outcome[0].response.headers["x-request-id"])
    assert older_line["outcome"] == "superseded"
    assert tiny_stack.audit_line(newer.headers["x-request-id"])["outcome"] == "ok"


def _generated(replicas: list[dict[str, object]]) -> float:
    return sum(engine_metric(r, "vllm:generation_tokens_total") for r in replicas)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_engine_request(
    tiny_stack: SeedServeProcess, stream: bool
) -> None:
    replicas = replica_endpoints(tiny_stack)
    wait_for_engines(replicas, busy=False)
    before = _generated(replicas)
    body = {**LONG, "max_tokens": 1000, "min_tokens": 1000, "stream": stream}
    request_id = f"left-{stream}"
    hang_up_after(tiny_stack, tiny_stack.api_key, body, 1.0, **{"x-request-id": request_id})
    wait_for_engines(replicas, busy=False, timeout_s=5)
    assert engines_running(replicas) == 0
    time.sleep(0.5)
    generated = _generated(replicas) - before
    assert generated < 0.8 * 4 * 1000, "the engine kept generating for a client that had left"
    # The engine read the prompt all the same: the gateway counts it (with the
    # model's tokenizer, without the engine's own BOS, if it adds one).
    whole = post(tiny_stack, tiny_stack.api_key, BODY).json()["usage"]["prompt_tokens"]
    line = tiny_stack.audit_line(request_id)
    assert line["outcome"] == "cancelled" and line["usage_estimated"] is True
    assert whole - 1 <= line["prompt_tokens"] <= whole


# --------------------------------------------------------------------------- fuzzing


# Each route answers errors in its protocol's shape (serving.api.dialects).
DIALECTS = {(route.method, route.path): route.dialect.name for route in GATEWAY_ROUTES}


def in_dialect(dialect: str, status: int, text: str) -> bool:
    """Whether an error answer has the shape of ``dialect``'s errors."""
    if dialect == "tabby":  # a plain-text message
        return bool(text.strip()) and not text.lstrip().startswith("{")
    try:
        body = json.loads(text)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    if dialect == "ollama":
        return set(body) == {"error"} and isinstance(error, str) and bool(error)
    if dialect == "llama.cpp":
        return (
            isinstance(error, dict)
            and set(error) == {"code", "message", "type"}
            and (error["code"] == status)
        )
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


def test_openapi_fuzzing_finds_no_500s(tiny_stack: SeedServeProcess) -> None:
    """Schemathesis against the real gateway: no 5xx, every error in its
    protocol's shape (OpenAI's envelope, or Ollama's, llama.cpp's, Tabby's)."""
    import hypothesis
    import schemathesis

    schema = schemathesis.openapi.from_url(
        tiny_stack.base_url + "/openapi.json", headers=tiny_stack.headers
    )
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # The other protocols' fronts share the serving path fuzzed through the
        # OpenAI and code routes: fewer examples there (each may generate).
        own = DIALECTS[(operation.method.upper(), operation.path)] == "openai"

        @hypothesis.settings(
            max_examples=15 if own else 6,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: object) -> None:
            response = case.call(headers=tiny_stack.headers, timeout=120)  # type: ignore[attr-defined]
            where = f"{case.method} {case.path}"  # type: ignore[attr-defined]
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code} {response.text[:200]}")
            if response.status_code >= 400:
                dialect = DIALECTS[(case.method, case.path)]  # type: ignore[attr-defined]
                if not in_dialect(dialect, response.status_code, response.text):
                    failures.append(f"{where}: not a {dialect} error: {response.text[:200]}")

        check()
    assert not failures, "\n".join(failures[:10])
