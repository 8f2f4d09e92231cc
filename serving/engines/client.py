"""HTTP to the engines: kept-alive connections, one pool per gateway."""

from __future__ import annotations

from serving.config import TimeoutsConfig
from serving.engines._http import (
    EngineConnectionError,
    EngineConnectionPool,
    EngineHTTPError,
    EngineResponse,
)
from serving.engines.types import ReplicaInfo

__all__ = [
    "EngineClient",
    "EngineConnectionError",
    "EngineHTTPError",
    "EngineResponse",
]


class EngineClient:
    def __init__(self, timeouts: TimeoutsConfig) -> None:
        self.timeouts = timeouts
        self._pool = EngineConnectionPool(connect_s=timeouts.connect_s, total_s=timeouts.total_s)
        self._headers: dict[str, bytes] = {}  # per engine token

    async def post(
        self, replica: ReplicaInfo, path: str, body: bytes, *, stream: bool
    ) -> EngineResponse:
        """Send ``body`` (JSON) to the replica; the caller reads and releases the response.

        A stream may not pause longer than ``idle_s`` between reads; a plain
        answer comes whole at the end, so only the total limit applies to it.
        Raises ``EngineHTTPError`` or ``TimeoutError``.
        """
        headers = self._headers.get(replica.token)
        if headers is None:
            headers = (
                f"Authorization: Bearer {replica.token}\r\nContent-Type: application/json\r\n"
            ).encode()
            self._headers[replica.token] = headers
        return await self._pool.post(
            replica.url, path, body, headers, idle_s=self.timeouts.idle_s if stream else None
        )

    async def close(self) -> None:
        self._pool.close()
