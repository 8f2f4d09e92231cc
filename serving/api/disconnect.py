"""Noticing that a client left, so work stops at once: before the answer
begins (``DisconnectWatch.run``) and while a stream is relayed
(``serving.api.responses.EventStream``).

One small task per request waits for ``http.disconnect`` and then cancels the
request's own task, instead of running the work in tasks of its own
(Starlette's ``StreamingResponse`` starts an anyio task group per stream):
measured with ``benchmarks/overhead capacity``, this is a large share of the
gateway's per-request cost. The gateway hands the watch that guarded the
work on to the stream that follows: one watcher task per request, not one
each (no CPU change beyond noise in an A/B: benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer began."""


async def _until_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatch:
    """Cancels the current task when the client disconnects, until closed.

    ``left`` tells the caller that a CancelledError was ours (then it calls
    ``absorb``), not a cancellation from outside (shutdown), which must go on.
    """

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self.left = False
        self._closed = False
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(_until_disconnect(receive))
        self._watcher.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if self._closed or watcher.cancelled() or watcher.exception() is not None:
            return
        self.left = True
        if self._task is not None:
            self._task.cancel()

    async def run(self, work: Awaitable[T]) -> T:
        """``work``'s result; if the client disconnects first, ``work`` is
        cancelled (which closes the engine connection, and vLLM aborts the
        request) and this raises ClientDisconnected."""
        try:
            return await work
        except asyncio.CancelledError:
            if not self.left:
                raise
            self.absorb()
            raise ClientDisconnected() from None

    def absorb(self) -> None:
        """Take back our own cancellation (the task goes on to clean up)."""
        if self._task is not None:
            self._task.uncancel()

    def close(self) -> None:
        self._closed = True
        self._watcher.cancel()


__all__ = ["ClientDisconnected", "DisconnectWatch"]
