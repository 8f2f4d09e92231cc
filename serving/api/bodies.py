"""Reading a request body and turning it into the route's request model.

JSON bodies are parsed as FastAPI parses them (``json.loads``, then the
route's pydantic model, ``from_attributes`` as FastAPI validates), so valid
requests, and the error for each kind of invalid one, are what clients got
when FastAPI served these routes: a body that is missing, not JSON, not a
JSON object, or of another content type, and every field error, each as one
400 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from serving.api.disconnect import ClientDisconnected
from serving.api.errors import invalid_body
from serving.errors import BadRequestError, PayloadTooLargeError

M = TypeVar("M", bound=BaseModel)

_MISSING = "The request body is missing: send a JSON object."
_NOT_JSON = "We could not parse the JSON body of your request: it is not valid JSON."
_NOT_AN_OBJECT = "The request body must be a JSON object."


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> bytes:
    """The whole body (413 past ``limit`` bytes; ClientDisconnected if the client left)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def is_json(content_type: bytes | None) -> bool:
    """``application/json`` or ``application/*+json`` (any case, any
    parameters); no content type at all counts as JSON (clients that send a
    JSON body without saying so)."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def parse_request(model: type[M], body: bytes, content_type: bytes | None) -> M:
    """The request as ``model``, or a BadRequestError naming what is wrong."""
    if not body:
        raise BadRequestError(_MISSING)
    if not is_json(content_type):
        raise BadRequestError(_NOT_AN_OBJECT)
    try:
        data = json.loads(body)
    except ValueError:  # includes bytes that are not UTF-8
        raise BadRequestError(_NOT_JSON) from None
    if data is None:
        raise BadRequestError(_MISSING)
    if not isinstance(data, dict):
        raise BadRequestError(_NOT_AN_OBJECT)
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_url=False)) from None


def parse_query(model: type[M], query_string: bytes) -> M:
    """A GET route's query parameters as ``model`` (each given at most once),
    or a BadRequestError naming the parameter."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in values:
            raise BadRequestError(f"The query parameter `{name}` is given twice.", param=name)
        values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_url=False)) from None
