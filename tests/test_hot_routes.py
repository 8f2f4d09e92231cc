"""The hot routes' ASGI path (``serving.api.hot_routes``): a valid request is
served without FastAPI; everything else reaches FastAPI byte for byte, so its
answers stay FastAPI's. End to end (real engines, real errors) the same routes
are covered by test_openai_api.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import JSONResponse, Response

from serving.admission.context import RequestContext
from serving.api.hot_routes import HotRoute, HotRoutes
from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.errors import NotFoundError, PayloadTooLargeError

COMPLETION = {"model": "m", "prompt": "def f(x):", "max_tokens": 8, "temperature": 0.0}


class RecordingServing:
    """Records what the hot routes hand to the serving logic."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any, RequestContext]] = []
        self.error = error

    async def completions(self, request: CompletionRequest, ctx: RequestContext) -> Response:
        self.calls.append(("completions", request, ctx))
        if self.error:
            raise self.error
        return JSONResponse({"served": "completions", "prompt": request.prompt})

    async def chat(self, request: ChatCompletionRequest, ctx: RequestContext) -> Response:
        self.calls.append(("chat", request, ctx))
        return JSONResponse({"served": "chat"})


def hot(inner: Any, serving: RecordingServing) -> HotRoutes:
    return HotRoutes(
        inner,
        routes={
            "/v1/completions": HotRoute(CompletionRequest, serving.completions),
            "/v1/chat/completions": HotRoute(ChatCompletionRequest, serving.chat),
        },
    )


class FastAPIStandIn:
    """The app behind the hot routes: records what reached it, and the body it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await JSONResponse({"served": "fastapi"})(scope, receive, send)


def scope_for(
    path: str, *, method: str = "POST", content_type: bytes | None = b"application/json"
) -> dict[str, Any]:
    headers = [(b"host", b"gateway")]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    ctx = RequestContext(request_id="r1", route=path, method=method, client_ip="127.0.0.1")
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "state": {"ctx": ctx},
    }


async def call(
    app: HotRoutes,
    scope: dict[str, Any],
    messages: list[dict[str, Any]],
    gone: asyncio.Event | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Status and JSON answer; the client leaves once answered, or when ``gone`` is set."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []
    gone = gone or asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            gone.set()

    await asyncio.wait_for(app(scope, receive, send), 5)
    if not sent:
        return 0, None
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body else None


def body_of(data: bytes, parts: int = 1) -> list[dict[str, Any]]:
    size = max(1, -(-len(data) // parts))
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]


def run(app: HotRoutes, scope: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[int, Any]:
    return asyncio.run(call(app, scope, messages))


def test_a_valid_request_is_served_without_fastapi() -> None:
    serving, inner = RecordingServing(), FastAPIStandIn()
    app = hot(inner, serving)
    scope = scope_for("/v1/completions", content_type=b"application/json; charset=utf-8")
    status, answer = run(app, scope, body_of(json.dumps(COMPLETION).encode(), parts=3))
    assert (status, answer) == (200, {"served": "completions", "prompt": "def f(x):"})
    assert inner.bodies == []
    [(route, request, ctx)] = serving.calls
    assert route == "completions" and ctx is scope["state"]["ctx"]
    assert request == CompletionRequest.model_validate(COMPLETION)
    assert request.model_fields_set == set(
        COMPLETION
    )  # unset fields stay unset (forwarded as sent)

    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    status, answer = run(
        app,
        scope_for("/v1/chat/completions", content_type=None),
        body_of(json.dumps(chat).encode()),
    )
    assert (status, answer) == (200, {"served": "chat"})
    assert serving.calls[-1][0] == "chat" and inner.bodies == []


def test_anything_not_certainly_valid_goes_to_fastapi_unchanged() -> None:
    cases = [
        ("/v1/completions", "POST", b"application/json", b"{not json"),
        ("/v1/completions", "POST", b"application/json", b"[1, 2]"),
        ("/v1/completions", "POST", b"application/json", b"\xff\xfe\x00"),
        ("/v1/completions", "POST", b"application/json", b""),
        (
            "/v1/completions",
            "POST",
            b"application/json",
            json.dumps({**COMPLETION, "n": 0}).encode(),
        ),
        (
            "/v1/completions",
            "POST",
            b"application/json",
            json.dumps({**COMPLETION, "bogus": 1}).encode(),
        ),
        ("/v1/completions", "POST", b"text/plain", json.dumps(COMPLETION).encode()),
        ("/v1/completions", "POST", b"application/vnd.api+json", json.dumps(COMPLETION).encode()),
        ("/v1/completions", "GET", b"application/json", b""),
        ("/v1/chat/completions", "POST", b"application/json", json.dumps(COMPLETION).encode()),
        ("/v1/models", "POST", b"application/json", json.dumps(COMPLETION).encode()),
    ]
    for path, method, content_type, data in cases:
        serving, inner = RecordingServing(), FastAPIStandIn()
        app = hot(inner, serving)
        status, answer = run(
            app, scope_for(path, method=method, content_type=content_type), body_of(data, parts=2)
        )
        assert (status, answer) == (200, {"served": "fastapi"}), (path, method, content_type, data)
        assert inner.bodies == [data], data
        assert serving.calls == []


def test_errors_are_answered_in_the_openai_envelope() -> None:
    app = hot(
        FastAPIStandIn(),
        RecordingServing(NotFoundError("no such model", param="model", code="model_not_found")),
    )
    scope = scope_for("/v1/completions")
    status, answer = run(app, scope, body_of(json.dumps(COMPLETION).encode()))
    assert status == 404
    assert answer == {
        "error": {
            "message": "no such model",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert scope["state"]["ctx"].error_code == "model_not_found"


def test_a_body_over_the_limit_is_refused() -> None:
    async def too_large() -> dict[str, Any]:
        raise PayloadTooLargeError(
            "Request body is larger than the limit of 10 bytes.", code="request_too_large"
        )

    serving, inner = RecordingServing(), FastAPIStandIn()
    app = hot(inner, serving)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope_for("/v1/completions"), too_large, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert serving.calls == [] and inner.bodies == []


def test_a_client_that_leaves_while_sending_gets_nothing() -> None:
    serving, inner = RecordingServing(), FastAPIStandIn()
    app = hot(inner, serving)
    messages = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.disconnect"},
    ]
    status, answer = run(app, scope_for("/v1/completions"), messages)
    assert (status, answer) == (0, None)
    assert serving.calls == [] and inner.bodies == []


def test_a_client_that_leaves_while_served_stops_the_work() -> None:
    cancelled = asyncio.Event()

    async def scenario() -> None:
        gone = asyncio.Event()

        class SlowServing(RecordingServing):
            async def completions(
                self, request: CompletionRequest, ctx: RequestContext
            ) -> Response:
                gone.set()  # the client leaves while its answer is being made
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
                raise AssertionError("not cancelled")

        scope = scope_for("/v1/completions")
        app = hot(FastAPIStandIn(), SlowServing())
        status, _ = await call(app, scope, body_of(json.dumps(COMPLETION).encode()), gone=gone)
        assert cancelled.is_set()
        assert scope["state"]["ctx"].outcome == "cancelled"
        assert status == 499

    asyncio.run(scenario())


def test_the_app_serves_its_hot_routes_with_the_models_of_its_fastapi_routes() -> None:
    """The fast path and FastAPI's route validate a body with the same model,
    so neither accepts what the other would refuse."""
    from fastapi.routing import APIRoute

    from serving.api.app import build_app
    from serving.config import ServingConfig
    from serving.engines.registry import ReplicaRegistry, StaticSource

    config = ServingConfig.model_validate(
        {
            "auth": {"enabled": False, "demo_key_file": None},
            "audit": {"file": None},
            "replica_groups": [{"name": "g", "engine": {"model": "m", "device": "cpu"}}],
        }
    )
    app = build_app(config, ReplicaRegistry(StaticSource([]), refresh_interval_s=5.0))
    [middleware] = [m for m in app.user_middleware if m.cls is HotRoutes]
    routes: dict[str, HotRoute] = middleware.kwargs["routes"]
    assert set(routes) == {"/v1/completions", "/v1/chat/completions", "/v1/code/completions"}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path in routes and "POST" in route.methods:
            [body] = route.dependant.body_params
            assert body.field_info.annotation is routes[route.path].model, route.path
            routes = {path: r for path, r in routes.items() if path != route.path}
    assert routes == {}  # each hot route is also a FastAPI route
