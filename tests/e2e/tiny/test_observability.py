"""Observability end to end: real traffic through real engines moves the
gateway's counters by exactly the expected amounts, labels stay bounded, the
engines' own metrics are scrapeable through the gateway, suggestion events
round-trip (shared through a real redis-server across two gateways), and the
logs are JSON lines with request ids and no prompt text.

Two gateways join the session's tiny stack (no extra engine start-up)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.admission.keys import create_key
from serving.api.route_table import route_tasks
from serving.api.routes import GATEWAY_ROUTES
from serving.observability.metrics import CANCEL_REASONS, REJECTION_REASONS
from serving.tasks.languages import LANGUAGES
from tests.support.redis_server import redis_server
from tests.support.stack import (
    TINY_MODEL,
    JoinedGateway,
    SeedServeProcess,
    free_port,
    replica_endpoints,
)

SECRET_PROMPT = "def very_private_function_4711(x):"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


TASKS = route_tasks(GATEWAY_ROUTES)  # the task label's values: the route table's tasks


@dataclass
class Gateways:
    a: JoinedGateway  # metrics on their own port
    b: JoinedGateway
    metrics_url: str
    admin: str
    alpha: str  # tenant alpha
    beta: str  # tenant beta
    alpha_key_id: str


@pytest.fixture(scope="module")
def gateways(
    tiny_stack: SeedServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    workdir = tmp_path_factory.mktemp("observability")
    keys_file = workdir / "keys.yaml"
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    alpha_record, alpha = create_key(keys_file, tenant="alpha", name="dev")
    _, beta = create_key(keys_file, tenant="beta", name="dev")
    metrics_port = free_port()
    with redis_server(workdir) as (redis_port, _):
        telemetry = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{redis_port}/0"}
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # Usage records shared the way gateways on several hosts share them.
        usage = {"backend": "redis", "redis_url": redis_url, "flush_interval_s": 0.5}
        common: dict[str, Any] = {
            "auth": {"keys_file": str(keys_file)},
            "telemetry": telemetry,
            "usage": usage,
        }
        a = JoinedGateway(
            tiny_stack,
            workdir / "a",
            {
                **common,
                "gateway": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "metrics_port": metrics_port,
                    "log_level": "debug",
                    "log_format": "json",
                },
            },
        )
        b = JoinedGateway(tiny_stack, workdir / "b", common)
        try:
            a.wait_ready(replicas=2, timeout_s=180)
            b.wait_ready(replicas=2, timeout_s=180)
            yield Gateways(
                a, b, f"http://127.0.0.1:{metrics_port}", admin, alpha, beta, alpha_record.id
            )
        finally:
            for gateway in (a, b):
                gateway.stop()
                gateway.kill_tree()


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def code_completion(gateway: SeedServeProcess, key: str, **body: Any) -> httpx.Response:
    request = {"prefix": "def add(a, b):\n    return", "language": "python", "max_tokens": 6}
    return httpx.post(
        gateway.base_url + "/v1/code/completions",
        json={**request, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def event(gateway: SeedServeProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/v1/code/events",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


# --------------------------------------------------------------------------- counters


def test_counters_move_by_exactly_the_traffic(gateways: Gateways) -> None:
    gw = gateways.a
    before = scrape(gateways.metrics_url + "/metrics")
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gateways.alpha, max_retries=0)
    plain = client.completions.create(model=TINY_MODEL, prompt="def f(x):", max_tokens=5)
    chunks = list(
        client.completions.create(
            model=TINY_MODEL,
            prompt="class Stack:",
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    coded = code_completion(gw, gateways.alpha)
    assert coded.status_code == 200, coded.text
    code_usage = coded.json()["usage"]
    # Refusals: a wrong key, and a body that names a bad field.
    assert (
        httpx.post(
            gw.base_url + "/v1/completions", json={}, headers={"Authorization": "Bearer sk-seed-no"}
        ).status_code
        == 401
    )
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TINY_MODEL, prompt="x", max_tokens=-1)
    time.sleep(0.3)  # the last request's metrics are written as it ends
    after = scrape(gateways.metrics_url + "/metrics")

    assert plain.usage is not None and streamed is not None
    # adapter "": the base model answered (no team adapter for this tenant).
    ok = {"task": "completion", "model": TINY_MODEL, "adapter": "", "status": "200"}
    assert delta(after, before, "seed_serve_requests_total", **ok) == 2
    code_ok = {"task": "code_completion", "model": TINY_MODEL, "adapter": "", "status": "200"}
    assert delta(after, before, "seed_serve_requests_total", **code_ok) == 1
    assert (
        total(after, "seed_serve_requests_total", task="completion", status="400")
        - total(before, "seed_serve_requests_total", task="completion", status="400")
        == 1
    )
    alpha = {"tenant": "alpha", "task": "completion"}
    assert delta(after, before, "seed_serve_prompt_tokens_total", **alpha) == (
        plain.usage.prompt_tokens + streamed.prompt_tokens
    )
    assert delta(after, before, "seed_serve_completion_tokens_total", **alpha) == (
        plain.usage.completion_tokens + streamed.completion_tokens
    )
    code = {"tenant": "alpha", "task": "code_completion"}
    assert (
        delta(after, before, "seed_serve_prompt_tokens_total", **code)
        == code_usage["prompt_tokens"]
    )
    assert (
        delta(after, before, "seed_serve_completion_tokens_total", **code)
        == code_usage["completion_tokens"]
    )
    # One duration and one first-token observation per answered request (not for errors).
    timing = {"task": "completion", "model": TINY_MODEL, "adapter": ""}
    assert delta(after, before, "seed_serve_request_duration_seconds_count", **timing) == 2
    durations = "seed_serve_request_duration_seconds_count"
    assert (
        total(after, durations, task="completion") - total(before, durations, task="completion")
        == 4  # the 400 and the 401 too
    )
    assert delta(after, before, "seed_serve_time_to_first_token_seconds_count", **timing) == 2
    # Both answers had more than one token: each gives one time-per-output-token sample.
    assert delta(after, before, "seed_serve_time_per_output_token_seconds_count", **timing) == 2
    assert (
        delta(after, before, "seed_serve_admission_queue_wait_seconds_count", lane="completion")
        == 3
    )
    assert delta(after, before, "seed_serve_rejections_total", reason="auth") == 1
    assert delta(after, before, "seed_serve_rejections_total", reason="invalid") == 1
    assert value(after, "seed_serve_inflight_requests") == 0
    # The 5 ms bucket exists: buckets are fine-grained for code completion.
    assert ("seed_serve_time_to_first_token_seconds_bucket",
            frozenset({**timing, "le": "0.005"}.items())) in after  # fmt: skip


def usage_rows(gateway: SeedServeProcess, admin: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(
        gateway.base_url + "/v1/admin/usage", params=params, headers={"x-api-key": admin}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def usage_of(rows: list[dict[str, Any]], tenant: str, task: str) -> tuple[int, int, int]:
    """(requests, completion tokens, errors) of ``tenant``'s ``task`` today."""
    found = [r for r in rows if r["tenant"] == tenant and r["task"] == task]
    return (
        sum(r["requests"] for r in found),
        sum(r["completion_tokens"] for r in found),
        sum(r["errors"] for r in found),
    )


def test_usage_records_from_every_gateway_for_chargeback(gateways: Gateways) -> None:
    """Requests through either gateway reach the shared usage records, which
    either gateway answers, as JSON and as CSV; developers' keys may not read them."""
    # Earlier tests' requests may still be pending in one gateway: when both
    # answer the same, each has flushed what it counted.
    deadline = time.monotonic() + 60
    while (before := usage_rows(gateways.b, gateways.admin)) != usage_rows(
        gateways.a, gateways.admin
    ):
        assert time.monotonic() < deadline, "the gateways' usage never agreed"
        time.sleep(0.5)
    client = openai.OpenAI(
        base_url=gateways.a.base_url + "/v1", api_key=gateways.alpha, max_retries=0
    )
    answers = [
        client.completions.create(model=TINY_MODEL, prompt="def f(x):", max_tokens=3)
        for _ in range(2)
    ]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TINY_MODEL, prompt="x", max_tokens=-1)
    coded = code_completion(gateways.b, gateways.beta)
    assert coded.status_code == 200, coded.text
    tokens = sum(a.usage.completion_tokens for a in answers if a.usage is not None)
    expected_alpha = tuple(
        x + y for x, y in zip(usage_of(before, "alpha", "completion"), (3, tokens, 1), strict=True)
    )
    expected_beta = usage_of(before, "beta", "code_completion")[0] + 1
    deadline = time.monotonic() + 60
    while True:  # each gateway adds its counts to Redis every 0.5 s
        # Each gateway answers for both: a's requests seen from b and b's from a.
        rows = usage_rows(gateways.b, gateways.admin)
        other = usage_rows(gateways.a, gateways.admin)
        seen = (usage_of(rows, "alpha", "completion"), usage_of(other, "beta", "code_completion"))
        if seen[0] == expected_alpha and seen[1][0] == expected_beta:
            break
        assert time.monotonic() < deadline, (seen, expected_alpha, expected_beta)
        time.sleep(0.5)
    assert all(r["user"] == "dev" for r in rows if r["tenant"] in ("alpha", "beta"))
    csv_answer = httpx.get(
        gateways.a.base_url + "/v1/admin/usage",
        params={"format": "csv", "tenant": "beta"},
        headers={"x-api-key": gateways.admin},
    )
    assert csv_answer.status_code == 200, csv_answer.text
    lines = csv_answer.text.splitlines()
    assert lines[0].startswith("day,tenant,user,task,requests,") and len(lines) >= 2
    assert all(line.split(",")[1] == "beta" for line in lines[1:])
    refused = httpx.get(
        gateways.a.base_url + "/v1/admin/usage", headers={"x-api-key": gateways.alpha}
    )
    assert refused.status_code == 403


def test_labels_stay_bounded(gateways: Gateways) -> None:
    samples = scrape(gateways.metrics_url + "/metrics")
    replicas = {r["id"] for r in replica_endpoints_of(gateways)}
    allowed: dict[str, set[str]] = {
        "task": set(TASKS),
        "model": {TINY_MODEL, "unknown"},
        "tenant": {"alpha", "beta", "ops", "anonymous"},
        "lane": {"completion", "repair", "tests"},
        "reason": set(REJECTION_REASONS) | set(CANCEL_REASONS),
        "replica": replicas,
        "language": set(LANGUAGES) | {"unknown", "other"},
        "event": {"shown", "accepted", "dismissed"},
        "outcome": {"ok", "failed", "timeout", "killed"},
        "mode": {"open", "closed"},
        "result": {"ok", "rejected"},
        "adapter": {""},  # registered team adapters only: none on these gateways
    }
    seen_names: set[str] = set()
    for (name, labels), _ in samples.items():
        if not name.startswith("seed_serve_"):
            continue
        for label, label_value in labels:
            if label in ("le", "quantile"):
                continue
            seen_names.add(label)
            assert label in allowed or label == "status", f"{name} has an unbounded label {label}"
            if label == "status":
                assert label_value.isdigit() and len(label_value) == 3
            else:
                assert label_value in allowed[label], f"{name}{{{label}={label_value!r}}}"
            assert gateways.alpha not in label_value and gateways.alpha_key_id != label_value
    assert {"task", "model", "tenant", "lane", "status", "replica"} <= seen_names


def replica_endpoints_of(gateways: Gateways) -> list[dict[str, Any]]:
    response = httpx.get(
        gateways.a.base_url + "/v1/admin/replicas", headers={"x-api-key": gateways.admin}
    )
    return list(response.json()["replicas"])


# --------------------------------------------------------------------------- replicas and engines


def test_replica_gauges_and_engine_metrics(
    gateways: Gateways, tiny_stack: SeedServeProcess
) -> None:
    engines = {r["replica_id"]: r for r in replica_endpoints(tiny_stack)}
    assert len(engines) == 2
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(gateways.metrics_url + "/metrics")
        up = {
            dict(ls)["replica"]: v for (n, ls), v in samples.items() if n == "seed_serve_replica_up"
        }
        if set(up) == set(engines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for rid in engines:
        assert value(samples, "seed_serve_replica_up", replica=rid, model=TINY_MODEL) == 1
        assert value(samples, "seed_serve_replica_ready", replica=rid, model=TINY_MODEL) == 1
        for gauge in ("running_requests", "waiting_requests", "kv_cache_usage_ratio",
                      "prefix_cache_hit_ratio"):  # fmt: skip
            assert ("seed_serve_replica_" + gauge, frozenset({("replica", rid)})) in samples

    # The engines' own metrics through the gateway, each series labelled with its replica.
    url = gateways.metrics_url + "/metrics/engines"
    deadline = time.monotonic() + 30
    while True:
        engine_side = {
            rid: _engine_total(r, "vllm:generation_tokens_total") for rid, r in engines.items()
        }
        through = scrape(url)
        relayed = {
            rid: total(through, "vllm:generation_tokens_total", replica=rid) for rid in engines
        }
        if relayed == engine_side or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the gateway polls each engine once a second
    assert relayed == engine_side and sum(relayed.values()) > 0
    text = httpx.get(url).text
    for replica in engines.values():
        assert replica["token"] not in text and replica["url"] not in text
    # On the main port the same path needs an admin key (here: the metrics port serves it).
    assert httpx.get(gateways.b.base_url + "/metrics/engines").status_code == 401
    assert (
        httpx.get(
            gateways.b.base_url + "/metrics/engines", headers={"x-api-key": gateways.alpha}
        ).status_code
        == 403
    )
    main = httpx.get(
        gateways.b.base_url + "/metrics/engines", headers={"x-api-key": gateways.admin}
    )
    assert main.status_code == 200 and "vllm:num_requests_running{" in main.text


def _engine_total(replica: dict[str, Any], name: str) -> float:
    text = httpx.get(
        replica["url"] + "/metrics", headers={"Authorization": f"Bearer {replica['token']}"}
    ).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


# --------------------------------------------------------------------------- suggestion events


def test_suggestion_events_round_trip(gateways: Gateways) -> None:
    gw = gateways.a
    answer = code_completion(gw, gateways.alpha)
    assert answer.status_code == 200
    completion = answer.json()
    cid, text = completion["id"], completion["text"]
    before = scrape(gateways.metrics_url + "/metrics")

    shown = event(gw, gateways.alpha, completion_id=cid, event="shown")
    assert shown.status_code == 200 and shown.json()["recorded"] is True
    accepted = event(gw, gateways.alpha, completion_id=cid, event="accepted")
    assert accepted.status_code == 200 and accepted.json() == {
        "object": "code.event", "completion_id": cid, "event": "accepted", "recorded": True,
    }  # fmt: skip
    # An IDE retry is acknowledged, not counted twice; the other outcome conflicts.
    again = event(gw, gateways.alpha, completion_id=cid, event="accepted")
    assert again.status_code == 200 and again.json()["recorded"] is False
    conflict = event(gw, gateways.alpha, completion_id=cid, event="dismissed")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "outcome_already_reported"
    time.sleep(0.2)
    after = scrape(gateways.metrics_url + "/metrics")
    labels = {"task": "code_completion", "tenant": "alpha", "language": "python"}
    assert delta(after, before, "seed_serve_suggestions_total", **labels, event="shown") == 1
    assert delta(after, before, "seed_serve_suggestions_total", **labels, event="accepted") == 1
    assert delta(after, before, "seed_serve_suggestions_total", **labels, event="dismissed") == 0
    # Without accepted_chars, the whole suggestion counts as accepted.
    assert delta(after, before, "seed_serve_suggestion_accepted_chars_total", **labels) == len(text)
    # The audit log has the event, tied to the key that reported it.
    deadline = time.monotonic() + 5
    audited: list[dict[str, Any]] = []
    while not audited and time.monotonic() < deadline:
        audited = [
            line
            for line in gw.audit_lines()
            if line.get("suggestion", {}).get("completion_id") == cid
            and line["suggestion"]["event"] == "accepted"
        ]
        time.sleep(0.1)
    assert [line["suggestion"]["recorded"] for line in audited] == [True, False]
    assert {line["key_id"] for line in audited} == {gateways.alpha_key_id}


def test_events_for_openai_completions_partial_accepts_and_bad_input(gateways: Gateways) -> None:
    gw = gateways.a
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gateways.alpha, max_retries=0)
    # A streamed completion: its id is the one the chunks carry.
    stream = list(
        client.completions.create(model=TINY_MODEL, prompt="x = ", max_tokens=8, stream=True)
    )
    cid = stream[0].id
    before = scrape(gateways.metrics_url + "/metrics")
    accepted = event(gw, gateways.alpha, completion_id=cid, event="accepted", accepted_chars=3,
                     language="ts")  # fmt: skip
    assert accepted.status_code == 200, accepted.text
    after = scrape(gateways.metrics_url + "/metrics")
    labels = {"task": "completion", "tenant": "alpha", "language": "typescript"}
    assert delta(after, before, "seed_serve_suggestions_total", **labels, event="accepted") == 1
    assert delta(after, before, "seed_serve_suggestion_accepted_chars_total", **labels) == 3

    plain = client.completions.create(model=TINY_MODEL, prompt="y = ", max_tokens=4)
    length = len(plain.choices[0].text)

    def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        return dict(response.json()["error"])

    # Another key's completion looks exactly like an unknown one.
    for key, completion_id in ((gateways.beta, plain.id), (gateways.alpha, "cmpl-nope")):
        error = error_of(event(gw, key, completion_id=completion_id, event="shown"), 404)
        assert error["code"] == "completion_not_found" and error["param"] == "completion_id"
    too_many = event(gw, gateways.alpha, completion_id=plain.id, event="accepted",
                     accepted_chars=length + 1)  # fmt: skip
    assert error_of(too_many, 400)["param"] == "accepted_chars"
    wrong_event = event(gw, gateways.alpha, completion_id=plain.id, event="dismissed",
                        accepted_chars=1)  # fmt: skip
    assert error_of(wrong_event, 400)["param"] == "accepted_chars"
    assert (
        error_of(event(gw, gateways.alpha, completion_id=plain.id, event="liked"), 400)["param"]
        == "event"
    )
    assert error_of(event(gw, gateways.alpha, event="shown"), 400)["param"] == "completion_id"
    assert error_of(event(gw, "sk-seed-bad", completion_id=plain.id, event="shown"), 401)
    # None of the refused events counted anything, so the first real one still can.
    dismissed = event(gw, gateways.alpha, completion_id=plain.id, event="dismissed")
    assert dismissed.status_code == 200 and dismissed.json()["recorded"] is True


def test_events_reach_any_gateway_through_redis(gateways: Gateways) -> None:
    answer = code_completion(gateways.a, gateways.beta)
    assert answer.status_code == 200
    cid = answer.json()["id"]
    # The event goes to the other gateway (a load balancer may send it anywhere).
    on_b = event(gateways.b, gateways.beta, completion_id=cid, event="dismissed")
    assert on_b.status_code == 200 and on_b.json()["recorded"] is True
    # The first gateway sees the same state: a repeat is not counted, the other outcome conflicts.
    assert (
        event(gateways.a, gateways.beta, completion_id=cid, event="dismissed").json()["recorded"]
        is False
    )
    assert event(gateways.a, gateways.beta, completion_id=cid, event="accepted").status_code == 409


# --------------------------------------------------------------------------- logs


def test_logs_are_json_with_request_ids_and_no_prompts(gateways: Gateways) -> None:
    gw = gateways.a
    request_id = "log-test-" + str(time.monotonic_ns())
    response = httpx.post(
        gw.base_url + "/v1/completions",
        json={"model": TINY_MODEL, "prompt": SECRET_PROMPT, "max_tokens": 4},
        headers={"Authorization": f"Bearer {gateways.alpha}", "x-request-id": request_id},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while not mine and time.monotonic() < deadline:
        time.sleep(0.2)
        mine = [
            entry for entry in _json_lines(gw.log_path) if entry.get("request_id") == request_id
        ]
    assert mine, gw.log()[-3000:]
    access = [e for e in mine if e.get("route") == "/v1/completions"]
    assert access and access[0]["status"] == 200 and access[0]["level"] == "info"
    assert access[0]["tenant"] == "alpha" and access[0]["completion_tokens"] > 0
    # Even at debug level, prompts and keys stay out of the logs.
    log = gw.log()
    assert SECRET_PROMPT not in log and "very_private_function_4711" not in log
    assert gateways.alpha not in log


def _json_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries
