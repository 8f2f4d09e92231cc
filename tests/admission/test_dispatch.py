"""Dispatch through the whole gateway against scripted engines (the transport
seam), in milliseconds: retries before the first token and none after it,
failover across replicas, mid-stream failures, first-token and idle
timeouts, supersession while queued and while streaming, clients that leave,
and the load signal the router follows. The same behaviours on real vLLM
engines: tests/e2e/test_scale_out.py and test_multi_tenant.py."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.engine_link.replica_info import ReplicaState
from tests.support.asgi import Reply, ScriptedGateway, scripted_config, scripted_gateway
from tests.support.scripted_engine import Script, ScriptedEngine

BODY = {"model": "scripted", "prompt": "def f(x):", "max_tokens": 8}


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 30))


def sample(gateway: ScriptedGateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def texts(reply: Reply) -> str:
    return "".join(
        choice["text"]
        for event in reply.events()
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


def test_a_replica_that_fails_before_answering_is_retried_on_another() -> None:
    async def scenario() -> None:
        broken = ScriptedEngine("s-0", default=Script(fail_before_answer=True))
        failing = ScriptedEngine("s-1", default=Script(status=500))
        healthy = ScriptedEngine("s-2")
        async with scripted_gateway(
            broken, failing, healthy, config=_one_replica_each()
        ) as gateway:
            for stream in (False, True):
                reply = await gateway.complete(stream=stream)
                assert reply.status == 200, reply.body
                assert reply.headers["x-seed-serve-replica"] == "s-2"
                assert (texts(reply) if stream else reply.json()["choices"][0]["text"]) == (
                    " t0 t1 t2"
                )
            # Each failure counted; the failed replicas are kept away from new
            # work for a while (the second request went to s-2 at once).
            assert (len(broken.received), len(failing.received), len(healthy.received)) == (1, 1, 2)
            assert sample(gateway, "seed_serve_retries_total") == 2
            assert sample(gateway, "seed_serve_failovers_total", replica="s-0") == 1
            assert sample(gateway, "seed_serve_failovers_total", replica="s-1") == 1
            assert not gateway.registry.is_ready("s-0") and not gateway.registry.is_ready("s-1")
            assert gateway.registry.is_ready("s-2")

    run(scenario())


def test_when_every_replica_fails_the_answer_is_a_502_to_retry() -> None:
    async def scenario() -> None:
        engines = [ScriptedEngine(f"s-{i}", default=Script(status=500)) for i in range(2)]
        async with scripted_gateway(*engines) as gateway:
            reply = await gateway.complete()
            assert reply.status == 502
            error = reply.json()["error"]
            assert error["code"] == "replica_failed" and reply.headers["retry-after"]
            assert sum(len(e.received) for e in engines) == 2  # each tried once

    run(scenario())


def test_an_engines_own_refusal_is_the_clients_error_and_not_retried() -> None:
    async def scenario() -> None:
        refusal = b'{"error": {"message": "prompt too long for me", "param": "prompt"}}'
        picky = ScriptedEngine("s-0", default=Script(status=400, error_body=refusal))
        other = ScriptedEngine("s-1", default=Script(status=400, error_body=refusal))
        async with scripted_gateway(picky, other) as gateway:
            reply = await gateway.complete()
            assert reply.status == 400
            assert reply.json()["error"]["message"] == "prompt too long for me"
            assert reply.json()["error"]["param"] == "prompt"
            assert len(picky.received) + len(other.received) == 1

    run(scenario())


def test_no_retry_after_the_first_token_an_error_event_then_done() -> None:
    async def scenario() -> None:
        dying = ScriptedEngine("s-0", default=Script(tokens=5, die_after=2))
        spare = ScriptedEngine("s-1")
        async with scripted_gateway(dying, spare, config=_one_replica_each()) as gateway:
            reply = await gateway.complete(stream=True)
            events = reply.events()
            assert reply.status == 200
            assert texts(reply) == " t0 t1"  # what the client already had stays
            assert events[-2]["error"]["code"] == "replica_failed"
            assert events[-1] == "[DONE]"
            assert spare.received == []  # never retried after a token

    run(scenario())


def test_an_engines_error_event_mid_stream_reaches_the_client() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=4, error_event_after=1))
        async with scripted_gateway(engine) as gateway:
            relayed = await gateway.complete(stream=True)
            assert relayed.events()[-2] == {"error": {"message": "scripted mid-stream error"}}
            assert relayed.events()[-1] == "[DONE]"
            # The task path (FIM) reads it and answers in the envelope.
            fim = await gateway.complete(stream=True, suffix="\n")
            error = fim.events()[-2]["error"]
            assert error["code"] == "engine_error" and "scripted mid-stream" in error["message"]
            assert fim.events()[-1] == "[DONE]"

    run(scenario())


def test_a_first_token_that_does_not_come_in_time_is_retried_elsewhere() -> None:
    config = scripted_config(timeouts={"first_token_s": 0.5, "idle_s": 5})

    async def scenario() -> None:
        slow = ScriptedEngine("s-0", default=Script(stall_after=0))
        quick = ScriptedEngine("s-1")
        async with scripted_gateway(slow, quick, config=config) as gateway:
            reply = await gateway.complete(stream=True)
            assert reply.status == 200 and texts(reply) == " t0 t1 t2"
            assert reply.headers["x-seed-serve-replica"] == "s-1"
            await asyncio.sleep(0.01)
            assert slow.received[0].hung_up  # the stuck request was dropped

    run(scenario())


def test_a_stream_that_goes_idle_ends_with_an_error_event() -> None:
    config = scripted_config(timeouts={"first_token_s": 5, "idle_s": 0.5})

    async def scenario() -> None:
        stalling = ScriptedEngine("s-0", default=Script(tokens=5, stall_after=2))
        async with scripted_gateway(stalling, config=config) as gateway:
            reply = await gateway.complete(stream=True)
            assert texts(reply) == " t0 t1"
            assert reply.events()[-2]["error"]["code"] == "replica_failed"
            assert reply.events()[-1] == "[DONE]"
            await asyncio.sleep(0.01)
            assert stalling.received[0].hung_up

    run(scenario())


def test_a_plain_answer_whose_replica_turns_unhealthy_is_retried() -> None:
    async def scenario() -> None:
        frozen = ScriptedEngine("s-0", default=Script(tokens=1, pace_s=30))
        healthy = ScriptedEngine("s-1", default=Script(tokens=1))
        async with scripted_gateway(frozen, healthy, config=_one_replica_each()) as gateway:
            pending = asyncio.create_task(gateway.complete())  # round-robin: s-0 first
            await frozen.requests(1)
            gateway.cluster.states["s-0"] = ReplicaState.UNHEALTHY  # its health checks fail
            await gateway.registry.refresh()
            reply = await pending
            assert reply.status == 200 and reply.headers["x-seed-serve-replica"] == "s-1"
            assert frozen.received[0].hung_up

    run(scenario())


def _one_replica_each(**sections: Any) -> Any:
    """Round-robin, one request per replica at a time (ordering is predictable)."""
    return scripted_config(
        routing={"policy": "round_robin"},
        admission={"target_inflight_per_replica": 1, "adaptive": False},
        **sections,
    )


def test_a_newer_completion_supersedes_a_queued_one() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=2, pace_s=0.2))
        async with scripted_gateway(engine, config=_one_replica_each()) as gateway:
            busy = asyncio.create_task(_complete_doc(gateway, "a.py"))
            await asyncio.sleep(0.05)
            older = asyncio.create_task(_complete_doc(gateway, "b.py"))
            await asyncio.sleep(0.05)
            newer = await _complete_doc(gateway, "b.py")
            replaced = await older
            assert replaced.status == 409
            assert replaced.json()["error"]["code"] == "superseded"
            assert replaced.headers["x-should-retry"] == "false"  # the SDKs retry a 409
            assert newer.status == 200 and (await busy).status == 200
            assert len(engine.received) == 2  # the superseded one never reached it

    run(scenario())


def test_a_newer_completion_supersedes_a_streaming_one() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=20, pace_s=0.05))
        async with scripted_gateway(engine) as gateway:
            older = asyncio.create_task(_complete_doc(gateway, "x.py", stream=True))
            await engine.requests(1)
            await asyncio.sleep(0.1)
            newer = await _complete_doc(gateway, "x.py", stream=True)
            replaced = await older
            assert replaced.events()[-2]["error"]["code"] == "superseded"
            assert replaced.events()[-1] == "[DONE]"
            assert engine.received[0].hung_up  # vLLM aborts it
            assert texts(newer).startswith(" t0 t1")
            assert sample(gateway, "seed_serve_cancellations_total", reason="superseded") == 1

    run(scenario())


async def _complete_doc(gateway: ScriptedGateway, document: str, stream: bool = False) -> Reply:
    return await gateway.call(
        "POST",
        "/v1/completions",
        json_body={**BODY, "stream": stream},
        headers={"x-seed-serve-document": document},
    )


def test_a_client_that_leaves_aborts_the_engine_request() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=50, pace_s=0.05))
        async with scripted_gateway(engine) as gateway:
            for stream in (True, False):
                leave = asyncio.Event()
                asyncio.get_running_loop().call_later(0.2, leave.set)
                reply = await gateway.call(
                    "POST", "/v1/completions", json_body={**BODY, "stream": stream}, leave=leave
                )
                assert not reply.complete
                await asyncio.sleep(0.01)
                assert engine.received[-1].hung_up and not engine.received[-1].finished
            assert engine.running == 0
            assert sample(gateway, "seed_serve_cancellations_total", reason="disconnect") == 2

    run(scenario())


def test_a_client_that_leaves_at_done_was_answered() -> None:
    """The SDKs close the response at ``data: [DONE]``, which can come before
    the engine's end of the response: the request was answered all the same
    (not counted as a client that left), and its tokens are counted."""

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=4, end_after_done_s=0.3))
        async with scripted_gateway(engine) as gateway:
            body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
            reply = await gateway.call(
                "POST", "/v1/completions", json_body=body, leave_at=b"data: [DONE]\n\n"
            )
            assert reply.events()[-1] == "[DONE]" and reply.events()[-2]["usage"]
            assert not reply.complete  # it left before the response's last byte
            await asyncio.sleep(0.4)
            # The engine's answer was read to its end (its connection is kept).
            assert engine.received[0].finished and not engine.received[0].hung_up
            assert sample(gateway, "seed_serve_cancellations_total", reason="disconnect") == 0
            labels = {"task": "completion", "model": "scripted", "adapter": ""}
            assert sample(gateway, "seed_serve_requests_total", **labels, status="200") == 1
            tokens = sample(
                gateway, "seed_serve_completion_tokens_total", tenant="anonymous", task="completion"
            )
            assert tokens == 4

    run(scenario())


def test_least_loaded_routing_follows_the_engines_load() -> None:
    config = scripted_config(routing={"policy": "least_loaded"})

    async def scenario() -> None:
        busy = ScriptedEngine("s-0")
        idle = ScriptedEngine("s-1")
        async with scripted_gateway(busy, idle, config=config) as gateway:
            busy.extra_waiting = 6  # queued there by other gateways, as its metrics say
            await gateway.registry.refresh()
            served = [(await gateway.complete()).headers["x-seed-serve-replica"] for _ in range(6)]
            assert served == ["s-1"] * 6
            busy.extra_waiting, idle.extra_waiting = 0, 6
            await gateway.registry.refresh()
            served = [(await gateway.complete()).headers["x-seed-serve-replica"] for _ in range(3)]
            assert served == ["s-0"] * 3
            # The load is exported as the replicas' gauges too.
            assert sample(gateway, "seed_serve_replica_waiting_requests", replica="s-1") == 6

    run(scenario())


def test_a_completion_superseded_while_its_request_is_on_the_way_is_aborted() -> None:
    """Superseded between reaching the engine and its answer's headers (before
    the gateway could abort it): it must still end, not run on unseen."""

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=20, pace_s=0.05, headers_delay_s=0.1))
        async with scripted_gateway(engine) as gateway:
            older = asyncio.create_task(_complete_doc(gateway, "x.py"))
            await engine.requests(1)  # no pause: its headers are not there yet
            newer = await _complete_doc(gateway, "x.py")
            replaced = await older
            assert replaced.status == 409
            assert replaced.json()["error"]["code"] == "superseded"
            assert engine.received[0].hung_up and not engine.received[0].finished
            assert newer.status == 200

    run(scenario())
