"""Every error the gateway answers, in OpenAI's envelope; handlers live here only."""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.disconnect import ClientDisconnected
from serving.errors import APIError, api_error_for_status

logger = logging.getLogger("seed_serve.api")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_payload(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


def sse_error_event(exc: APIError) -> bytes:
    """A mid-stream error as an SSE event; the caller follows it with ``[DONE]``."""
    return b"data: " + json.dumps(exc.envelope()).encode() + b"\n\n"


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p != "body"]
    # Drop pydantic's union-branch names (e.g. 'str', 'list[int]') from the path.
    named = [
        p
        for p in parts
        if isinstance(p, int) or (not any(ch in str(p) for ch in "[]") and str(p) not in _TYPE_TAGS)
    ]
    text = ""
    for part in named:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "constrained-str"}


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """One clear sentence (and the field) from pydantic's error list."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    param = _param_from_loc(loc)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    if kind == "missing" and loc == ("body",):
        return "The request body is missing: send a JSON object.", None
    if kind in ("model_attributes_type", "dict_type") and param is None:
        return "The request body must be a JSON object.", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "string_unicode":
        return f"Invalid value for '{param}': must be valid UTF-8 text.", param
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}.", param


def api_error_answer(scope: MutableMapping[str, Any], exc: APIError) -> JSONResponse:
    """The answer to an APIError raised while serving ``scope`` (noted on its context)."""
    context = scope.get("state", {}).get("ctx")
    if context is not None:
        context.error_code = exc.code
        if exc.code == "superseded":
            context.outcome = "superseded"
    return error_response(exc)


def client_gone_answer(scope: MutableMapping[str, Any]) -> Response:
    """The answer to a client that left before it (nobody reads it)."""
    context = scope.get("state", {}).get("ctx")
    if context is not None:
        context.outcome = "cancelled"
    # 499 is what the audit log and metrics record.
    return Response(status_code=499)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return api_error_answer(request.scope, exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = validation_message(list(exc.errors()))
    return JSONResponse(
        error_payload(message, error_type="invalid_request_error", param=param),
        status_code=400,
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = "Unknown route. See /v1/models, /v1/completions and /v1/chat/completions."
    else:
        message = str(exc.detail)
    error_type = _ERROR_TYPES.get(status) or api_error_for_status(status).error_type
    return JSONResponse(
        error_payload(message, error_type=error_type),
        status_code=status,
        headers=dict(exc.headers or {}),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception(
        "unhandled error on %s (request %s)",
        request.url.path,
        request.scope.get("state", {}).get("request_id", "-"),
    )
    return JSONResponse(
        error_payload(
            "The server had an error while processing your request.", error_type="server_error"
        ),
        status_code=500,
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    return client_gone_answer(request.scope)


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
