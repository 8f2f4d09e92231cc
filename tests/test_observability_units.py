"""Units of observability: the completion store's rules, engine-metric
relabelling, bounded language labels, the JSON log format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.api.feedback import language_label
from serving.config import TelemetryConfig
from serving.engines.stats import parse_engine_metrics, relabel_engine_metrics
from serving.observability.logs import JsonFormatter, RequestIdFilter, request_id_var
from serving.observability.telemetry import (
    MemoryCompletionStore,
    OutcomeConflict,
    TrackedCompletion,
)

COMPLETION = TrackedCompletion(
    key_id="k1", tenant="alpha", task="code_completion", model="m", language="python", chars=10
)


def test_memory_store_counts_each_event_once_and_one_outcome() -> None:
    async def scenario() -> None:
        store = MemoryCompletionStore(TelemetryConfig())
        await store.remember("c1", COMPLETION)
        assert await store.get("c1") == COMPLETION
        assert await store.mark("c1", "shown") == "recorded"
        assert await store.mark("c1", "shown") == "duplicate"
        assert await store.mark("c1", "dismissed") == "recorded"
        assert await store.mark("c1", "dismissed") == "duplicate"
        with pytest.raises(OutcomeConflict) as conflict:
            await store.mark("c1", "accepted")
        assert conflict.value.earlier == "dismissed"
        assert await store.get("unknown") is None

    asyncio.run(scenario())


def test_memory_store_forgets_the_oldest_and_the_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        store = MemoryCompletionStore(TelemetryConfig(max_tracked=100, ttl_s=60))
        for i in range(101):
            await store.remember(f"c{i}", COMPLETION)
        assert await store.get("c0") is None  # evicted: one over the limit
        assert await store.get("c1") == COMPLETION
        now = __import__("time").monotonic()
        monkeypatch.setattr("serving.observability.telemetry.time.monotonic", lambda: now + 61)
        assert await store.get("c100") is None  # expired

    asyncio.run(scenario())


def test_telemetry_redis_backend_needs_a_url() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        TelemetryConfig(backend="redis")


def test_engine_metrics_are_merged_and_labelled_by_replica() -> None:
    text = (
        "# HELP vllm:num_requests_running Running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        "# HELP vllm:generation_tokens_total Generated.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="m"} 40.0\n'
    )
    other = text.replace(" 2.0", " 5.0").replace(" 40.0", " 7.0")
    rendered = relabel_engine_metrics({"r0": text, "r1": other}).decode()
    assert rendered.count("# TYPE vllm:num_requests_running gauge") == 1
    samples = {
        (s.name, s.labels["replica"]): s.value
        for family in text_string_to_metric_families(rendered)
        for s in family.samples
    }
    assert samples[("vllm:num_requests_running", "r0")] == 2.0
    assert samples[("vllm:num_requests_running", "r1")] == 5.0
    assert samples[("vllm:generation_tokens_total", "r1")] == 7.0
    stats = parse_engine_metrics(other)
    assert stats.running == 5.0
    # A replica whose text cannot be parsed is left out, not the whole answer.
    partial = relabel_engine_metrics({"r0": text, "bad": "vllm:x{ 1\n"}).decode()
    assert 'replica="r0"' in partial and 'replica="bad"' not in partial


@pytest.mark.parametrize(
    ("given", "label"),
    [("py", "python"), ("TypeScript", "typescript"), (None, "unknown"), ("markdown", "other")],
)
def test_language_labels_are_bounded(given: str | None, label: str) -> None:
    assert language_label(given) == label


def test_json_log_lines_carry_the_request_id_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("seed_serve.test-json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    token = request_id_var.set("req-42")
    try:
        log.info("answered %s", "/v1/completions", extra={"status": 200, "tenant": "alpha"})
    finally:
        request_id_var.reset(token)
    log.info("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-42" and first["message"] == "answered /v1/completions"
    assert first["status"] == 200 and first["tenant"] == "alpha" and first["level"] == "info"
    assert second["request_id"] is None


def test_a_stream_is_tracked_before_its_done_event_reaches_the_client() -> None:
    """The SDKs return at ``data: [DONE]``; an IDE's suggestion event right
    after it must find the completion already remembered."""
    from serving.admission.context import RequestContext
    from serving.api.middleware import _ResponseTracker

    order: list[str] = []

    async def client(message: dict[str, Any]) -> None:
        order.append(message["type"] + ":" + repr(message.get("body", b"")))

    async def track(ctx: RequestContext) -> None:
        order.append(f"tracked {ctx.status}")

    async def scenario() -> None:
        ctx = RequestContext(request_id="r", route="/v1/completions", method="POST", client_ip="x")
        tracker = _ResponseTracker(client, "r", ctx, track)
        await tracker.send({"type": "http.response.start", "status": 200, "headers": []})
        await tracker.send(
            {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
        )
        assert not tracker.complete
        await tracker.send(
            {
                "type": "http.response.body",
                "body": b"data: {}\n\ndata: [DONE]\n\n",
                "more_body": True,
            }
        )
        await tracker.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert tracker.complete

    asyncio.run(scenario())
    assert order == [
        "http.response.start:b''",
        "http.response.body:b'data: {}\\n\\n'",
        "tracked 200",
        "http.response.body:b'data: {}\\n\\ndata: [DONE]\\n\\n'",
        "http.response.body:b''",
    ]
