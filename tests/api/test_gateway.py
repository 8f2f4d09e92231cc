"""The gateway app's one way in (serving.api.gateway): routing by the route
table, bodies read into the route's model with FastAPI's answers to bad input,
404/405/HEAD, body limits, clients that leave, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from serving.admission.keys import create_key
from serving.api.app import build_metrics_app
from serving.api.route_table import Access, route_tasks
from serving.api.routes import GATEWAY_ROUTES
from serving.upstream.registry import ReplicaRegistry
from tests.support.asgi import call, gateway_app, scripted_config, scripted_gateway
from tests.support.scripted_engine import Script, ScriptedCluster, ScriptedEngine

PRIOR = json.loads((Path(__file__).parent / "data" / "prior_validation_answers.json").read_text())
# Where the answers differ from FastAPI's, on purpose:
CHANGED = {
    # FastAPI took a body without a content type for bytes ("must be a JSON
    # object") but its own fast path read it as JSON; now it is always JSON.
    "no content type",
    # FastAPI answered "There was an error parsing the body" to JSON that is
    # not UTF-8; now the same 400 as any other body that is not JSON.
    "bad utf8",
}


def _cases() -> list[dict[str, Any]]:
    return [case for case in PRIOR if case["case"] not in CHANGED]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c['route']} {c['case']}")
def test_bad_bodies_get_the_answers_fastapi_gave(case: dict[str, Any]) -> None:
    """The answers recorded from the gateway when FastAPI served these routes
    (tests/api/data/prior_validation_answers.json: the app not started, as
    there), given again by the one way in."""

    async def scenario() -> tuple[int, Any]:
        config = scripted_config(telemetry={"enabled": True})
        registry = ReplicaRegistry(ScriptedCluster([ScriptedEngine("m-0", model="m")]))
        app = gateway_app(config, registry)  # not started: no replica known, as recorded
        headers = {"content-type": case["content_type"]} if case["content_type"] else {}
        reply = await call(
            app, "POST", case["route"], body=case["body"].encode("latin-1"), headers=headers
        )
        return reply.status, json.loads(reply.body) if reply.body else None

    assert asyncio.run(scenario()) == (case["status"], case["answer"])


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        (None, b'{"model": "scripted", "prompt": "x", "max_tokens": 1}', 200, None),
        (None, b'{"model": "scripted", "prompt": "x", "bogus": 1}', 400, "Unrecognized"),
        ("application/json", b'{"model": "\xff"}', 400, "it is not valid JSON"),
    ],
)
def test_the_changed_answers(
    content_type: str | None, body: bytes, status: int, message: str | None
) -> None:
    async def scenario() -> Any:
        async with scripted_gateway(ScriptedEngine("s-0")) as gateway:
            headers = {"content-type": content_type} if content_type else {}
            return await gateway.call("POST", "/v1/completions", body=body, headers=headers)

    reply = asyncio.run(scenario())
    assert reply.status == status
    if message:
        assert message in reply.json()["error"]["message"]


def test_a_valid_request_reaches_the_engine_as_sent() -> None:
    """Fields the client did not set stay unset (vLLM's defaults apply), in
    any number of body chunks, with any JSON content type."""
    sent = {"model": "scripted", "prompt": "def f(x):", "max_tokens": 8, "temperature": 0.0}

    async def scenario() -> dict[str, Any]:
        engine = ScriptedEngine("s-0")
        async with scripted_gateway(engine) as gateway:
            for content_type in ("application/json; charset=utf-8", "application/vnd.x+json"):
                reply = await gateway.call(
                    "POST",
                    "/v1/completions",
                    body=json.dumps(sent).encode(),
                    headers={"content-type": content_type},
                    body_parts=3,
                )
                assert reply.status == 200, reply.body
        return engine.received[-1].payload

    payload = asyncio.run(scenario())
    assert {k: payload[k] for k in sent} == sent
    assert set(payload) == {*sent, "priority"}  # the lane's priority, nothing else added


def test_unknown_routes_wrong_methods_and_head() -> None:
    async def scenario() -> None:
        async with scripted_gateway(ScriptedEngine("s-0")) as gateway:
            missing = await gateway.call("GET", "/v1/engines")
            assert missing.status == 404
            assert missing.json()["error"]["type"] == "not_found_error"
            assert "/v1/code/completions" in missing.json()["error"]["message"]
            wrong = await gateway.call("GET", "/v1/completions")
            assert wrong.status == 405 and wrong.headers["allow"] == "POST"
            assert wrong.json()["error"]["message"] == "Method Not Allowed"
            head = await gateway.call("HEAD", "/health")
            assert head.status == 200 and head.body == b""
            assert head.headers["content-length"] == str(len(b'{"status":"ok"}'))
            for reply in (missing, wrong, head):
                assert reply.headers["x-request-id"]
                assert reply.headers["x-seed-serve-replica"] == "none"

    asyncio.run(scenario())


def test_access_comes_from_the_route(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, user = create_key(keys, tenant="t", name="dev")
    _, admin = create_key(keys, tenant="t", name="ops", role="admin")
    config = scripted_config(auth={"enabled": True, "keys_file": str(keys)})

    async def scenario() -> dict[str, int]:
        statuses = {}
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            for name, method, path, key in [
                ("open probe", "GET", "/health", None),
                ("open probe, wrong method", "POST", "/ready", None),
                ("keyed route, no key", "GET", "/v1/models", None),
                ("unknown path, no key", "GET", "/nope", None),
                ("unknown path, key", "GET", "/nope", user),
                ("admin route, user key", "GET", "/metrics", user),
                ("admin route, admin key", "GET", "/v1/admin/replicas", admin),
            ]:
                headers = {"authorization": f"Bearer {key}"} if key else {}
                statuses[name] = (await gateway.call(method, path, headers=headers)).status
        return statuses

    assert asyncio.run(scenario()) == {
        "open probe": 200,
        "open probe, wrong method": 405,
        "keyed route, no key": 401,
        "unknown path, no key": 401,
        "unknown path, key": 404,
        "admin route, user key": 403,
        "admin route, admin key": 200,
    }


def test_metrics_move_to_their_own_port_when_it_is_set(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, admin = create_key(keys, tenant="ops", name="root", role="admin")
    auth = {"enabled": True, "keys_file": str(keys)}

    async def scenario() -> tuple[int, int, int, int]:
        headers = {"authorization": f"Bearer {admin}"}
        async with scripted_gateway(
            ScriptedEngine("s-0"), config=scripted_config(auth=auth)
        ) as gateway:
            on_main = (await gateway.call("GET", "/metrics", headers=headers)).status
        config = scripted_config(auth=auth, gateway={"metrics_port": 9464})
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            moved = (await gateway.call("GET", "/metrics", headers=headers)).status
            port_app = build_metrics_app(gateway.app)
            own_port = await call(port_app, "GET", "/metrics")  # no key there
            engines = await call(port_app, "GET", "/metrics/engines")
        assert b"seed_serve_requests_total" in own_port.body
        return on_main, moved, own_port.status, engines.status

    assert asyncio.run(scenario()) == (200, 404, 200, 200)


def test_bodies_over_the_limit_are_413_declared_or_not() -> None:
    config = scripted_config(gateway={"max_request_bytes": 2048})
    body = json.dumps({"model": "scripted", "prompt": "x" * 4000}).encode()

    async def scenario() -> list[tuple[int, str]]:
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            declared = await gateway.call(
                "POST", "/v1/completions", body=body, headers={"content-length": str(len(body))}
            )
            streamed = await gateway.call("POST", "/v1/completions", body=body, body_parts=4)
        return [(r.status, r.json()["error"]["code"]) for r in (declared, streamed)]

    assert asyncio.run(scenario()) == [(413, "request_too_large")] * 2


def test_a_client_that_leaves_while_sending_or_waiting() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=2, pace_s=5.0))
        async with scripted_gateway(engine) as gateway:
            # Leaves before its body is complete: nothing reaches an engine.
            gone = asyncio.Event()
            gone.set()
            reply = await gateway.call(
                "POST",
                "/v1/completions",
                json_body={"model": "scripted", "prompt": "x"},
                body_parts=2,
                leave=gone,
            )
            assert reply.status == 0 and engine.received == []
            # Leaves while the answer is generated: the engine request is dropped.
            leave = asyncio.Event()
            asyncio.get_running_loop().call_later(0.1, leave.set)
            reply = await gateway.call(
                "POST",
                "/v1/completions",
                json_body={"model": "scripted", "prompt": "x"},
                leave=leave,
            )
            assert reply.status == 0
            await asyncio.sleep(0.01)
            assert engine.received[-1].hung_up
            assert engine.running == 0

    asyncio.run(scenario())


def test_the_openapi_document_is_the_route_table() -> None:
    async def scenario() -> dict[str, Any]:
        async with scripted_gateway(ScriptedEngine("s-0")) as gateway:
            reply = await gateway.call("GET", "/openapi.json")
            assert reply.status == 200
            return dict(reply.json())

    document = asyncio.run(scenario())
    listed = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    declared = {(r.method, r.path) for r in GATEWAY_ROUTES if r.in_schema}
    assert listed == declared
    schemas = document["components"]["schemas"]
    for route in GATEWAY_ROUTES:
        if not route.in_schema:
            continue
        operation = document["paths"][route.path][route.method.lower()]
        if route.request is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in schemas
        assert ("security" in operation) == (route.access is not Access.OPEN)
        for status in route.errors:
            assert str(status) in operation["responses"]
    assert "suffix" in schemas["CompletionRequest"]["properties"]
    assert schemas["ErrorResponse"]["required"] == ["error"]


def test_the_task_labels_are_the_route_tables() -> None:
    assert route_tasks(GATEWAY_ROUTES) == (
        "completion",
        "chat",
        "code_completion",
        "repair",
        "tests",
        "other",
    )
    tracked = {r.task for r in GATEWAY_ROUTES if r.tracked}
    assert tracked == set(route_tasks(GATEWAY_ROUTES)) - {"other"}
