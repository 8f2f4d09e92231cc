"""A replica's resident team adapters: loaded into its engine at run time
through vLLM's adapter API (behind the replica secret), evicted least
recently used first when the replica is full, and never evicted while used
within ``min_resident_s`` (the bound on thrashing: a newcomer waits instead).

The replica is the authority on its resident set (several gateways may ask it
to load adapters); gateways learn the set from the replica's info.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from serving.adapters import AdapterRefused, check_adapter_folder
from serving.config import LoraConfig
from serving.engine_link.replica_info import adapter_load_failed

logger = logging.getLogger("seed_serve.replica.adapters")

# (method, path, body, timeout) -> (status, body)
EngineCall = Callable[..., Awaitable[tuple[int, bytes]]]
EnsureStatus = Literal["resident", "loaded", "full", "failed"]
_LOAD_TIMEOUT_S = 120.0  # reading weights from a shared volume can be slow


@dataclass
class _Resident:
    path: str
    last_used: float


class ResidentAdapters:
    def __init__(
        self,
        lora: LoraConfig,
        roots: list[str],
        call: EngineCall,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lora = lora
        self.roots = roots
        self.call = call
        self.clock = clock
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # LRU first
        self._lock = asyncio.Lock()

    def report(self) -> list[dict[str, Any]]:
        """The resident adapters, least recently used first, with idle seconds."""
        now = self.clock()
        return [
            {"name": name, "idle_s": round(max(0.0, now - r.last_used), 3)}
            for name, r in self._resident.items()
        ]

    def seen_active(self, names: Iterable[str]) -> None:
        """Adapters the engine reported running or waiting: just used."""
        for name in names:
            if name in self._resident:
                self._touch(name)

    def _touch(self, name: str) -> None:
        self._resident[name].last_used = self.clock()
        self._resident.move_to_end(name)

    def _victim(self) -> str | None:
        now = self.clock()
        for name, resident in self._resident.items():  # least recently used first
            if now - resident.last_used >= self.lora.min_resident_s:
                return name
        return None

    async def ensure(self, name: str, path: str) -> dict[str, Any]:
        """Make ``name`` (at ``path``) resident: {"status": resident | loaded |
        full | failed, "evicted": [...], "load_s": seconds, "message": why}."""
        if not self.lora.enabled:
            return _answer("failed", message="this replica group does not serve adapters")
        async with self._lock:
            resident = self._resident.get(name)
            if resident is not None and resident.path == path:
                self._touch(name)
                return _answer("resident")
            try:
                folder = check_adapter_folder(path, self.roots, max_rank=self.lora.max_lora_rank)
            except AdapterRefused as exc:
                return _answer("failed", message=str(exc))
            evicted: list[str] = []
            if resident is not None:  # the same name, a new folder: replace it
                await self._unload(name)
                evicted.append(name)
            elif len(self._resident) >= self.lora.capacity:
                victim = self._victim()
                if victim is None:
                    return _answer(
                        "full",
                        message=f"all {self.lora.capacity} adapter slots were used within "
                        f"{self.lora.min_resident_s:g}s",
                    )
                await self._unload(victim)
                evicted.append(victim)
            began = self.clock()
            body = {"lora_name": name, "lora_path": str(folder.path)}
            try:
                status, raw = await self.call(
                    "POST", "/v1/load_lora_adapter", body, timeout_s=_LOAD_TIMEOUT_S
                )
            except Exception as exc:  # the engine did not answer: it is the health check's
                return _answer("failed", evicted, message=f"the engine did not answer: {exc}")
            if status != 200:
                message = _engine_message(raw) or f"HTTP {status}"
                logger.warning("adapter %s failed to load: %s", name, message)
                return _answer("failed", evicted, message=message)
            self._resident[name] = _Resident(str(folder.path), self.clock())
            load_s = self.clock() - began
            logger.info("adapter %s loaded in %.2fs (evicted: %s)", name, load_s, evicted)
            return _answer("loaded", evicted, load_s=load_s)

    async def unload(self, name: str) -> bool:
        """Unload ``name`` if resident (it was removed from the registry)."""
        async with self._lock:
            if name not in self._resident:
                return False
            await self._unload(name)
            return True

    async def _unload(self, name: str) -> None:
        self._resident.pop(name, None)
        try:
            status, raw = await self.call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        except Exception as exc:
            logger.warning("unloading adapter %s: the engine did not answer: %s", name, exc)
            return
        if status != 200:
            logger.warning("unloading adapter %s: %s", name, _engine_message(raw) or status)


def _answer(
    status: EnsureStatus,
    evicted: list[str] | None = None,
    *,
    load_s: float = 0.0,
    message: str = "",
) -> dict[str, Any]:
    if status == "failed":
        return adapter_load_failed(message, evicted)
    return {"status": status, "evicted": evicted or [], "load_s": load_s, "message": message}


def _engine_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:500]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]
