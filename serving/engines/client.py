"""HTTP to the engines: one pooled, kept-alive aiohttp session per gateway."""

from __future__ import annotations

import aiohttp

from serving.config import TimeoutsConfig
from serving.engines.types import ReplicaInfo


class EngineClient:
    def __init__(self, timeouts: TimeoutsConfig) -> None:
        self.timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None
        self._stream_timeout = aiohttp.ClientTimeout(
            total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.idle_s
        )
        self._plain_timeout = aiohttp.ClientTimeout(
            total=timeouts.total_s, sock_connect=timeouts.connect_s
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(
                    total=self.timeouts.total_s, sock_connect=self.timeouts.connect_s
                ),
                auto_decompress=False,
                # Per-request work the engines never need (measured with
                # benchmarks/overhead capacity): cookies, default headers.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def post(
        self, replica: ReplicaInfo, path: str, body: bytes, *, stream: bool
    ) -> aiohttp.ClientResponse:
        """Send ``body`` (JSON) to the replica; the caller reads and releases the response.

        A stream may not pause longer than ``idle_s`` between reads; a plain
        answer comes whole at the end, so only the total limit applies to it.
        """
        return await self.session().post(
            replica.url + path,
            data=body,
            headers={
                "Authorization": f"Bearer {replica.token}",
                "Content-Type": "application/json",
            },
            timeout=self._stream_timeout if stream else self._plain_timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
