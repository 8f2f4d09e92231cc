"""Runtime administration (admin keys only; the front door checks the role)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.adapters import (
    ADAPTER_NAME_PATTERN,
    AdapterRefused,
    add_adapter,
    load_registry,
    remove_adapter,
    set_default,
)
from serving.admission.keys import load_keys_file
from serving.api.responses import BodyAnswer, json_answer
from serving.config import ServingConfig
from serving.errors import BadRequestError, NotFoundError
from serving.request_context import RequestContext
from serving.upstream.registry import ReplicaRegistry, ScalingUnavailable


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    group: str = Field(min_length=1, description="Replica group to scale.")
    replicas: int = Field(ge=0, le=1024, description="Replicas the group should have.")


class AdapterAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ADAPTER_NAME_PATTERN, description="Unique adapter name.")
    base_model: str = Field(min_length=1, description="Served name of the model it adapts.")
    path: str = Field(min_length=1, description="The peft LoRA folder, under adapters.roots.")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The team that owns it.")
    make_default: bool = Field(default=False, description="Make it the tenant's default.")
    description: str = Field(default="", max_length=500)


class AdapterRemoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, description="The adapter to unregister (files stay).")


class AdminServing:
    def __init__(self, registry: ReplicaRegistry, config: ServingConfig | None = None) -> None:
        self.registry = registry
        self.config = config or ServingConfig()
        self.registry_file = Path(self.config.adapters.registry_file)
        self.keys_file = Path(self.config.auth.keys_file).expanduser()

    async def adapters(self, ctx: RequestContext) -> BodyAnswer:
        """Every registered adapter, whose default it is, and where it is loaded."""
        registry, keys = await asyncio.gather(
            asyncio.to_thread(load_registry, self.registry_file),
            asyncio.to_thread(load_keys_file, self.keys_file),
        )
        loaded: dict[str, list[str]] = {}
        for replica in self.registry.all():
            for adapter in replica.adapters:
                loaded.setdefault(adapter["name"], []).append(replica.replica_id)
        pins = {t: r.adapter for t, r in keys.tenants.items() if r.adapter}
        defaults = {**registry.defaults, **pins}  # a pin in the keys file wins
        listing = [
            {
                **record.model_dump(mode="json"),
                "default_of": sorted(t for t, a in defaults.items() if a == record.name),
                "loaded_on": loaded.get(record.name, []),
            }
            for record in registry.adapters
        ]
        return json_answer({"adapters": listing})

    async def add_adapter(self, request: AdapterAddRequest, ctx: RequestContext) -> BodyAnswer:
        """Register an adapter folder (checked: under adapters.roots, a LoRA, its rank)."""
        max_rank = self.config.max_lora_rank(request.base_model)
        if max_rank is None:
            raise BadRequestError(
                f"No replica group serves `{request.base_model}` with adapters "
                "(replica_groups[].lora.enabled).",
                param="base_model",
            )
        try:
            record = await asyncio.to_thread(
                add_adapter,
                self.registry_file,
                name=request.name,
                base_model=request.base_model,
                path=request.path,
                tenant=request.tenant,
                roots=self.config.adapters.roots,
                max_rank=max_rank,
                description=request.description,
            )
        except AdapterRefused as exc:
            field = "name" if "already registered" in str(exc) else "path"
            raise BadRequestError(str(exc), param=field, code="adapter_refused") from None
        if request.make_default:
            await asyncio.to_thread(set_default, self.registry_file, request.tenant, record.name)
        return json_answer(record.model_dump(mode="json"), status=201)

    async def remove_adapter(
        self, request: AdapterRemoveRequest, ctx: RequestContext
    ) -> BodyAnswer:
        """Unregister an adapter: tenants using it by default fall back to the
        base model, gateways unload it from the replicas (its files stay)."""
        try:
            record = await asyncio.to_thread(remove_adapter, self.registry_file, request.name)
        except KeyError:
            raise NotFoundError(
                f"No adapter `{request.name}` is registered.", param="name"
            ) from None
        keys = await asyncio.to_thread(load_keys_file, self.keys_file)
        pinned = sorted(t for t, r in keys.tenants.items() if r.adapter == request.name)
        # Pins live in the keys file (a Secret on Kubernetes): the operator's to change.
        return json_answer({"removed": record.name, "path": record.path, "still_pinned_by": pinned})

    async def replicas(self, ctx: RequestContext) -> BodyAnswer:
        """Replica groups and every replica's state and load (never secrets)."""
        groups = await self.registry.source.groups()
        reporter = self.registry.load_reporter
        listing: dict[str, Any] = {
            "routing": self.config.routing.policy,
            "queued": reporter() if reporter is not None else {},
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
