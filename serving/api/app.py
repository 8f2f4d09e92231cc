"""The gateway's app factory: every dependency is passed in and wired here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import __version__
from serving.api.code_serving import CodeServing
from serving.api.errors import register_exception_handlers
from serving.api.middleware import GatewayMiddleware
from serving.api.routes import code_router, health_router, openai_router
from serving.api.serving import OpenAIServing
from serving.config import ServingConfig
from serving.engines.client import EngineClient
from serving.engines.dispatch import Dispatcher
from serving.engines.registry import ReplicaRegistry
from serving.sandbox import Sandbox
from serving.tasks.completion import CodeCompleter


def build_app(
    config: ServingConfig, registry: ReplicaRegistry, *, sandbox: Sandbox | None = None
) -> FastAPI:
    """The gateway for ``config``, serving the replicas ``registry`` knows."""
    client = EngineClient(config.gateway)
    dispatcher = Dispatcher(registry, client)
    completer = CodeCompleter(dispatcher, registry, config.tasks)
    serving = OpenAIServing(config.gateway, registry, dispatcher, completer)
    code = CodeServing(config.tasks, registry, completer, sandbox or Sandbox(config.sandbox))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        await registry.wait_first_refresh()
        try:
            yield
        finally:
            await registry.stop()
            await client.close()

    app = FastAPI(
        title="Seed Serve",
        version=__version__,
        description="OpenAI-compatible code-assistant endpoint.",
        lifespan=lifespan,
    )
    register_exception_handlers(app)
    app.include_router(health_router(registry))
    app.include_router(openai_router(serving, registry))
    app.include_router(code_router(code))
    app.add_middleware(GatewayMiddleware, max_body_bytes=config.gateway.max_request_bytes)
    return app
