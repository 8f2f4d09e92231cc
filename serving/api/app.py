"""The gateway's app factory: every dependency is passed in and wired here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import __version__
from serving.api.errors import register_exception_handlers
from serving.api.middleware import GatewayMiddleware
from serving.api.routes import health_router, openai_router
from serving.api.serving import OpenAIServing
from serving.config import ServingConfig
from serving.engines.client import EngineClient
from serving.engines.registry import ReplicaRegistry


def build_app(config: ServingConfig, registry: ReplicaRegistry) -> FastAPI:
    """The gateway for ``config``, serving the replicas ``registry`` knows."""
    client = EngineClient(config.gateway)
    serving = OpenAIServing(config.gateway, registry, client)

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
    app.add_middleware(GatewayMiddleware, max_body_bytes=config.gateway.max_request_bytes)
    return app
