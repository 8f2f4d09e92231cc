"""Answers cut short (the client left, a newer keystroke superseded them) used
the engine all the same: their tokens are counted (audit, quotas, metrics),
the engine's own counts where the gateway has them, else the gateway's
estimate, and the audit line says which."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from serving.config import ServingConfig
from tests.support.asgi import Reply, ScriptedGateway, scripted_config, scripted_gateway
from tests.support.scripted_engine import Script, ScriptedEngine

PROMPT = "def fibonacci(n):"  # the scripted model has no tokenizer: its bytes are counted


def _config(tmp_path: Path, **sections: Any) -> tuple[ServingConfig, Path]:
    audit = tmp_path / "audit.jsonl"
    return scripted_config(audit={"file": str(audit)}, **sections), audit


def _audit(path: Path) -> dict[str, dict[str, Any]]:
    lines = (json.loads(line) for line in path.read_text().splitlines())
    return {line["request_id"]: line for line in lines}


def _tokens(gateway: ScriptedGateway, kind: str, task: str) -> float:
    labels = {"tenant": "anonymous", "task": task}
    value = gateway.metrics.registry.get_sample_value(f"seed_serve_{kind}_tokens_total", labels)
    return value or 0.0


async def _leave_after(
    gateway: ScriptedGateway, path: str, body: dict[str, Any], chunks: int
) -> Reply:
    """A client that hangs up once ``chunks`` pieces of the answer have reached it."""
    return await gateway.call(
        "POST", path, json_body=body, leave_after=chunks, headers={"x-request-id": "cut"}
    )


DOCUMENT = {"x-seed-serve-document": "app.py"}


def _older(gateway: ScriptedGateway, body: dict[str, Any]) -> asyncio.Task[Reply]:
    """A completion for DOCUMENT (request id ``older``), on its way."""
    headers = {**DOCUMENT, "x-request-id": "older"}
    return asyncio.create_task(
        gateway.call("POST", "/v1/completions", json_body=body, headers=headers)
    )


async def _newer(
    gateway: ScriptedGateway, body: dict[str, Any], older: asyncio.Task[Reply]
) -> None:
    """A newer completion for DOCUMENT: it is answered, the older one superseded."""
    newer = await gateway.call("POST", "/v1/completions", json_body=body, headers=DOCUMENT)
    assert newer.status == 200 and (await older).status == 409


def test_a_stream_the_client_left_counts_the_prompt_and_the_tokens_relayed(
    tmp_path: Path,
) -> None:
    config, audit = _config(tmp_path)

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=50, pace_s=0.05))
        async with scripted_gateway(engine, config=config) as gateway:
            body = {"model": "scripted", "prompt": PROMPT, "max_tokens": 50, "stream": True}
            reply = await _leave_after(gateway, "/v1/completions", body, chunks=3)
            assert not reply.complete
            await asyncio.sleep(0.05)
            got, sent = len(reply.events()), engine.received[0].sent.count(b"\n\n")
            line = _audit(audit)["cut"]
            assert line["outcome"] == "cancelled" and line["usage_estimated"] is True
            assert line["prompt_tokens"] == len(PROMPT.encode())
            # What the gateway read of the engine: at least what the client got.
            assert 3 <= got <= line["completion_tokens"] <= sent < 50
            assert _tokens(gateway, "prompt", "completion") == len(PROMPT.encode())
            assert _tokens(gateway, "completion", "completion") == line["completion_tokens"]
            # A whole answer: the engine's own usage, not an estimate.
            whole = await gateway.call(
                "POST", "/v1/completions", json_body={**body, "max_tokens": 3},
                headers={"x-request-id": "whole"},
            )  # fmt: skip
            assert whole.complete
            line = _audit(audit)["whole"]
            assert line["usage_estimated"] is False and line["prompt_tokens"] == 4

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_ollama_chat_the_client_left_counts_its_messages_and_pieces(tmp_path: Path) -> None:
    """Chat messages are counted by the engine that read them (its /tokenize
    applies the chat template); by the gateway's tokenizer (their text alone)
    when the engine cannot say."""
    config, audit = _config(tmp_path)

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=50, pace_s=0.05))
        async with scripted_gateway(engine, config=config) as gateway:
            body = {"model": "scripted", "stream": True,
                    "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
            for tokenize, prompt_tokens in (
                (True, ScriptedEngine.chat_prompt_tokens(body)),
                (False, len(PROMPT.encode())),  # the message's text, in bytes here
            ):
                engine.tokenize = tokenize
                reply = await _leave_after(gateway, "/api/chat", body, chunks=3)
                await asyncio.sleep(0.05)
                got = len([line for line in reply.body.splitlines() if line])
                line = _audit(audit)["cut"]
                assert line["outcome"] == "cancelled" and line["usage_estimated"] is True
                assert line["prompt_tokens"] == prompt_tokens
                assert 3 <= got <= line["completion_tokens"] < 50

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_superseded_code_completion_counts_the_engines_own_tokens(tmp_path: Path) -> None:
    """The code tasks read the engine's token ids as they come: exact counts."""
    config, audit = _config(tmp_path)

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=40, pace_s=0.05, text=lambda i: "x"))
        async with scripted_gateway(engine, config=config) as gateway:
            body = {"prefix": "value = ", "language": "python", "max_tokens": 40,
                    "document": "app.py"}  # fmt: skip
            older = asyncio.create_task(
                gateway.call("POST", "/v1/code/completions", json_body=body,
                             headers={"x-request-id": "older"})
            )  # fmt: skip
            await engine.sent(5)
            await asyncio.sleep(0.1)  # read by the gateway
            newer = await gateway.call(
                "POST", "/v1/code/completions", json_body={**body, "max_tokens": 2}
            )
            assert newer.status == 200 and (await older).status == 409
            line = _audit(audit)["older"]
            assert line["outcome"] == "superseded" and line["usage_estimated"] is False
            assert line["prompt_tokens"] == 4  # the engine's prompt_token_ids
            assert 3 <= line["completion_tokens"] < 40  # its token ids until the cut

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_superseded_plain_answer_counts_its_prompt(tmp_path: Path) -> None:
    """vLLM reports nothing of a plain answer it was made to abort: the prompt
    it read is counted, and the tokens it generated cannot be."""
    config, audit = _config(tmp_path)

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=40, pace_s=0.05))
        async with scripted_gateway(engine, config=config) as gateway:
            body = {"model": "scripted", "prompt": PROMPT, "max_tokens": 40}
            older = _older(gateway, body)
            await engine.requests(1)
            await asyncio.sleep(0.1)
            await _newer(gateway, {**body, "max_tokens": 2}, older)
            line = _audit(audit)["older"]
            assert line["outcome"] == "superseded" and line["usage_estimated"] is True
            assert (line["prompt_tokens"], line["completion_tokens"]) == (len(PROMPT.encode()), 0)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_request_superseded_while_queued_counts_nothing(tmp_path: Path) -> None:
    """It never reached an engine."""
    config, audit = _config(
        tmp_path, admission={"target_inflight_per_replica": 1, "adaptive": False}
    )

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=10, pace_s=0.05))
        async with scripted_gateway(engine, config=config) as gateway:
            busy = asyncio.create_task(gateway.complete(max_tokens=10))
            await engine.requests(1)
            body = {"model": "scripted", "prompt": PROMPT, "max_tokens": 5}
            older = _older(gateway, body)
            await asyncio.sleep(0.05)
            await _newer(gateway, body, older)
            await busy
            assert len(engine.received) == 2  # the superseded one never reached it
            line = _audit(audit)["older"]
            assert line["outcome"] == "superseded" and line["usage_estimated"] is False
            assert (line["prompt_tokens"], line["completion_tokens"]) == (0, 0)

    asyncio.run(asyncio.wait_for(scenario(), 30))
