"""What the gateway says about itself: liveness, readiness, the served models,
and its metrics (its own, and the engines' as their replicas last read them)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST

from serving.admission.models import ModelResolver
from serving.api.protocol import ModelCard, ModelList
from serving.api.responses import BodyAnswer, json_answer
from serving.api.state import GatewayState
from serving.observability.metrics import GatewayMetrics
from serving.request_context import RequestContext
from serving.upstream.engine_metrics import relabel_engine_metrics
from serving.upstream.registry import ModelStatus, ReplicaRegistry

_PROMETHEUS = CONTENT_TYPE_LATEST.encode()


class StatusServing:
    def __init__(
        self,
        registry: ReplicaRegistry,
        state: GatewayState,
        metrics: GatewayMetrics,
        models: ModelResolver | None = None,
    ) -> None:
        self.registry = registry
        self.resolver = models
        self.state = state
        self.gateway_metrics = metrics
        self.started = int(time.time())

    async def health(self, ctx: RequestContext) -> BodyAnswer:
        """The gateway process is alive."""
        return json_answer({"status": "ok"})

    async def ready(self, ctx: RequestContext) -> BodyAnswer:
        """At least one replica can serve (and the gateway is not draining)."""
        replicas = {r.replica_id: r.state.value for r in self.registry.all()}
        is_ready = self.registry.any_ready() and not self.state.draining
        status = "draining" if self.state.draining else ("ready" if is_ready else "not_ready")
        return json_answer(
            {"status": status, "replicas": replicas}, status=200 if is_ready else 503
        )

    async def models(self, ctx: RequestContext) -> BodyAnswer:
        """The served models, then the caller's tenant's team adapters of them
        (``<base>:<adapter>``, ``parent`` the base; no other tenant's)."""
        served = {m.name: m for m in self.registry.models()}
        cards = [self._card(m.name, m) for m in served.values()]
        for adapter in self.resolver.adapters(ctx) if self.resolver is not None else []:
            base = served.get(adapter.base_model)
            if base is not None:
                card = self._card(f"{base.name}:{adapter.name}", base)
                card.parent = base.name
                card.owned_by = adapter.tenant
                cards.append(card)
        return json_answer(ModelList(data=cards))

    def _card(self, model_id: str, m: ModelStatus) -> ModelCard:
        return ModelCard(
            id=model_id,
            created=self.started,
            max_model_len=m.max_model_len,
            replicas_ready=m.replicas_ready,
            replicas_total=m.replicas_total,
            chat=m.has_chat_template,
            fim=m.fim_template,
            fim_mode="native" if m.fim_template != "none" else "prefix-only",
        )

    async def metrics(self, ctx: RequestContext) -> BodyAnswer:
        return BodyAnswer(self.gateway_metrics.render(), content_type=_PROMETHEUS)

    async def engine_metrics(self, ctx: RequestContext) -> BodyAnswer:
        """Every ready replica's own vLLM metrics, labelled ``replica``, as its
        replica read them at its last health check (the engines stay unreachable)."""
        pages = await self.registry.source.engine_metrics()
        # Relabelling a few hundred series: off the event loop.
        body = await asyncio.to_thread(relabel_engine_metrics, pages)
        return BodyAnswer(body, content_type=_PROMETHEUS)
