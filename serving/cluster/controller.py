"""The controller: a named Ray actor that owns the replicas and knows their state.

Gateways find it by name (``ray.controller_name`` in ``ray.namespace``), so
discovery goes through Ray, never through hard-coded URLs. It reconciles:
places and creates the configured replicas (failing clearly when the cluster
cannot offer their resources), waits for each engine, health-checks them,
notices restarts (Ray re-runs a dead replica's ``__init__``, which boots a new
engine), scales groups on request or by load, and drains a replica before it
removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from serving.cluster.placement import PlacementPlan, placement_plan, unplaceable_message
from serving.cluster.replica import ReplicaActor
from serving.config import KvAwareRouting, ReplicaGroupConfig, RoutingConfig, ServingConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState, adapter_load_failed

logger = logging.getLogger("seed_serve.controller")

# On top of the replica's own health check (bounded by health.timeout_s).
_INFO_MARGIN_S = 10.0
_LOAD_REPORT_TTL_S = 10.0


@dataclass
class _Slot:
    replica_id: str
    group: str
    index: int
    info: ReplicaInfo
    handle: Any = None
    placement_group: Any = None
    waiting: asyncio.Task[None] | None = field(default=None, repr=False)
    draining: bool = False


class ReplicaController:
    """Ray actor body (wrapped with ``ray.remote`` by :func:`create_or_get_controller`)."""

    def __init__(self, config_json: dict[str, Any], local_ray: bool) -> None:
        self.config = ServingConfig.model_validate(config_json)
        self.local_ray = local_ray
        self.groups = {g.name: g for g in self.config.replica_groups}
        self.slots: dict[str, _Slot] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._gateway_queues: dict[str, tuple[float, dict[str, int]]] = {}
        self._last_scaled: dict[str, float] = {}
        self._started = False

    # ------------------------------------------------------------------ actions

    async def start(self) -> None:
        """Create the configured replicas (idempotent) and start reconciling."""
        if not self._started:
            self._started = True
            self._tasks.append(asyncio.create_task(self._poll_forever()))
            self._tasks.append(asyncio.create_task(self._autoscale_forever()))
        for group in self.groups.values():
            self._reconcile(group)

    def _reconcile(self, group: ReplicaGroupConfig) -> None:
        present = {s.index for s in self.slots.values() if s.group == group.name and not s.draining}
        for index in range(group.replicas):
            if index not in present and f"{group.name}-{index}" not in self.slots:
                self._add(group, index)
        for slot in list(self.slots.values()):
            if slot.group == group.name and slot.index >= group.replicas and not slot.draining:
                slot.draining = True
                self._tasks.append(asyncio.create_task(self._remove(slot)))

    def _add(self, group: ReplicaGroupConfig, index: int) -> None:
        replica_id = f"{group.name}-{index}"
        info = ReplicaInfo(
            replica_id=replica_id,
            group=group.name,
            model=group.engine.served_model_name,
            state=ReplicaState.PENDING,
            fim_template=group.engine.fim_template,
        )
        slot = _Slot(replica_id, group.name, index, info)
        self.slots[replica_id] = slot
        slot.waiting = asyncio.create_task(self._place_and_start(slot, group))

    async def _place_and_start(self, slot: _Slot, group: ReplicaGroupConfig) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        plan = placement_plan(group)
        pg = placement_group(plan.bundles, strategy=plan.strategy)
        try:
            await asyncio.wait_for(pg.ready(), group.placement_timeout_s)
        except Exception as exc:  # a timeout too
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
            slot.info.state = ReplicaState.FAILED
            slot.info.message = unplaceable_message(
                slot.replica_id,
                plan,
                group.placement_timeout_s,
                ray.cluster_resources(),
                ray.available_resources(),
            ) + ("" if isinstance(exc, asyncio.TimeoutError) else f" ({exc})")
            logger.error(slot.info.message)
            return
        if not plan.keep_reserved:
            # vLLM's Ray executor makes its own placement group for TP/PP
            # workers: ours only proved the cluster can hold the replica.
            remove_placement_group(pg)
            options = plan.actor_options
        else:
            slot.placement_group = pg
            options = {
                **plan.actor_options,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=0
                ),
            }
        engine_env: dict[str, str] = {}
        if not plan.keep_reserved:
            engine_env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        replica_cls = ray.remote(ReplicaActor)
        slot.handle = replica_cls.options(
            name=f"{self.config.ray.controller_name}-{slot.replica_id}",
            namespace=self.config.ray.namespace,
            get_if_exists=True,
            max_restarts=group.max_restarts,
            max_task_retries=0,
            **options,
        ).remote(
            slot.replica_id,
            group.model_dump(mode="json"),
            self.local_ray,
            self.config.health.model_dump(mode="json"),
            engine_env,
            list(self.config.adapters.roots),
            _kv_events_buffer_steps(group, self.config.routing),
            slot.index,
        )
        slot.info.state = ReplicaState.STARTING
        await self._wait_ready(slot)

    def _watch_startup(self, slot: _Slot) -> None:
        if slot.waiting is None or slot.waiting.done():
            slot.waiting = asyncio.create_task(self._wait_ready(slot))

    async def _wait_ready(self, slot: _Slot) -> None:
        import ray

        try:
            data = await slot.handle.wait_ready.remote()
            slot.info = ReplicaInfo.from_dict(data)
            if slot.info.ready:
                logger.info("replica %s ready at %s", slot.replica_id, slot.info.url)
            else:
                logger.error("replica %s failed: %s", slot.replica_id, slot.info.message)
        except ray.exceptions.ActorUnavailableError:
            slot.info.state = ReplicaState.RESTARTING
        except ray.exceptions.RayActorError as exc:
            slot.info.state = ReplicaState.FAILED
            slot.info.message = f"replica actor died: {exc}"

    async def _poll_forever(self) -> None:
        while not self._stopping:
            await asyncio.gather(*(self._poll(slot) for slot in list(self.slots.values())))
            await asyncio.sleep(self.config.health.interval_s)

    async def _poll(self, slot: _Slot) -> None:
        import ray

        if slot.handle is None or (slot.waiting and not slot.waiting.done()):
            return  # being placed or booting: its start-up task will report
        try:
            data = await asyncio.wait_for(
                slot.handle.info.remote(), self.config.health.timeout_s + _INFO_MARGIN_S
            )
        except TimeoutError:
            if slot.info.state is ReplicaState.READY:
                slot.info.state = ReplicaState.UNHEALTHY
                slot.info.message = "replica actor did not answer its health check"
            return
        except ray.exceptions.ActorUnavailableError:
            slot.info.state = ReplicaState.RESTARTING
            return
        except ray.exceptions.ActorDiedError as exc:
            slot.info.state = ReplicaState.FAILED
            slot.info.message = f"replica actor is dead (restarts exhausted): {exc}"
            return
        except ray.exceptions.RayActorError:
            slot.info.state = ReplicaState.RESTARTING
            return
        info = ReplicaInfo.from_dict(data)
        slot.info = info
        if info.state is ReplicaState.STARTING:
            # A restarted actor booted a new engine: wait for it again.
            self._watch_startup(slot)

    async def _remove(self, slot: _Slot) -> None:
        """Drain (no new requests; running ones finish), then stop and forget."""
        group = self.groups.get(slot.group)
        timeout = group.drain_timeout_s if group else 60.0
        logger.info("draining replica %s (up to %gs)", slot.replica_id, timeout)
        # Gateways refresh their replica lists every interval: let them see DRAINING first.
        await asyncio.sleep(self.config.gateway.replica_refresh_interval_s * 2)
        if slot.handle is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.handle.drain.remote(timeout), timeout + 10)
        await self._stop_slot(slot)
        if slot.waiting is not None:
            slot.waiting.cancel()
        self.slots.pop(slot.replica_id, None)
        logger.info("replica %s removed", slot.replica_id)

    async def scale(self, group_name: str, replicas: int) -> dict[str, Any]:
        """Set a group's replica count; new replicas start, surplus ones drain first."""
        group = self.groups.get(group_name)
        if group is None:
            raise ValueError(f"no replica group {group_name!r}; groups: {', '.join(self.groups)}")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        group.replicas = replicas
        self._last_scaled[group_name] = time.monotonic()
        self._reconcile(group)
        return {"group": group_name, "replicas": replicas}

    # ------------------------------------------------------------------ autoscaling

    async def report_load(self, gateway_id: str, queued: dict[str, int]) -> None:
        """Gateways report how many requests wait in their admission queues."""
        self._gateway_queues[gateway_id] = (time.monotonic(), dict(queued))

    def _gateway_queue(self, model: str) -> int:
        now = time.monotonic()
        return sum(
            queued.get(model, 0)
            for at, queued in self._gateway_queues.values()
            if now - at < _LOAD_REPORT_TTL_S
        )

    def desired_replicas(self, group: ReplicaGroupConfig) -> int:
        policy = group.autoscaling
        live = [s for s in self.slots.values() if s.group == group.name and not s.draining]
        load = sum(s.info.running + s.info.waiting for s in live)
        load += self._gateway_queue(group.engine.served_model_name)
        wanted = math.ceil(load / policy.target_queue_per_replica) if load else policy.min_replicas
        return max(policy.min_replicas, min(policy.max_replicas, wanted))

    async def _autoscale_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.health.interval_s)
            for group in self.groups.values():
                policy = group.autoscaling
                if not policy.enabled:
                    continue
                wanted = self.desired_replicas(group)
                since = time.monotonic() - self._last_scaled.get(group.name, 0.0)
                if wanted > group.replicas and since >= policy.scale_up_cooldown_s:
                    logger.info("autoscaling %s up: %d -> %d", group.name, group.replicas, wanted)
                    await self.scale(group.name, wanted)
                elif wanted < group.replicas and since >= policy.scale_down_cooldown_s:
                    logger.info("autoscaling %s down: %d -> %d", group.name, group.replicas, wanted)
                    await self.scale(group.name, wanted)

    # ------------------------------------------------------------------ queries

    async def wait_ready(self, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until every replica is ready or has failed; return their states."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            states = [slot.info.state for slot in self.slots.values()]
            if all(s in (ReplicaState.READY, ReplicaState.FAILED) for s in states):
                break
            await asyncio.sleep(0.25)
        return await self.list_replicas()

    async def list_replicas(self) -> list[dict[str, Any]]:
        """The cached state of every replica (cheap: no engine call)."""
        result = []
        for slot in self.slots.values():
            data = slot.info.to_dict()
            if slot.draining:
                data["state"] = ReplicaState.DRAINING.value
            result.append(data)
        return result

    async def tokenizer_json(self, model: str) -> str | None:
        """The tokenizer.json of ``model``, read by one of its ready replicas."""
        for slot in self.slots.values():
            if slot.info.model == model and slot.info.ready and slot.handle is not None:
                result = await slot.handle.tokenizer_json.remote()
                return str(result) if result is not None else None
        return None

    async def engine_metrics(self) -> dict[str, str]:
        """Each ready replica's engine /metrics page, as read at its last health
        check (for the gateways' /metrics/engines; the engines stay unreachable)."""
        ready = [
            slot
            for slot in self.slots.values()
            if slot.info.ready and slot.handle is not None and not slot.draining
        ]

        async def page(slot: _Slot) -> str:
            try:
                return str(
                    await asyncio.wait_for(
                        slot.handle.engine_metrics.remote(), self.config.health.timeout_s
                    )
                )
            except Exception:  # a replica busy or going: left out this time
                return ""

        pages = await asyncio.gather(*(page(slot) for slot in ready))
        return {slot.replica_id: text for slot, text in zip(ready, pages, strict=True) if text}

    async def ensure_adapter(self, replica_id: str, name: str, path: str) -> dict[str, Any]:
        """Make a team adapter resident on one replica (the gateway chose it)."""
        slot = self.slots.get(replica_id)
        if slot is None or slot.handle is None or not slot.info.ready or slot.draining:
            return adapter_load_failed(f"replica {replica_id} is not serving")
        result = dict(await slot.handle.ensure_adapter.remote(name, path))
        if result["status"] == "loaded":  # gateways see it with the next replica list
            slot.info.adapters = [
                a for a in slot.info.adapters if a["name"] not in (*result["evicted"], name)
            ] + [{"name": name, "idle_s": 0.0}]
        return result

    async def unload_adapter(self, name: str) -> list[str]:
        """Unload a team adapter from every replica holding it (it was removed)."""
        holding = [
            slot
            for slot in self.slots.values()
            if slot.handle is not None and any(a["name"] == name for a in slot.info.adapters)
        ]
        results = await asyncio.gather(
            *(slot.handle.unload_adapter.remote(name) for slot in holding), return_exceptions=True
        )
        return [
            slot.replica_id for slot, done in zip(holding, results, strict=True) if done is True
        ]

    async def config_json(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    async def groups_json(self) -> list[dict[str, Any]]:
        return [
            {"group": g.name, "replicas": g.replicas, "model": g.engine.served_model_name}
            for g in self.groups.values()
        ]

    async def shutdown(self) -> None:
        """Stop every engine and replica actor."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for slot in self.slots.values():
            if slot.waiting is not None:
                slot.waiting.cancel()
        await asyncio.gather(*(self._stop_slot(slot) for slot in self.slots.values()))

    @staticmethod
    async def _stop_slot(slot: _Slot) -> None:
        """Stop the engine, kill the actor, free its resources (each step best-effort)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if slot.handle is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.handle.stop.remote(), 30)
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
        if slot.placement_group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(slot.placement_group)
        slot.info.state = ReplicaState.STOPPED


def create_or_get_controller(config: ServingConfig, *, local_ray: bool, detached: bool) -> Any:
    """The named controller actor: created from ``config`` unless one already runs."""
    import ray

    controller_cls = ray.remote(ReplicaController)
    options: dict[str, Any] = {
        "name": config.ray.controller_name,
        "namespace": config.ray.namespace,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": 0,
    }
    if detached:
        options["lifetime"] = "detached"
    return controller_cls.options(**options).remote(config.model_dump(mode="json"), local_ray)


__all__ = ["PlacementPlan", "ReplicaController", "create_or_get_controller"]


def _kv_events_buffer_steps(group: ReplicaGroupConfig, routing: RoutingConfig) -> int | None:
    """How many engine steps of KV-cache events the group's engines keep to
    replay (None: they publish none)."""
    kv_aware = isinstance(routing, KvAwareRouting)
    if not (group.kv_events if group.kv_events is not None else kv_aware):
        return None
    return routing.events_buffer_steps if isinstance(routing, KvAwareRouting) else 10_000
