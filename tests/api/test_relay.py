"""The stream relay passes an engine's events on untouched and reads only what
it must (the answer's id, finish reason and usage), whatever the JSON's
spacing and key order; the usage event is dropped unless the client asked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.asgi import scripted_config, scripted_gateway
from tests.support.scripted_engine import Script, ScriptedEngine


def _scenario(tmp_path: Path, spaced: bool, include_usage: bool) -> tuple[Any, bytes, Any]:
    audit = tmp_path / "audit.jsonl"
    config = scripted_config(audit={"file": str(audit)}, telemetry={"enabled": True})

    async def scenario() -> tuple[Any, bytes, Any]:
        engine = ScriptedEngine("s-0", default=Script(tokens=4, spaced=spaced))
        async with scripted_gateway(engine, config=config) as gateway:
            body: dict[str, Any] = {"model": "scripted", "prompt": "x", "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            reply = await gateway.call("POST", "/v1/completions", json_body=body)
            answer_id = reply.events()[0]["id"]
            accepted = await gateway.call(
                "POST",
                "/v1/code/events",
                json_body={"completion_id": answer_id, "event": "accepted"},
            )
            assert accepted.status == 200, accepted.body  # the relay noted the id
        lines = [json.loads(line) for line in audit.read_text().splitlines()]
        assert lines[0]["lane"] == "completion"
        assert lines[1]["route"] == "/v1/code/events" and lines[1]["lane"] is None  # not queued
        return reply, engine.received[0].sent, lines[0]

    return asyncio.run(scenario())


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced-shuffled"])
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_the_relay_reads_any_json_and_drops_usage_unless_asked(
    tmp_path: Path, spaced: bool, include_usage: bool
) -> None:
    reply, _, audit = _scenario(tmp_path, spaced, include_usage)
    events = reply.events()
    assert events[-1] == "[DONE]"
    texts = [c["text"] for e in events[:-1] for c in e.get("choices", [])]
    assert texts == [" t0", " t1", " t2", " t3"]
    usage_events = [e for e in events[:-1] if e.get("usage")]
    assert len(usage_events) == (1 if include_usage else 0)
    # What the relay read, as the audit line says it (never parsing bytes by position).
    assert (audit["prompt_tokens"], audit["completion_tokens"]) == (4, 4)
    assert audit["finish_reason"] == "length"
    assert audit["outcome"] == "ok" and audit["status"] == 200


def test_the_relay_forwards_the_engines_bytes_untouched(tmp_path: Path) -> None:
    """Spaced, key-shuffled events arrive exactly as the engine wrote them."""
    for spaced in (False, True):
        reply, sent, _ = _scenario(tmp_path / str(spaced), spaced=spaced, include_usage=True)
        assert reply.body == sent and sent.endswith(b"data: [DONE]\n\n")
