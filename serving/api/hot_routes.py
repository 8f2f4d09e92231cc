"""The hottest routes (``POST /v1/completions``, ``/v1/chat/completions`` and
the IDEs' ``/v1/code/completions``), served in plain ASGI in front of FastAPI's
router.

Why: FastAPI's per-request machinery (route matching, dependency solving,
content-type parsing with ``email.message``, three layers of exception
wrappers) was a fifth of the gateway's CPU per request, i.e. of its capacity
(``benchmarks/overhead capacity``). Here a request is parsed and validated
exactly as FastAPI does it (``json.loads``, then the same pydantic model) and
handed to the same serving logic; errors are answered by the same code
(``serving.api.errors``).

Only a request that is certainly valid takes this path: a body that is not
JSON, not a JSON object, or fails validation is handed on to FastAPI
unchanged, so every bad-input answer is the one FastAPI's route gives. The
routes stay declared in FastAPI too (OpenAPI, and that fallback).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.admission.context import RequestContext, context_of
from serving.api.code_protocol import CodeCompletionRequest
from serving.api.code_serving import CodeServing
from serving.api.disconnect import ClientDisconnected, unless_disconnected
from serving.api.errors import api_error_answer, client_gone_answer
from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.api.serving import OpenAIServing
from serving.errors import APIError


@dataclass(frozen=True)
class HotRoute:
    """A POST route: its request model, and the serving call that answers it
    (the same pair its FastAPI route uses)."""

    model: type[BaseModel]
    serve: Callable[[Any, RequestContext], Awaitable[Response]]


def hot_routes(serving: OpenAIServing, code: CodeServing) -> dict[str, HotRoute]:
    return {
        "/v1/completions": HotRoute(CompletionRequest, serving.completions),
        "/v1/chat/completions": HotRoute(ChatCompletionRequest, serving.chat),
        "/v1/code/completions": HotRoute(CodeCompletionRequest, code.completion),
    }


class _Gone(Exception):
    """The client left while sending its body."""


def _is_json(scope: Scope) -> bool:
    """A JSON body as FastAPI sees one: no content type, or ``application/json``
    (anything else, e.g. ``+json`` types or odd casing, goes to FastAPI)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip()
            return media == b"application/json"
    return True


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the already-read body given again first."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class HotRoutes:
    """ASGI middleware: serves the hot routes, passes everything else on."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, HotRoute]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except _Gone:
            return  # nobody to answer
        except APIError as exc:  # the body is over the size limit
            await api_error_answer(scope, exc)(scope, receive, send)
            return
        request = _valid_request(route.model, body)
        if request is None:  # FastAPI answers it (and every error) as its route does
            await self.app(scope, _replayed(body, receive), send)
            return
        try:
            response = await unless_disconnected(receive, route.serve(request, context_of(scope)))
        except APIError as exc:
            response = api_error_answer(scope, exc)
        except ClientDisconnected:
            response = client_gone_answer(scope)
        await response(scope, receive, send)


def _valid_request(model: type[BaseModel], body: bytes) -> BaseModel | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:  # includes bytes that are not UTF-8
        return None
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None
