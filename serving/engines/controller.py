"""The controller: a named Ray actor that owns the replicas and knows their state.

Gateways find it by name (``ray.controller_name`` in ``ray.namespace``), so
discovery goes through Ray, never through hard-coded URLs. It reconciles:
creates the configured replicas, waits for each engine, notices restarts (Ray
re-runs a dead replica's ``__init__``, which boots a new engine) and keeps a
cached list the gateways poll cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from serving.config import ReplicaGroupConfig, ServingConfig
from serving.engines.replica import ReplicaActor
from serving.engines.types import ReplicaInfo, ReplicaState

logger = logging.getLogger("seed_serve.controller")

_POLL_INTERVAL_S = 1.0
_INFO_TIMEOUT_S = 10.0


@dataclass
class _Slot:
    replica_id: str
    group: ReplicaGroupConfig
    handle: Any
    info: ReplicaInfo
    waiting: asyncio.Task[None] | None = field(default=None, repr=False)


class ReplicaController:
    """Ray actor body (wrapped with ``ray.remote`` by :func:`create_or_get_controller`)."""

    def __init__(self, config_json: dict[str, Any], local_ray: bool) -> None:
        self.config = ServingConfig.model_validate(config_json)
        self.local_ray = local_ray
        self.slots: dict[str, _Slot] = {}
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ actions

    async def start(self) -> None:
        """Create the configured replicas (idempotent) and start reconciling."""
        import ray

        replica_cls = ray.remote(ReplicaActor)
        for group in self.config.replica_groups:
            for index in range(group.replicas):
                replica_id = f"{group.name}-{index}"
                if replica_id in self.slots:
                    continue
                handle = replica_cls.options(
                    name=f"{self.config.ray.controller_name}-{replica_id}",
                    namespace=self.config.ray.namespace,
                    get_if_exists=True,
                    num_cpus=group.num_cpus,
                    num_gpus=group.engine.gpus_per_replica,
                    max_restarts=group.max_restarts,
                    max_task_retries=0,
                ).remote(replica_id, group.model_dump(mode="json"), self.local_ray)
                info = ReplicaInfo(
                    replica_id=replica_id,
                    group=group.name,
                    model=group.engine.served_model_name,
                    state=ReplicaState.PENDING,
                )
                slot = _Slot(replica_id, group, handle, info)
                self.slots[replica_id] = slot
                self._watch_startup(slot)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever())

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
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def _poll(self, slot: _Slot) -> None:
        import ray

        if slot.info.state is ReplicaState.PENDING or (slot.waiting and not slot.waiting.done()):
            return  # still booting: its wait_ready call will report
        try:
            data = await asyncio.wait_for(slot.handle.info.remote(), _INFO_TIMEOUT_S)
        except asyncio.TimeoutError:
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
        return [slot.info.to_dict() for slot in self.slots.values()]

    async def tokenizer_json(self, model: str) -> str | None:
        """The tokenizer.json of ``model``, read by one of its ready replicas."""
        for slot in self.slots.values():
            if slot.info.model == model and slot.info.ready:
                result = await slot.handle.tokenizer_json.remote()
                return str(result) if result is not None else None
        return None

    async def config_json(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    async def shutdown(self) -> None:
        """Stop every engine and replica actor."""
        import ray

        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
        for slot in self.slots.values():
            if slot.waiting is not None:
                slot.waiting.cancel()

        async def stop(slot: _Slot) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.handle.stop.remote(), 30)
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
            slot.info.state = ReplicaState.STOPPED

        await asyncio.gather(*(stop(slot) for slot in self.slots.values()))


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
