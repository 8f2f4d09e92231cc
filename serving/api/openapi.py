"""The OpenAPI document, generated from the route table (the same declarations
the gateway routes by): each route's request model, its answer's model, the
error statuses it gives (in OpenAI's envelope) and who may call it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.api.responses import BodyAnswer, json_answer
from serving.api.route_table import Access, Route
from serving.errors import ErrorResponse
from serving.request_context import RequestContext

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "Success",
    400: "Bad request",
    401: "No valid API key",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    429: "Rate limited",
    500: "Server error",
    502: "An engine failed",
    503: "Unavailable (no ready replica, queue full, draining)",
}


def openapi_document(routes: Iterable[Route], *, title: str, version: str) -> dict[str, Any]:
    routes = list(routes)
    models: list[type[BaseModel]] = [ErrorResponse]
    for route in routes:
        if route.in_schema:
            models += [m for m in (route.request, route.response) if m is not None]
    unique = list(dict.fromkeys(models))
    refs, schemas = models_json_schema(
        [(model, "validation") for model in unique], ref_template=_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.in_schema:
            continue
        answer: dict[str, Any] = {"description": _STATUS_TEXT[200]}
        content: dict[str, Any] = {}
        if route.response is not None:
            content["application/json"] = {"schema": refs[(route.response, "validation")]}
        else:
            content["application/json"] = {"schema": {}}
        if route.streams:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        answer["content"] = content
        responses: dict[str, Any] = {"200": answer}
        for status in route.errors:
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": refs[(ErrorResponse, "validation")]}},
            }
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}",
            "responses": responses,
        }
        if route.access is not Access.OPEN:
            operation["security"] = [{"apiKey": []}]
        if route.query is not None:
            operation["parameters"] = _query_parameters(route.query)
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(route.request, "validation")]}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "OpenAI-compatible code-assistant endpoint.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "sk-seed-..."}
            },
        },
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters (each its own schema)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": field.get("description", ""),
            "schema": {k: v for k, v in field.items() if k not in ("description", "title")},
        }
        for name, field in schema.get("properties", {}).items()
    ]


class OpenAPIServing:
    """GET /openapi.json: the document of ``routes`` (rendered at the first request)."""

    def __init__(self, routes: Iterable[Route], *, title: str, version: str) -> None:
        self.routes = tuple(routes)
        self.title = title
        self.version = version
        self._answer: BodyAnswer | None = None

    async def serve(self, ctx: RequestContext) -> BodyAnswer:
        if self._answer is None:
            document = openapi_document(self.routes, title=self.title, version=self.version)
            self._answer = json_answer(document)
        return self._answer
