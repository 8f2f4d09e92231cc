"""Runtime administration (admin keys only; the front door checks the role)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.api.responses import BodyAnswer, json_answer
from serving.errors import BadRequestError
from serving.request_context import RequestContext
from serving.upstream.registry import ReplicaRegistry, ScalingUnavailable


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    group: str = Field(min_length=1, description="Replica group to scale.")
    replicas: int = Field(ge=0, le=1024, description="Replicas the group should have.")


class AdminServing:
    def __init__(self, registry: ReplicaRegistry) -> None:
        self.registry = registry

    async def replicas(self, ctx: RequestContext) -> BodyAnswer:
        """Replica groups and every replica's state and load (never secrets)."""
        groups = await self.registry.source.groups()
        listing: dict[str, Any] = {
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
                for r in self.registry.all()
            ],
        }
        return json_answer(listing)

    async def scale(self, request: ScaleRequest, ctx: RequestContext) -> BodyAnswer:
        """Add or remove replicas of a group without a restart (removal drains first)."""
        try:
            result = await self.registry.source.scale(request.group, request.replicas)
        except ScalingUnavailable as exc:
            raise BadRequestError(str(exc)) from None
        except ValueError as exc:
            raise BadRequestError(str(exc), param="group") from None
        return json_answer(result)
