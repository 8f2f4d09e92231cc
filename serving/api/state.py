"""The gateway process's own state: how many requests are in flight, and whether
it is draining (SIGTERM: refuse new work, let in-flight work finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger("seed_serve.drain")


class GatewayState:
    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for in-flight ones; True if all finished."""
        self.draining = True
        logger.info(
            "draining: %d request(s) in flight, waiting up to %gs", self.inflight, timeout_s
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        if self.inflight:
            logger.warning("drain timeout: %d request(s) still in flight", self.inflight)
            return False
        logger.info("drained")
        return True
