"""The gateway's app factory: every dependency is built or passed in, and wired
here, once per app (no module-level state)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from serving import __version__
from serving.adapters import AdapterCatalog, TeamDataStore
from serving.admission.auth import Authenticator
from serving.admission.dispatch import Dispatcher
from serving.admission.jwt_auth import OidcSignIn
from serving.admission.models import ModelResolver
from serving.admission.quotas import Quotas
from serving.admission.scheduler import AdmissionScheduler
from serving.admission.sessions import ConsoleAuth, SessionSigner, SignOuts
from serving.api.admin import AdminServing
from serving.api.code_serving import CodeServing
from serving.api.console import ConsoleServing
from serving.api.cursor import CursorCompletions
from serving.api.front_door import FrontDoor
from serving.api.gateway import GatewayApp
from serving.api.llamacpp import LlamaCppServing
from serving.api.ollama import OllamaServing
from serving.api.openai_serving import OpenAIServing
from serving.api.openapi import OpenAPIServing
from serving.api.route_table import RouteTable
from serving.api.routes import METRICS_ROUTES, gateway_routes
from serving.api.state import GatewayState
from serving.api.status import StatusServing
from serving.api.suggestion_events import SuggestionEvents
from serving.api.tabby import TabbyServing
from serving.api.usage import UsageServing
from serving.background import Periodic
from serving.config import (
    ConsoleConfig,
    KvAwareRouting,
    LeastLoadedRouting,
    PrefixAffinityRouting,
    ServingConfig,
    SessionRouting,
)
from serving.errors import ConfigError
from serving.observability.audit import AuditLog
from serving.observability.metrics import GatewayMetrics
from serving.observability.suggestions import build_suggestion_store
from serving.observability.usage import UsageRecorder, build_usage_backend
from serving.sandbox import Sandbox, SandboxResult
from serving.tasks.completion import CodeCompleter
from serving.upstream.adapters import AdapterAwareRouter, AdapterPlacement
from serving.upstream.client import EngineClient, EngineTransport
from serving.upstream.kv_index import KvBlockIndex, KvEventFeed
from serving.upstream.registry import ReplicaRegistry
from serving.upstream.routing import build_router

logger = logging.getLogger("seed_serve.app")
_RETENTION_CHECK_S = 3600.0  # retention is counted in days


def build_app(
    config: ServingConfig,
    registry: ReplicaRegistry,
    *,
    sandbox: Sandbox | None = None,
    metrics: GatewayMetrics | None = None,
    state: GatewayState | None = None,
    transport: EngineTransport | None = None,
) -> GatewayApp:
    """The gateway for ``config``, serving the replicas ``registry`` knows,
    reaching their engines over ``transport`` (default: HTTP/1.1, kept alive)."""
    metrics = metrics or GatewayMetrics()
    state = state or GatewayState()
    client = EngineClient(config.timeouts, transport)
    auth = Authenticator(config.auth, metrics)
    quotas = Quotas(config.quotas, metrics)
    audit = AuditLog(config.audit)
    usage = (
        UsageRecorder(
            build_usage_backend(config.usage),
            flush_interval_s=config.usage.flush_interval_s,
            retention_days=config.usage.retention_days,
        )
        if config.usage.enabled
        else None
    )
    store = build_suggestion_store(config.telemetry) if config.telemetry.enabled else None
    team_data = TeamDataStore(
        config.adapters.data_dir, retention_days=config.adapters.retention_days
    )
    events = SuggestionEvents(store, metrics, team_data, usage)

    async def drop_expired_team_data() -> None:
        removed = await asyncio.to_thread(team_data.apply_retention)
        if removed:
            logger.info("team data: %d day files past adapters.retention_days removed", removed)

    retention = Periodic(
        "team data retention", drop_expired_team_data, _RETENTION_CHECK_S, logger=logger
    )
    routing = config.routing
    catalog = AdapterCatalog(Path(config.adapters.registry_file))
    placement = AdapterPlacement()
    kv_feed: KvEventFeed | None = None
    if isinstance(routing, KvAwareRouting):
        kv_feed = KvEventFeed(KvBlockIndex(routing.max_blocks_per_replica))
    scheduler = AdmissionScheduler(
        config.admission,
        registry,
        AdapterAwareRouter(
            build_router(
                routing,
                kv_feed.index if kv_feed is not None else None,
                count=lambda outcome: metrics.kv_routing.labels(outcome=outcome).inc(),
            ),
            placement,
        ),
        metrics,
        kv_weight=routing.kv_weight if isinstance(routing, LeastLoadedRouting) else 0.0,
        placement=placement,
    )
    registry.load_reporter = scheduler.queued_by_model
    registry.listeners.append(metrics.export_replicas)
    registry.listeners.append(lambda replicas, _: placement.update(replicas))
    if kv_feed is not None:
        index = kv_feed.index
        registry.listeners.append(kv_feed.update)
        registry.listeners.append(lambda _replicas, _: metrics.export_kv_index(*index.summary()))
    dispatcher = Dispatcher(
        registry,
        client,
        scheduler,
        config.admission,
        metrics,
        timeouts=config.timeouts,
        affinity_chars=routing.prefix_chars
        if isinstance(routing, PrefixAffinityRouting | KvAwareRouting)
        else 1024,
        placement=placement,
        tokenize_prompts=kv_feed is not None,
    )

    def count_run(result: SandboxResult) -> None:
        metrics.sandbox_runs.labels(outcome=result.outcome).inc()

    sandbox = sandbox or Sandbox(config.sandbox, on_run=count_run)
    completer = CodeCompleter(dispatcher, registry, config.tasks)
    models = ModelResolver(registry, catalog, reload_interval_s=config.adapters.reload_interval_s)
    cursor = CursorCompletions(config.tasks, registry, completer, models)
    openai = OpenAIServing(config.gateway, registry, dispatcher, completer, models)
    status = StatusServing(registry, state, metrics, models)
    declared = gateway_routes(
        metrics_on_main_port=config.gateway.metrics_port is None, console=config.console.enabled
    )
    signer = SessionSigner(_session_secret(config.console), config.console.session_ttl_s)
    sign_outs = SignOuts(config.console.sign_outs_redis_url)
    console = ConsoleServing(
        config.console,
        signer,
        auth,
        keys_file=Path(config.auth.keys_file).expanduser(),
        sign_in=OidcSignIn(config.auth.oidc, auth.jwt)
        if config.auth.oidc is not None and auth.jwt is not None
        else None,
        usage=usage,
        sign_outs=sign_outs,
    )
    routes = RouteTable(
        declared,
        services=[
            openai,
            CodeServing(config.tasks, cursor, sandbox),
            OllamaServing(cursor, openai),
            LlamaCppServing(cursor),
            TabbyServing(cursor, events, device=_device(config)),
            events,
            status,
            AdminServing(registry, config),
            UsageServing(usage),
            console,
            OpenAPIServing(declared, title="Seed Serve", version=__version__),
        ],
    )
    front_door = FrontDoor(
        routes=routes,
        config=config.gateway,
        auth=auth,
        quotas=quotas,
        audit=audit,
        metrics=metrics,
        state=state,
        events=events,
        auth_enabled=config.auth.enabled,
        session_header=routing.header
        if isinstance(routing, SessionRouting)
        else "x-seed-serve-session",
        training_data=config.adapters.training_data,
        usage=usage,
        estimate_usage=dispatcher.estimate_usage,
        console=ConsoleAuth(signer, auth.tenant_record, sign_outs)
        if config.console.enabled
        else None,
    )

    async def startup() -> None:
        await registry.start()
        await registry.wait_first_refresh()
        await auth.start()
        await models.reload()  # adapters known before the first request
        await models.start()
        retention.start()
        if usage is not None:
            usage.start()
        await scheduler.start()

    async def shutdown() -> None:
        await scheduler.stop()
        await models.stop()
        await retention.stop()
        await auth.stop()
        await registry.stop()
        if kv_feed is not None:
            await kv_feed.close()
        await client.close()
        await quotas.close()
        await events.close()
        if usage is not None:
            await usage.stop()
        await sign_outs.close()
        audit.close()

    app = GatewayApp(
        routes,
        front_door=front_door,
        max_request_bytes=config.gateway.max_request_bytes,
        on_startup=startup,
        on_shutdown=shutdown,
    )
    app.state.update(metrics=metrics, gateway=state, status=status, registry=registry)
    return app


def _session_secret(config: ConsoleConfig) -> bytes:
    """The console's cookie-signing secret: shared from a file (gateways that
    share it share sessions), else this process's own."""
    if config.session_secret_file is None:
        return secrets.token_bytes(32)
    secret = Path(config.session_secret_file).expanduser().read_bytes().strip()
    if len(secret) < 32:
        raise ConfigError("console.session_secret_file", "holds fewer than 32 bytes")
    return secret


def _device(config: ServingConfig) -> str:
    """What the engines run on, as Tabby's health reports it (cuda / cpu)."""
    devices = {group.engine.device for group in config.replica_groups}
    return "cuda" if "cuda" in devices else "cpu"


def build_metrics_app(gateway_app: GatewayApp) -> GatewayApp:
    """/metrics and /metrics/engines of ``gateway_app`` alone, for the internal
    metrics port (no key: keep it off the network)."""
    return GatewayApp(
        RouteTable(METRICS_ROUTES, services=[gateway_app.state["status"]]),
        front_door=None,
        max_request_bytes=0,
    )
