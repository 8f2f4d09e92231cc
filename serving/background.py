"""A step that runs every few seconds for as long as its owner lives (replica
list refresh, keys-file reload, the admission queue's tick): started and
stopped with the owner, a failing step logged and retried at the next turn,
never ending the loop.

A leaf: owners in any layer use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs ``step`` every ``interval_s`` seconds between :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        interval_s: float,
        *,
        logger: logging.Logger,
        first_at_once: bool = True,
    ) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.first_at_once = first_at_once  # else the first step waits an interval
        self._logger = logger
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forever(self) -> None:
        if not self.first_at_once:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. Ray blipped: keep the last good state
                self._logger.warning(
                    "%s failed (again in %gs): %s",
                    self.name,
                    self.interval_s,
                    exc or type(exc).__name__,
                    exc_info=self._logger.isEnabledFor(logging.DEBUG),
                )
            await asyncio.sleep(self.interval_s)
