"""Calling the gateway app in this process, as an ASGI server would (requests,
streamed answers, clients that hang up), and building one in front of
scripted engines (tests/support/scripted_engine.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from serving.api.app import build_app
from serving.api.gateway import GatewayApp
from serving.config import SandboxConfig, ServingConfig
from serving.observability.metrics import GatewayMetrics
from serving.sandbox import Sandbox
from serving.upstream.registry import ReplicaRegistry
from tests.support.scripted_engine import ScriptedCluster, ScriptedEngine


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def set_cookies(self) -> list[str]:
        """Every Set-Cookie header (``headers`` keeps one per name)."""
        return [value for name, value in self.raw_headers if name == "set-cookie"]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The data of each server-sent event (``[DONE]`` as the string)."""
        found: list[Any] = []
        for event in self.body.split(b"\n\n"):
            if event.startswith(b"data: "):
                data = event[6:]
                found.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        return found


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 40000),
    leave: asyncio.Event | None = None,
    leave_at: bytes | None = None,
    leave_after: int | None = None,
    body_parts: int = 1,
) -> Reply:
    """One request; the client hangs up when ``leave`` is set, once a body
    chunk ends with ``leave_at`` (the SDKs close the response at ``[DONE]``),
    or after ``leave_after`` body chunks, else when answered."""
    if leave_at is not None or leave_after is not None:
        leave = leave or asyncio.Event()
    if json_body is not None:
        body = json.dumps(json_body).encode()
    data = body or b""
    path, _, query = path.partition("?")
    raw_headers = [(b"host", b"gateway")]
    if json_body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    size = max(1, -(-len(data) // body_parts))
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    pending = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    reply = Reply()
    gone = leave or asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending and not (leave is not None and gone.is_set()):
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if gone.is_set() and leave is not None:
            raise OSError("the client is gone")  # what a server does after a hang-up
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.raw_headers = [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
            reply.headers = dict(reply.raw_headers)
        elif message["type"] == "http.response.body":
            if message.get("body"):
                reply.chunks.append(message["body"])
                if leave_at is not None and message["body"].endswith(leave_at):
                    gone.set()
                if leave_after is not None and len(reply.chunks) >= leave_after:
                    gone.set()
            if not message.get("more_body", False):
                reply.complete = True
                gone.set()

    try:
        await app(scope, receive, send)
    except OSError:
        pass
    return reply


@asynccontextmanager
async def running(app: GatewayApp) -> AsyncIterator[GatewayApp]:
    """The app between its lifespan's start-up and shutdown."""
    assert app.on_startup is not None and app.on_shutdown is not None
    await app.on_startup()
    try:
        yield app
    finally:
        await app.on_shutdown()


def scripted_config(tmp_path: Path | None = None, **sections: Any) -> ServingConfig:
    """A gateway config for scripted engines: auth off unless asked, no audit
    file unless asked, fast ticks."""
    home = Path(tmp_path) if tmp_path is not None else Path("/nonexistent/seed-serve-test")
    values: dict[str, Any] = {
        "auth": {"enabled": False, "demo_key_file": None},
        # Never the machine's own adapter registry.
        "adapters": {
            "registry_file": str(home / "adapters" / "registry.yaml"),
            "roots": [str(home / "adapters")],
            "data_dir": str(home / "team-data"),
        },
        "audit": {"file": None},
        # Usage records in the test's folder (none without one).
        "usage": {"sqlite_file": str(home / "usage.sqlite3")}
        if tmp_path is not None
        else {"enabled": False},
        "admission": {"stats_interval_s": 0.05},
        "timeouts": {"first_token_s": 5, "idle_s": 5, "total_s": 30, "retries": 2},
        "replica_groups": [
            {"name": "scripted", "engine": {"model": "scripted", "served_model_name": "scripted"}}
        ],
    }
    for name, section in sections.items():
        merge = isinstance(section, dict) and isinstance(values.get(name), dict)
        values[name] = {**values[name], **section} if merge else section
    return ServingConfig.model_validate(values)


@cache
def shared_sandbox() -> Sandbox:
    """One sandbox for the in-process gateways (its isolation probe runs once)."""
    return Sandbox(SandboxConfig())


def gateway_app(config: ServingConfig, registry: ReplicaRegistry, **build: Any) -> GatewayApp:
    """``build_app`` with the shared sandbox (unless one is given)."""
    build.setdefault("sandbox", shared_sandbox())
    return build_app(config, registry, **build)


@dataclass
class ScriptedGateway:
    app: GatewayApp
    cluster: ScriptedCluster
    registry: ReplicaRegistry
    metrics: GatewayMetrics

    @property
    def engines(self) -> list[ScriptedEngine]:
        return self.cluster.engines

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return await call(self.app, method, path, **kwargs)

    async def complete(self, **body: Any) -> Reply:
        payload = {"model": "scripted", "prompt": "def f(x):", "max_tokens": 8, **body}
        return await self.call("POST", "/v1/completions", json_body=payload)


@asynccontextmanager
async def scripted_gateway(
    *engines: ScriptedEngine, config: ServingConfig | None = None, **build: Any
) -> AsyncIterator[ScriptedGateway]:
    """The real gateway app (every layer) in front of scripted engines, started."""
    cluster = ScriptedCluster(list(engines))
    registry = ReplicaRegistry(cluster, refresh_interval_s=0.05)
    metrics = GatewayMetrics()
    app = gateway_app(
        config or scripted_config(),
        registry,
        transport=cluster.transport(),
        metrics=metrics,
        **build,
    )
    async with running(app):
        yield ScriptedGateway(app, cluster, registry, metrics)
