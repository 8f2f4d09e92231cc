"""What a route is, and the table the gateway app looks routes up in.

A :class:`Route` declares one route: its method and path, who may call it, the
request model of its body, the serving call that answers it, and, for a model
task, the task (the metrics' ``task`` label; metered by the quotas), its
admission lane, and whether its answers are tracked for suggestion events;
and the protocol dialect its errors are answered in.
The declarations themselves are in ``serving.api.routes``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from serving.api.dialects import OPENAI, ErrorDialect
from serving.config import Lane


class Access(enum.Enum):
    OPEN = "open"  # no key (probes: /health, /ready)
    KEY = "key"  # any valid API key
    ADMIN = "admin"  # admin keys only
    SESSION = "session"  # a console session (its cookie; a CSRF token to change anything)
    SESSION_ADMIN = "session_admin"  # an admin's console session


# A serving call: a method of one of the serving classes, bound to the app's
# instance when the table is built; called (request model, ctx) for routes
# with a body or query model, (ctx) without. It returns an answer (serving.api.responses) or
# a pydantic model (200 JSON).
ServeCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    serve: Callable[..., Awaitable[Any]]  # e.g. OpenAIServing.completions (unbound)
    summary: str
    access: Access = Access.KEY
    request: type[BaseModel] | None = None  # the JSON body's model
    query: type[BaseModel] | None = None  # a GET route's query parameters' model
    response: type[BaseModel] | None = None  # the 200 answer's model (OpenAPI)
    task: str | None = None  # a model task: metered, labelled, queued in `lane`
    lane: Lane = "completion"
    tracked: bool = False  # answers may be reported on (POST /v1/code/events)
    quiet: bool = False  # probes and scrapes: access-logged at debug level
    streams: bool = False  # may answer with an event stream (OpenAPI)
    in_schema: bool = True  # listed in /openapi.json
    errors: tuple[int, ...] = field(default=())  # error statuses it answers (OpenAPI)
    dialect: ErrorDialect = OPENAI  # the protocol whose error shape it answers in


@dataclass(frozen=True)
class Endpoint:
    """A route and its serving call, bound to the app's serving objects."""

    route: Route
    call: ServeCall


class RouteTable:
    """The routes of one app, their calls bound to ``services`` (the serving
    objects whose methods the routes name), looked up by method and path."""

    def __init__(self, routes: Iterable[Route], services: Iterable[object]) -> None:
        self.routes = tuple(routes)
        owners = list(services)
        self._by_key: dict[tuple[str, str], Endpoint] = {}
        self._methods: dict[str, list[str]] = {}
        for route in self.routes:
            if (route.method, route.path) in self._by_key:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            endpoint = Endpoint(route, _bind(route.serve, owners))
            self._by_key[(route.method, route.path)] = endpoint
            self._methods.setdefault(route.path, []).append(route.method)
            if route.method == "GET":  # HEAD: a GET without its body
                self._by_key[("HEAD", route.path)] = endpoint
                self._methods[route.path].append("HEAD")

    def match(self, method: str, path: str) -> Endpoint | None:
        return self._by_key.get((method, path))

    def methods(self, path: str) -> list[str]:
        """The methods ``path`` answers (empty: no such route)."""
        return self._methods.get(path, [])

    def access_of(self, path: str) -> Access:
        """Who may learn that ``path`` exists: its routes' access (a wrong
        method), else a key (an unknown path is answered only to a caller
        with a valid key)."""
        for method in self._methods.get(path, ()):
            return self._by_key[(method, path)].route.access
        return Access.KEY

    def unknown_route_message(self) -> str:
        listed = [r.path for r in self.routes if r.in_schema and r.access is Access.KEY]
        paths = list(dict.fromkeys(listed))
        return f"Unknown route. See {', '.join(paths[:-1])} and {paths[-1]}."


def _bind(method: Callable[..., Awaitable[Any]], owners: list[object]) -> ServeCall:
    for owner in owners:
        if getattr(type(owner), method.__name__, None) is method:
            bound: ServeCall = getattr(owner, method.__name__)
            return bound
    raise ValueError(f"no serving object has {method.__qualname__}")


def route_tasks(routes: Iterable[Route]) -> tuple[str, ...]:
    """The model tasks, in declaration order (with ``other``: every value of
    the metrics' ``task`` label)."""
    return (*dict.fromkeys(r.task for r in routes if r.task), "other")
