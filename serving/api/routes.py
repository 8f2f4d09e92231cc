"""The route table: one declaration per route, read by everything that needs
to know about routes.

A :class:`Route` says its method and path, who may call it, the request model
of its body, the serving call that answers it, and, for a model task, the task
(the metrics' ``task`` label; metered by the quotas), its admission lane, and
whether its answers are tracked for suggestion events. The gateway app routes
by it, the front door authenticates and meters by it, the access log quiets
probes by it, OpenAPI is generated from it, and the 404 message lists it.
Adding a route is adding one declaration here (and its serving call).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from serving.api.admin import AdminServing, ScaleRequest
from serving.api.code_protocol import (
    CodeCompletionRequest,
    CodeCompletionResponse,
    CodeRepairRequest,
    CodeRepairResponse,
    CodeTestsRequest,
    CodeTestsResponse,
    SuggestionEventRequest,
    SuggestionEventResponse,
)
from serving.api.code_serving import CodeServing
from serving.api.openai_serving import OpenAIServing
from serving.api.protocol import ChatCompletionRequest, Completion, CompletionRequest, ModelList
from serving.api.status import StatusServing
from serving.api.suggestion_events import SuggestionEvents
from serving.config import Lane


class Access(enum.Enum):
    OPEN = "open"  # no key (probes: /health, /ready)
    KEY = "key"  # any valid API key
    ADMIN = "admin"  # admin keys only


# A serving call: (request model, ctx) for routes with a body, (ctx) without;
# it returns an answer (serving.api.responses) or a pydantic model (200 JSON).
ServeCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    serve: ServeCall
    summary: str
    access: Access = Access.KEY
    request: type[BaseModel] | None = None  # the JSON body's model
    response: type[BaseModel] | None = None  # the 200 answer's model (OpenAPI)
    task: str | None = None  # a model task: metered, labelled, queued in `lane`
    lane: Lane = "completion"
    tracked: bool = False  # answers may be reported on (POST /v1/code/events)
    quiet: bool = False  # probes and scrapes: access-logged at debug level
    streams: bool = False  # may answer with an event stream (OpenAPI)
    in_schema: bool = True  # listed in /openapi.json
    errors: tuple[int, ...] = field(default=())  # error statuses it answers (OpenAPI)


class RouteTable:
    """The routes, looked up by method and path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._by_key: dict[tuple[str, str], Route] = {}
        self._methods: dict[str, list[str]] = {}
        for route in self.routes:
            if (route.method, route.path) in self._by_key:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            self._by_key[(route.method, route.path)] = route
            self._methods.setdefault(route.path, []).append(route.method)
            if route.method == "GET":  # HEAD: a GET without its body
                self._by_key[("HEAD", route.path)] = route
                self._methods[route.path].append("HEAD")

    def match(self, method: str, path: str) -> Route | None:
        return self._by_key.get((method, path))

    def methods(self, path: str) -> list[str]:
        """The methods ``path`` answers (empty: no such route)."""
        return self._methods.get(path, [])

    def access_of(self, path: str) -> Access:
        """Who may learn that ``path`` exists: its routes' access (a wrong
        method), else a key (an unknown path is answered only to a caller
        with a valid key)."""
        for method in self._methods.get(path, ()):
            return self._by_key[(method, path)].access
        return Access.KEY

    @property
    def tasks(self) -> tuple[str, ...]:
        """The model tasks, in declaration order (the metrics' task label values,
        with ``other``)."""
        return tuple(dict.fromkeys(r.task for r in self.routes if r.task))

    def unknown_route_message(self) -> str:
        listed = [r.path for r in self.routes if r.in_schema and r.access is Access.KEY]
        paths = list(dict.fromkeys(listed))
        return f"Unknown route. See {', '.join(paths[:-1])} and {paths[-1]}."


@dataclass(frozen=True)
class GatewayServices:
    """The serving objects the routes call (built by the app factory)."""

    openai: OpenAIServing
    code: CodeServing
    events: SuggestionEvents
    status: StatusServing
    admin: AdminServing
    openapi: ServeCall


_INVALID = (400, 401, 403, 404, 413, 429)
_MODEL_ERRORS = (*_INVALID, 500, 502, 503)


def gateway_routes(s: GatewayServices) -> RouteTable:
    return RouteTable(
        [
            Route("GET", "/health", s.status.health, "The gateway process is alive.",
                  access=Access.OPEN, quiet=True),
            Route("GET", "/ready", s.status.ready, "At least one replica can serve.",
                  access=Access.OPEN, quiet=True, errors=(503,)),
            Route("GET", "/metrics", s.status.metrics,
                  "Prometheus metrics (admin key on the main port; open on metrics_port).",
                  access=Access.ADMIN, quiet=True, in_schema=False),
            Route("GET", "/metrics/engines", s.status.engine_metrics,
                  "Every replica's own vLLM metrics, labelled `replica`.",
                  access=Access.ADMIN, quiet=True, in_schema=False),
            Route("GET", "/openapi.json", s.openapi, "This API's OpenAPI document.",
                  in_schema=False),
            Route("GET", "/v1/models", s.status.models, "The served models.",
                  response=ModelList, errors=(401, 403)),
            Route("POST", "/v1/completions", s.openai.completions,
                  "Text completion; with `suffix`, fill-in-the-middle in the model's format.",
                  request=CompletionRequest, response=Completion, task="completion",
                  lane="completion", tracked=True, streams=True, errors=_MODEL_ERRORS),
            Route("POST", "/v1/chat/completions", s.openai.chat, "Chat completion.",
                  request=ChatCompletionRequest, task="chat", lane="completion",
                  tracked=True, streams=True, errors=_MODEL_ERRORS),
            Route("POST", "/v1/code/completions", s.code.completion,
                  "Completion at the cursor: FIM prompt, post-processed to the line/block.",
                  request=CodeCompletionRequest, response=CodeCompletionResponse,
                  task="code_completion", lane="completion", tracked=True, streams=True,
                  errors=_MODEL_ERRORS),
            Route("POST", "/v1/code/repairs", s.code.repair,
                  "Fix code given its error; candidates checked, verified against a test.",
                  request=CodeRepairRequest, response=CodeRepairResponse, task="repair",
                  lane="repair", tracked=True, errors=_MODEL_ERRORS),
            Route("POST", "/v1/code/tests", s.code.tests,
                  "Unit tests for the code, run against it in the sandbox.",
                  request=CodeTestsRequest, response=CodeTestsResponse, task="tests",
                  lane="tests", tracked=True, errors=_MODEL_ERRORS),
            Route("POST", "/v1/code/events", s.events.report,
                  "Report that a completion was shown, accepted or dismissed (same key).",
                  request=SuggestionEventRequest, response=SuggestionEventResponse,
                  errors=(*_INVALID, 409)),
            Route("GET", "/v1/admin/replicas", s.admin.replicas,
                  "Replica groups and every replica's state and load (never secrets).",
                  access=Access.ADMIN, errors=(401, 403)),
            Route("POST", "/v1/admin/replicas", s.admin.scale,
                  "Add or remove replicas of a group without a restart (removal drains first).",
                  access=Access.ADMIN, request=ScaleRequest, errors=(400, 401, 403)),
        ]
    )  # fmt: skip


def metrics_routes(status: StatusServing) -> RouteTable:
    """The internal metrics port: /metrics and /metrics/engines without a key."""
    return RouteTable(
        [
            Route("GET", "/metrics", status.metrics, "Prometheus metrics.", access=Access.OPEN),
            Route("GET", "/metrics/engines", status.engine_metrics, "The engines' metrics.",
                  access=Access.OPEN),
        ]
    )  # fmt: skip
