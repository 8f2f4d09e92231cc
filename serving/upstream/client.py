"""Requests to the engines, over a transport.

The transport is the seam between the gateway and the engines: production
uses :class:`~serving.engine_link.http.EngineConnectionPool` (HTTP/1.1, kept
alive, per engine); the tests give a scripted in-process engine. Errors, from
either: :class:`EngineHTTPError` (and its :class:`EngineConnectionError`) and
``TimeoutError``.
"""

from __future__ import annotations

from typing import Protocol

from serving.config import TimeoutsConfig
from serving.engine_link.http import (
    EngineConnectionError,
    EngineConnectionPool,
    EngineHTTPError,
)
from serving.engine_link.replica_info import ReplicaInfo

__all__ = [
    "EngineAnswer",
    "EngineClient",
    "EngineConnectionError",
    "EngineHTTPError",
    "EngineTransport",
]


class EngineAnswer(Protocol):
    """An engine's answer: its status at once, its body as it arrives."""

    status: int

    async def readany(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at its end."""

    async def read(self) -> bytes:
        """The whole (rest of the) body."""

    def release(self) -> None:
        """Done: the connection is kept if the answer was read to its end."""

    def close(self) -> None:
        """Drop the connection mid-answer (vLLM then aborts the request)."""


class EngineTransport(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        path: str,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        idle_s: float | None = None,
        total_s: float | None = None,
    ) -> EngineAnswer:
        """The answer once its headers arrived (within ``idle_s``, if given)."""

    def close(self) -> None: ...


class EngineClient:
    def __init__(self, timeouts: TimeoutsConfig, transport: EngineTransport | None = None) -> None:
        self.timeouts = timeouts
        self.transport: EngineTransport = transport or EngineConnectionPool(
            connect_s=timeouts.connect_s, total_s=timeouts.total_s
        )
        self._headers: dict[str, bytes] = {}  # per engine token

    async def post(
        self, replica: ReplicaInfo, path: str, body: bytes, *, stream: bool
    ) -> EngineAnswer:
        """Send ``body`` (JSON) to the replica; the caller reads and releases the answer.

        A stream may not pause longer than ``idle_s`` between reads; a plain
        answer comes whole at the end, so only the total limit applies to it.
        """
        headers = self._headers.get(replica.token)
        if headers is None:
            headers = (
                f"Authorization: Bearer {replica.token}\r\nContent-Type: application/json\r\n"
            ).encode()
            self._headers[replica.token] = headers
        return await self.transport.request(
            "POST",
            replica.url,
            path,
            body,
            headers,
            idle_s=self.timeouts.idle_s if stream else None,
        )

    async def close(self) -> None:
        self.transport.close()
