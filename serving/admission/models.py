"""Which served model, and which team adapter, a request's ``model`` means
for the key that sent it.

- A served model's name: that model; with the tenant's default adapter
  (``tenants.<name>.adapter`` in the keys file) applied when it adapts that
  model and the model's replicas serve adapters.
- ``<base>:<adapter>``: that adapter of that model, for the tenant owning it.
- Anything else, another tenant's adapter included: the same 404 as an unknown
  model, listing only what this caller may use.
"""

from __future__ import annotations

from serving.adapters import AdapterCatalog, AdapterRecord
from serving.errors import BadRequestError, NotFoundError
from serving.request_context import RequestContext
from serving.upstream.registry import ModelStatus, ReplicaRegistry

ADAPTER_SEPARATOR = ":"


class ModelResolver:
    def __init__(self, registry: ReplicaRegistry, catalog: AdapterCatalog | None) -> None:
        self.registry = registry
        self.catalog = catalog

    def _usable(self, name: str, base: str, ctx: RequestContext | None) -> AdapterRecord | None:
        if self.catalog is None or ctx is None or ctx.tenant is None:
            return None
        return self.catalog.usable(name, tenant=ctx.tenant, base_model=base)

    def resolve(self, model: str, ctx: RequestContext | None, param: str = "model") -> ModelStatus:
        """The model's status; sets ``ctx.adapter`` when an adapter serves it.
        Raises NotFoundError (``param`` named) for anything this caller may not use."""
        status = self.registry.model(model)
        if status is not None:
            if ctx is not None and ctx.default_adapter and status.lora_capacity:
                record = self._usable(ctx.default_adapter, status.name, ctx)
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
