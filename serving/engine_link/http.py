"""A small HTTP/1.1 client for the engines: send a request, read the answer
as it arrives, keep connections alive for the next request. The gateway
(``serving.upstream``) and the replica actors (``serving.cluster``) both use it.

Why not aiohttp: the gateway's own cost per request is its capacity
(``benchmarks/overhead capacity``), and aiohttp's general-purpose client was a
quarter of it (cookies, redirects, tracing hooks, multidict headers, its
connector's bookkeeping). The engines speak one dialect (uvicorn: ``Content-Length`` or
chunked, keep-alive), so this client speaks just that, parsed by httptools
(uvicorn's own parser).

Errors: ``EngineHTTPError`` and its subclasses (``EngineConnectionError`` for a
connection refused, reset or cut short), and ``TimeoutError`` for every limit.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_BUFFER = 1 << 20  # pause reading when this much is unread (slow consumer)
_IDLE_KEEP_S = 4.0  # uvicorn (vLLM's server) closes idle connections after 5 s


class EngineHTTPError(Exception):
    """An engine's HTTP answer could not be had (the base of this module's errors)."""


class EngineConnectionError(EngineHTTPError):
    """The connection to an engine failed: refused, reset, or closed mid-answer."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection, carrying one exchange at a time."""

    def __init__(self, origin: tuple[str, int], pool: EngineConnectionPool) -> None:
        self.origin = origin
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.response: EngineResponse | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._until_eof = False  # neither Content-Length nor chunked: the body ends at close

    # ---------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(EngineHTTPError(f"invalid HTTP from the engine: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is not None and not response.complete:
            if response.status and self._until_eof:
                response._finish()
            else:
                self._fail(
                    EngineConnectionError(
                        "the engine closed the connection"
                        + ("" if response.status else " before answering")
                        + (f": {exc}" if exc else "")
                    )
                )
        self.pool.discard(self)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._until_eof = True

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._until_eof = False

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._headers(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None:
            response.keep_alive = self._parser.should_keep_alive()
            response._finish()

    # ---------------------------------------------------------------- use

    def _fail(self, exc: Exception) -> None:
        if self.response is not None:
            self.response._fail(exc)

    def send(self, response: EngineResponse, request: bytes) -> None:
        self.response = response
        if self.lost or self.transport is None:
            response._fail(EngineConnectionError("the engine closed the connection"))
            return
        self.transport.write(request)

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True


class EngineResponse:
    """An engine's answer: its status at once, its body as it arrives.

    Read it whole (``read``) or piece by piece (``readany``, ``iter_any``); then
    ``release`` (the connection is kept if the answer was read to its end) or
    ``close`` (the engine sees the connection close, and vLLM aborts the request).
    """

    def __init__(self, connection: _Connection, deadline: float, idle_s: float | None) -> None:
        self.status = 0
        self.keep_alive = False
        self.complete = False
        self.closed = False
        self._connection = connection
        self._deadline = deadline
        self._idle_s = idle_s
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # ---------------------------------------------------------------- fed by the connection

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers(self, status: int) -> None:
        self.status = status
        self._wake()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _MAX_BUFFER and not self._paused:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    # ---------------------------------------------------------------- waiting

    async def _wait(self, *, idle: bool) -> None:
        loop = asyncio.get_running_loop()
        when = self._deadline
        if idle and self._idle_s is not None:
            when = min(when, loop.time() + self._idle_s)
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout_at(when):
                await self._waiter
        finally:
            self._waiter = None

    async def _start(self) -> None:
        """Wait for the status line and headers (a stream's within its idle limit:
        a frozen engine fails fast, before anything reached the client)."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait(idle=True)

    # ---------------------------------------------------------------- reading

    def _drain(self) -> bytes:
        """All bytes received and not yet read (reading the socket again if paused)."""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._connection.resume()
        return data

    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    async def readany(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            if self.closed:
                raise EngineConnectionError("the response was closed")
            await self._wait(idle=True)
        return self._drain()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.readany():
            yield data

    async def read(self) -> bytes:
        """The whole body (only the total limit applies)."""
        parts: list[bytes] = []
        while not self.complete or self._chunks:
            if self._chunks:
                parts.append(self._drain())
                continue
            if self._error is not None:
                raise self._error
            await self._wait(idle=False)
        return b"".join(parts)

    # ---------------------------------------------------------------- ending

    def release(self) -> None:
        """Done with it: the connection is kept for the next request if the
        answer was read to its end, else closed."""
        if self.closed:
            return
        self.closed = True
        connection = self._connection
        connection.response = None
        if self.at_eof() and self.keep_alive and self._error is None:
            connection.pool.put_back(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Drop the connection (the engine sees it close mid-answer)."""
        if self.closed:
            return
        self.closed = True
        self._connection.response = None
        self._connection.close()
        self._fail(EngineConnectionError("the response was closed"))


@dataclass(frozen=True)
class _Target:
    origin: tuple[str, int]  # where to connect
    host: bytes  # the Host header
    prefix: bytes  # the URL's own path, before the request's


class EngineConnectionPool:
    """Kept-alive connections per engine address, newest first."""

    def __init__(self, *, connect_s: float, total_s: float) -> None:
        self.connect_s = connect_s
        self.total_s = total_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise EngineConnectionError(f"engine URLs are http://host:port, not {url!r}")
            port = parts.port or 80
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6
            if port != 80:
                host = f"{host}:{port}"
            target = _Target((parts.hostname, port), host.encode(), parts.path.rstrip("/").encode())
            self._targets[url] = target
        return target

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
    ) -> EngineResponse:
        """Send ``method url+path`` (with ``body``, if any); the answer once its
        headers arrived.

        ``headers`` are extra header lines, each ending in CRLF. ``idle_s``
        bounds every wait for the next bytes of a streamed answer (and for its
        headers); ``total_s`` (default: the pool's) the whole exchange. A
        kept-alive connection that turns out closed before any answer is
        retried once on a new one (the engine closed it while idle, and never
        saw the request).
        """
        if self._closed:
            raise EngineConnectionError("the engine client is closed")
        target = self._target(url)
        parts = [
            method.encode(),
            b" ",
            target.prefix,
            path.encode(),
            b" HTTP/1.1\r\nHost: ",
            target.host,
            b"\r\n",
        ]
        if body or method != "GET":
            parts += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        parts += [headers, b"\r\n", body]
        request = b"".join(parts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.total_s if total_s is None else total_s)
        for _ in range(2):
            connection, reused = await self._acquire(target.origin, deadline)
            response = EngineResponse(connection, deadline, idle_s)
            connection.send(response, request)
            try:
                await response._start()
            except EngineConnectionError:
                response.close()
                if reused and not response.status:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise EngineConnectionError("the engine closed the connection before answering")

    async def _acquire(self, origin: tuple[str, int], deadline: float) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.lost and now - connection.idle_since < _IDLE_KEEP_S:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_s)):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin, self), *origin
                )
        except OSError as exc:
            raise EngineConnectionError(
                f"cannot connect to {origin[0]}:{origin[1]}: {exc.strerror or exc}"
            ) from exc
        return protocol, False

    def put_back(self, connection: _Connection) -> None:
        if self._closed or connection.lost:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)

    def discard(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
