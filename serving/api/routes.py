"""Thin routes: parse, hand to the serving logic, return."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from serving.admission.context import context_of
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
from serving.api.disconnect import unless_disconnected
from serving.api.feedback import SuggestionFeedback
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from serving.api.serving import OpenAIServing
from serving.api.state import GatewayState
from serving.engines.registry import ReplicaRegistry
from serving.engines.stats import EngineStatsPoller
from serving.errors import BadRequestError
from serving.observability.metrics import GatewayMetrics

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 429, 500, 502, 503)
}


def openai_router(serving: OpenAIServing, registry: ReplicaRegistry) -> APIRouter:
    router = APIRouter()
    started = int(time.time())

    @router.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(
            data=[
                ModelCard(
                    id=m.name,
                    created=started,
                    max_model_len=m.max_model_len,
                    replicas_ready=m.replicas_ready,
                    replicas_total=m.replicas_total,
                    chat=m.has_chat_template,
                    fim=m.fim_template,
                    fim_mode="native" if m.fim_template != "none" else "prefix-only",
                )
                for m in registry.models()
            ]
        )

    @router.post("/v1/completions", responses=_ERRORS)
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        ctx = context_of(request.scope)
        return await unless_disconnected(request.receive, serving.completions(body, ctx))

    @router.post("/v1/chat/completions", responses=_ERRORS)
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        ctx = context_of(request.scope)
        return await unless_disconnected(request.receive, serving.chat(body, ctx))

    return router


def code_router(code: CodeServing, feedback: SuggestionFeedback) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/code/events", responses=_ERRORS | {409: {"model": ErrorResponse}})
    async def suggestion_event(
        body: SuggestionEventRequest, request: Request
    ) -> SuggestionEventResponse:
        """Report that a completion was shown, accepted or dismissed (same key)."""
        return await feedback.report(body, context_of(request.scope))

    @router.post(
        "/v1/code/completions",
        responses={**_ERRORS, 200: {"model": CodeCompletionResponse}},
        response_model=None,
    )
    async def code_completion(body: CodeCompletionRequest, request: Request) -> Response:
        """Completion at the cursor: FIM prompt, post-processed to the line/block."""
        return await unless_disconnected(
            request.receive, code.completion(body, context_of(request.scope))
        )

    @router.post("/v1/code/repairs", responses=_ERRORS)
    async def code_repair(body: CodeRepairRequest, request: Request) -> CodeRepairResponse:
        """Fix code given its error; candidates checked, verified against a test."""
        return await unless_disconnected(
            request.receive, code.repair(body, context_of(request.scope))
        )

    @router.post("/v1/code/tests", responses=_ERRORS)
    async def code_tests(body: CodeTestsRequest, request: Request) -> CodeTestsResponse:
        """Unit tests for the code, run against it in the sandbox."""
        return await unless_disconnected(
            request.receive, code.tests(body, context_of(request.scope))
        )

    return router


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    group: str = Field(min_length=1, description="Replica group to scale.")
    replicas: int = Field(ge=0, le=1024, description="Replicas the group should have.")


def admin_router(registry: ReplicaRegistry) -> APIRouter:
    """Runtime administration (admin keys only; the middleware checks the role)."""
    router = APIRouter(prefix="/v1/admin")
    source = registry.source

    @router.get("/replicas")
    async def replicas() -> dict[str, Any]:
        """Replica groups and every replica's state and load (never secrets)."""
        groups = await source.groups() if hasattr(source, "groups") else []
        return {
            "groups": groups,
            "replicas": [
                {
                    "id": r.replica_id,
                    "group": r.group,
                    "model": r.model,
                    "state": r.state.value,
                    "message": r.message,
                    "running": r.running,
                    "waiting": r.waiting,
                }
                for r in registry.all()
            ],
        }

    @router.post("/replicas")
    async def scale(body: ScaleRequest) -> dict[str, Any]:
        """Add or remove replicas of a group without a restart (removal drains first)."""
        if not hasattr(source, "scale"):
            raise BadRequestError("This gateway has no Ray controller to scale.")
        try:
            return dict(await source.scale(body.group, body.replicas))
        except Exception as exc:  # the controller's ValueError comes wrapped by Ray
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, ValueError):
                raise BadRequestError(str(cause), param="group") from None
            raise

    return router


def metrics_router(metrics: GatewayMetrics, stats: EngineStatsPoller) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus metrics (admin key on the main port; open on metrics_port)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/metrics/engines", include_in_schema=False)
    def engine_metrics() -> Response:
        """Every replica's own vLLM metrics, labelled ``replica``, as last polled
        (the engines' API stays unreachable). A plain ``def``: the relabelling runs
        in the thread pool, off the event loop."""
        return Response(stats.render_engine_metrics(), media_type=CONTENT_TYPE_LATEST)

    return router


def health_router(registry: ReplicaRegistry, state: GatewayState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        """The gateway process is alive."""
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        """At least one replica can serve."""
        replicas = {r.replica_id: r.state.value for r in registry.all()}
        is_ready = registry.any_ready() and not state.draining
        status = "draining" if state.draining else ("ready" if is_ready else "not_ready")
        return JSONResponse(
            {"status": status, "replicas": replicas},
            status_code=200 if is_ready else 503,
        )

    return router
