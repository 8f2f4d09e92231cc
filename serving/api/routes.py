"""Thin routes: parse, hand to the serving logic, return."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api.middleware import request_id_of
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from serving.api.serving import OpenAIServing
from serving.engines.registry import ReplicaRegistry

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
                )
                for m in registry.models()
            ]
        )

    @router.post("/v1/completions", responses=_ERRORS)
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await serving.completions(body, request_id_of(request.scope))

    @router.post("/v1/chat/completions", responses=_ERRORS)
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await serving.chat(body, request_id_of(request.scope))

    return router


def health_router(registry: ReplicaRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        """The gateway process is alive."""
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        """At least one replica can serve."""
        replicas = {r.replica_id: r.state.value for r in registry.all()}
        is_ready = registry.any_ready()
        return JSONResponse(
            {"status": "ready" if is_ready else "not_ready", "replicas": replicas},
            status_code=200 if is_ready else 503,
        )

    return router
