"""The gateway's app factory: every dependency is built or passed in, and wired here."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import __version__
from serving.admission.auth import Authenticator
from serving.admission.quotas import Quotas
from serving.admission.scheduler import AdmissionScheduler
from serving.api.code_serving import CodeServing
from serving.api.errors import register_exception_handlers
from serving.api.feedback import SuggestionFeedback
from serving.api.hot_routes import HotRoutes, hot_routes
from serving.api.middleware import GatewayMiddleware
from serving.api.routes import (
    admin_router,
    code_router,
    health_router,
    metrics_router,
    openai_router,
)
from serving.api.serving import OpenAIServing
from serving.api.state import GatewayState
from serving.config import LeastLoadedRouting, PrefixAffinityRouting, ServingConfig, SessionRouting
from serving.engines.client import EngineClient
from serving.engines.dispatch import Dispatcher
from serving.engines.registry import ReplicaRegistry
from serving.engines.router import build_router
from serving.engines.stats import EngineStatsPoller
from serving.observability.audit import AuditLog
from serving.observability.metrics import GatewayMetrics
from serving.observability.telemetry import build_completion_store
from serving.sandbox import Sandbox
from serving.tasks.completion import CodeCompleter


def build_app(
    config: ServingConfig,
    registry: ReplicaRegistry,
    *,
    sandbox: Sandbox | None = None,
    metrics: GatewayMetrics | None = None,
    state: GatewayState | None = None,
) -> FastAPI:
    """The gateway for ``config``, serving the replicas ``registry`` knows."""
    metrics = metrics or GatewayMetrics()
    state = state or GatewayState()
    client = EngineClient(config.timeouts)
    auth = Authenticator(config.auth, metrics)
    quotas = Quotas(config.quotas, metrics)
    audit = AuditLog(config.audit)
    stats = EngineStatsPoller(registry, None, config.admission.stats_interval_s, metrics)
    feedback = SuggestionFeedback(
        build_completion_store(config.telemetry) if config.telemetry.enabled else None, metrics
    )
    routing = config.routing
    scheduler = AdmissionScheduler(
        config.admission,
        registry,
        build_router(routing),
        metrics,
        stats,
        kv_weight=routing.kv_weight if isinstance(routing, LeastLoadedRouting) else 0.0,
    )
    registry.load_reporter = scheduler.queued_by_model
    dispatcher = Dispatcher(
        registry,
        client,
        scheduler,
        config.admission,
        metrics,
        timeouts=config.timeouts,
        affinity_chars=routing.prefix_chars if isinstance(routing, PrefixAffinityRouting) else 1024,
    )
    completer = CodeCompleter(dispatcher, registry, config.tasks)
    serving = OpenAIServing(config.gateway, registry, dispatcher, completer, quotas)
    code = CodeServing(
        config.tasks, registry, completer, sandbox or Sandbox(config.sandbox, metrics=metrics)
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        await registry.wait_first_refresh()
        await auth.start()
        await stats.start()
        await scheduler.start()
        # Everything built so far lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall every request for
        # 100+ ms now and then (measured: benchmarks/overhead capacity).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await scheduler.stop()
            await stats.stop()
            await auth.stop()
            await registry.stop()
            await client.close()
            await quotas.close()
            await feedback.close()
            audit.close()

    app = FastAPI(
        title="Seed Serve",
        version=__version__,
        description="OpenAI-compatible code-assistant endpoint.",
        lifespan=lifespan,
    )
    register_exception_handlers(app)
    app.include_router(health_router(registry, state))
    app.include_router(openai_router(serving, registry))
    app.include_router(code_router(code, feedback))
    app.include_router(admin_router(registry))
    if config.gateway.metrics_port is None:
        app.include_router(metrics_router(metrics, stats))
    # Added first, so it runs inside GatewayMiddleware (keys, limits, the request context).
    app.add_middleware(HotRoutes, routes=hot_routes(serving, code))
    app.add_middleware(
        GatewayMiddleware,
        config=config.gateway,
        auth=auth,
        quotas=quotas,
        audit=audit,
        metrics=metrics,
        state=state,
        feedback=feedback,
        auth_enabled=config.auth.enabled,
        session_header=routing.header
        if isinstance(routing, SessionRouting)
        else "x-seed-serve-session",
    )
    app.state.metrics = metrics
    app.state.gateway = state
    app.state.engine_stats = stats
    return app


def build_metrics_app(gateway_app: FastAPI) -> FastAPI:
    """/metrics and /metrics/engines of ``gateway_app`` alone, for the internal
    metrics port (no key: keep it off the network)."""
    app = FastAPI(title="Seed Serve metrics", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(metrics_router(gateway_app.state.metrics, gateway_app.state.engine_stats))
    return app
