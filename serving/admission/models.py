"""Which served model, and which team adapter, a request's ``model`` means
for the key that sent it.

- A served model's name: that model; with the tenant's adapter applied when
  it adapts that model and the model's replicas serve adapters: the one
  pinned in the keys file (``tenants.<name>.adapter``), else the one published
  as its default in the adapter registry (``adapters train``, ``--default``).
- ``<base>:<adapter>``: that adapter of that model, for the tenant owning it.
- Anything else, another tenant's adapter included: the same 404 as an unknown
  model, listing only what this caller may use.
"""

from __future__ import annotations

import asyncio
import logging

from serving.adapters import AdapterCatalog, AdapterRecord
from serving.background import Periodic
from serving.errors import BadRequestError, ConfigError, NotFoundError
from serving.request_context import RequestContext
from serving.upstream.registry import ModelStatus, ReplicaRegistry

ADAPTER_SEPARATOR = ":"
logger = logging.getLogger("seed_serve.adapters")


class ModelResolver:
    def __init__(
        self,
        registry: ReplicaRegistry,
        catalog: AdapterCatalog | None,
        *,
        reload_interval_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self._watch = Periodic(
            "adapter registry check", self.reload, reload_interval_s, logger=logger
        )

    async def start(self) -> None:
        if self.catalog is not None:
            self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    async def reload(self) -> None:
        """Re-read the adapter registry when it changed; adapters removed (or
        moved to a new folder) are unloaded from the replicas holding them."""
        if self.catalog is None:
            return
        before = {a.name: a.path for a in self.catalog.all()}
        try:
            changed = await asyncio.to_thread(self.catalog.reload)
        except ConfigError as exc:
            logger.error("adapter registry not reloaded (the last good one stays): %s", exc)
            return
        if not changed:
            return
        after = {a.name: a.path for a in self.catalog.all()}
        logger.info("adapter registry reloaded: %d adapters", len(after))
        for name, path in before.items():
            if after.get(name) != path:
                try:
                    holders = await self.registry.source.unload_adapter(name)
                except Exception as exc:
                    logger.warning("could not unload adapter %s: %s", name, exc)
                    continue
                if holders:
                    logger.info("adapter %s unloaded from %s", name, ", ".join(holders))

    def _usable(self, name: str, base: str, ctx: RequestContext | None) -> AdapterRecord | None:
        if self.catalog is None or ctx is None or ctx.tenant is None:
            return None
        return self.catalog.usable(name, tenant=ctx.tenant, base_model=base)

    def resolve(self, model: str, ctx: RequestContext | None, param: str = "model") -> ModelStatus:
        """The model's status; sets ``ctx.adapter`` when an adapter serves it.
        Raises NotFoundError (``param`` named) for anything this caller may not use."""
        status = self.registry.model(model)
        if status is not None:
            default = self._default(ctx)
            if ctx is not None and default and status.lora_capacity:
                record = self._usable(default, status.name, ctx)
                if record is not None:
                    _use(record, ctx)
            return status
        base, separator, name = model.rpartition(ADAPTER_SEPARATOR)
        if separator:
            status = self.registry.model(base)
            record = self._usable(name, base, ctx) if status is not None else None
            if status is not None and record is not None and ctx is not None:
                if not status.lora_capacity:
                    raise BadRequestError(
                        f"The replicas of `{base}` do not serve team adapters "
                        "(replica_groups[].lora.enabled is off).",
                        param=param,
                        code="adapters_not_enabled",
                    )
                _use(record, ctx)
                return status
        raise NotFoundError(
            f"The model `{model}` does not exist. Available: " + ", ".join(self.ids(ctx)),
            param=param,
            code="model_not_found",
        )

    def _default(self, ctx: RequestContext | None) -> str | None:
        """The tenant's adapter: pinned in the keys file, else published in
        the adapter registry."""
        if ctx is None:
            return None
        if ctx.default_adapter:
            return ctx.default_adapter
        return self.catalog.default_of(ctx.tenant) if self.catalog is not None else None

    def ids(self, ctx: RequestContext | None) -> list[str]:
        """The model ids this caller may use: served models, then its adapters."""
        served = [m.name for m in self.registry.models()]
        return served + [f"{a.base_model}{ADAPTER_SEPARATOR}{a.name}" for a in self.adapters(ctx)]

    def adapters(self, ctx: RequestContext | None) -> list[AdapterRecord]:
        """The caller's tenant's adapters of models served here."""
        if self.catalog is None or ctx is None or ctx.tenant is None:
            return []
        served = {m.name for m in self.registry.models() if m.lora_capacity}
        return [a for a in self.catalog.of_tenant(ctx.tenant) if a.base_model in served]


def _use(record: AdapterRecord, ctx: RequestContext) -> None:
    ctx.adapter = record.name
    ctx.adapter_path = record.path
