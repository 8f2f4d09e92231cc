"""The gateway's view of the replicas, refreshed from their source (the Ray
controller) off the request path: which exist, which can serve, their load
(as their replicas last read it from the engines), each model's status and
tokenizer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol

from serving.background import Periodic
from serving.engine_link.replica_info import ReplicaInfo, adapter_load_failed
from serving.tokens import TokenCounter
from serving.upstream.routing import RouteRequest

logger = logging.getLogger("seed_serve.registry")


_BYTE_COUNTER = TokenCounter(None)
_SUSPECT_S = 5.0


class ScalingUnavailable(Exception):
    """This gateway's replica source cannot change the cluster (no controller)."""


class ReplicaSource(Protocol):
    """Where the registry learns which replicas exist (and, through it, the
    gateway reaches the cluster's controller)."""

    async def list_replicas(self) -> list[ReplicaInfo]: ...

    async def tokenizer_json(self, model: str) -> str | None: ...

    async def engine_metrics(self) -> dict[str, str]:
        """Each ready replica's engine /metrics page, by replica id."""

    async def report_load(self, gateway_id: str, queued: dict[str, int]) -> None:
        """This gateway's queued requests per model (for autoscaling)."""

    async def groups(self) -> list[dict[str, Any]]: ...

    async def scale(self, group: str, replicas: int) -> dict[str, Any]:
        """Raises ScalingUnavailable, or ValueError for an unknown group."""

    async def ensure_adapter(self, replica_id: str, name: str, path: str) -> dict[str, Any]:
        """Make a team adapter resident on one replica: {"status": resident |
        loaded | full | failed, "evicted", "load_s", "message"}."""

    async def unload_adapter(self, name: str) -> list[str]:
        """Unload an adapter everywhere; the replicas that held it."""


class RayControllerSource:
    """Asks the controller actor (its cached state: no engine round trip)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    async def list_replicas(self) -> list[ReplicaInfo]:
        data = await self.controller.list_replicas.remote()
        return [ReplicaInfo.from_dict(item) for item in data]

    async def tokenizer_json(self, model: str) -> str | None:
        result = await self.controller.tokenizer_json.remote(model)
        return str(result) if result is not None else None

    async def engine_metrics(self) -> dict[str, str]:
        return dict(await self.controller.engine_metrics.remote())

    async def report_load(self, gateway_id: str, queued: dict[str, int]) -> None:
        await self.controller.report_load.remote(gateway_id, queued)

    async def groups(self) -> list[dict[str, Any]]:
        return list(await self.controller.groups_json.remote())

    async def scale(self, group: str, replicas: int) -> dict[str, Any]:
        try:
            return dict(await self.controller.scale.remote(group, replicas))
        except Exception as exc:  # the controller's ValueError comes wrapped by Ray
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, ValueError):
                raise cause from None
            raise

    async def ensure_adapter(self, replica_id: str, name: str, path: str) -> dict[str, Any]:
        return dict(await self.controller.ensure_adapter.remote(replica_id, name, path))

    async def unload_adapter(self, name: str) -> list[str]:
        return list(await self.controller.unload_adapter.remote(name))


class StaticSource:
    """A fixed list of replicas (benchmark instruments and tests: no Ray cluster)."""

    def __init__(self, replicas: list[ReplicaInfo]) -> None:
        self.replicas = replicas

    async def list_replicas(self) -> list[ReplicaInfo]:
        return list(self.replicas)

    async def tokenizer_json(self, model: str) -> str | None:
        return None

    async def engine_metrics(self) -> dict[str, str]:
        return {}

    async def report_load(self, gateway_id: str, queued: dict[str, int]) -> None:
        return None

    async def groups(self) -> list[dict[str, Any]]:
        return []

    async def scale(self, group: str, replicas: int) -> dict[str, Any]:
        raise ScalingUnavailable("This gateway has no Ray controller to scale.")

    async def ensure_adapter(self, replica_id: str, name: str, path: str) -> dict[str, Any]:
        message = "this gateway has no Ray controller to load adapters"
        return adapter_load_failed(message)

    async def unload_adapter(self, name: str) -> list[str]:
        return []


@dataclass(frozen=True)
class ModelStatus:
    """What /v1/models says about one served model."""

    name: str
    max_model_len: int | None
    has_chat_template: bool
    fim_template: str
    replicas_ready: int
    replicas_total: int
    lora_capacity: int = 0  # adapters its replicas keep loaded (0: no team adapters)


RefreshListener = Callable[[list[ReplicaInfo], Callable[[str], bool]], None]


class ReplicaRegistry:
    def __init__(self, source: ReplicaSource, *, refresh_interval_s: float = 1.0) -> None:
        self.source = source
        self.gateway_id = uuid.uuid4().hex[:12]
        # Set by the app factory: the admission queue's depth per model,
        # reported to the controller for autoscaling.
        self.load_reporter: Callable[[], dict[str, int]] | None = None
        # Called after each refresh with the replicas and `is_ready` (metrics).
        self.listeners: list[RefreshListener] = []
        self._replicas: list[ReplicaInfo] = []
        self._refreshed = asyncio.Event()
        self._counters: dict[str, TokenCounter] = {}
        self._suspects: dict[str, tuple[str, float]] = {}
        self._loop = Periodic("replica refresh", self.refresh, refresh_interval_s, logger=logger)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def refresh(self) -> None:
        replicas = await self.source.list_replicas()
        before = {r.replica_id: r.state for r in self._replicas}
        for replica in replicas:
            if before.get(replica.replica_id) != replica.state:
                logger.info("replica %s is %s", replica.replica_id, replica.state.value)
        self._replicas = replicas
        self._refreshed.set()
        for listener in self.listeners:
            listener(replicas, self.is_ready)
        if self.load_reporter is not None:
            try:
                await self.source.report_load(self.gateway_id, self.load_reporter())
            except Exception as exc:
                logger.debug("could not report load: %s", exc)
        for model in {r.model for r in replicas if r.ready} - set(self._counters):
            try:
                tokenizer = await self.source.tokenizer_json(model)
                # Parsing a multi-MB tokenizer.json takes 100+ ms: not on the event loop.
                self._counters[model] = await asyncio.to_thread(TokenCounter, tokenizer)
            except Exception as exc:
                logger.warning("no tokenizer for %s yet: %s", model, exc)

    async def wait_first_refresh(self, timeout_s: float = 30.0) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._refreshed.wait(), timeout_s)

    # ------------------------------------------------------------------ queries

    def all(self) -> list[ReplicaInfo]:
        return list(self._replicas)

    def _usable(self, replica: ReplicaInfo) -> bool:
        if not replica.ready:
            return False
        suspect = self._suspects.get(replica.replica_id)
        if suspect is None:
            return True
        url, until = suspect
        if replica.url != url or time.monotonic() > until:
            del self._suspects[replica.replica_id]  # a new engine, or the grace is over
            return True
        return False

    def ready(self, model: str) -> list[ReplicaInfo]:
        return [r for r in self._replicas if r.model == model and self._usable(r)]

    def admitting(
        self, route: RouteRequest, exclude: AbstractSet[str] = frozenset()
    ) -> list[ReplicaInfo]:
        """The model's ready replicas ``route`` may go to, less ``exclude`` (a
        retry's replicas that already failed it)."""
        return [
            r for r in self.ready(route.model) if r.replica_id not in exclude and route.admits(r)
        ]

    def is_ready(self, replica_id: str) -> bool:
        return any(r.replica_id == replica_id and self._usable(r) for r in self._replicas)

    def any_ready(self) -> bool:
        return any(self._usable(r) for r in self._replicas)

    def suspect(self, replica_id: str, seconds: float = _SUSPECT_S) -> None:
        """A request just failed there: keep new work away until the controller's
        health checks have had time to say what happened (or a new engine is up)."""
        for replica in self._replicas:
            if replica.replica_id == replica_id:
                self._suspects[replica_id] = (replica.url, time.monotonic() + seconds)

    def models(self) -> list[ModelStatus]:
        by_model = itertools.groupby(
            sorted(self._replicas, key=lambda r: r.model), key=lambda r: r.model
        )
        return [self._status(name, list(group)) for name, group in by_model]

    def _status(self, name: str, replicas: list[ReplicaInfo]) -> ModelStatus:
        ready = [r for r in replicas if self._usable(r)]
        lens = [r.max_model_len for r in ready if r.max_model_len]
        return ModelStatus(
            name=name,
            max_model_len=min(lens) if lens else None,
            has_chat_template=any(r.has_chat_template for r in ready),
            fim_template=replicas[0].fim_template,
            replicas_ready=len(ready),
            replicas_total=len(replicas),
            lora_capacity=max((r.lora_capacity for r in replicas), default=0),
        )

    def prompt_tokens(self, model: str, prompt: str) -> list[int] | None:
        """``prompt``'s token ids as the model's engines see them (their BOS
        first), when the tokenizer and a replica that reports its prefix are known."""
        ids = self.token_counter(model).ids(prompt)
        if ids is None:
            return None
        for replica in self._replicas:
            if replica.model == model and replica.prompt_prefix_ids is not None:
                return replica.prompt_prefix_ids + ids
        return None

    def token_counter(self, model: str) -> TokenCounter:
        """The model's tokenizer (byte counts until it has been fetched)."""
        return self._counters.get(model) or _BYTE_COUNTER

    def model(self, name: str) -> ModelStatus | None:
        replicas = [r for r in self._replicas if r.model == name]  # on every request: no sort
        return self._status(name, replicas) if replicas else None
