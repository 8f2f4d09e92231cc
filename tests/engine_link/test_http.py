"""The gateway's HTTP client to the engines (``serving.engine_link.http``), against
real TCP servers that answer byte by byte as each test scripts them: keep-alive,
streaming without re-buffering, every way a connection can fail, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from serving.engine_link.http import EngineConnectionError, EngineConnectionPool, EngineHTTPError

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Script = Callable[["ScriptedServer", Reader, Writer, int], Awaitable[None]]
JSON = b"Content-Type: application/json\r\n"


def on_both_loops(
    test: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[str], None]:
    """Runs the test on asyncio's loop and on uvloop (the gateway's)."""

    def run(loop: str) -> None:
        factory = uvloop.new_event_loop if loop == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(test(), 30))

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return pytest.mark.parametrize("loop", ["asyncio", "uvloop"])(run)


class ScriptedServer:
    """A TCP server; ``script(server, reader, writer, connection_number)`` per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self, reader, writer, self.connections)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(script)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()


def pool(**limits: float) -> EngineConnectionPool:
    return EngineConnectionPool(
        connect_s=limits.get("connect_s", 2.0), total_s=limits.get("total_s", 10.0)
    )


def plain(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
)


@on_both_loops
async def test_plain_answer_and_the_connection_is_kept_for_the_next_request() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        while not reader.at_eof():
            try:
                request = await server.read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(plain(b'{"echo":' + request.rsplit(b"\r\n\r\n", 1)[1] + b"}"))

    async with serving(answer) as server:
        client = pool()
        for i in range(3):
            response = await client.request(
                "POST", server.url, "/v1/completions", b"%d" % i, JSON, idle_s=None
            )
            assert response.status == 200
            assert await response.read() == b'{"echo":%d}' % i
            response.release()
        assert server.connections == 1  # kept alive
        first = server.requests[0]
        assert first.startswith(b"POST /v1/completions HTTP/1.1\r\n")
        assert b"\r\nContent-Length: 1\r\n" in first and b"Content-Type: application/json" in first
        assert b"\r\nHost: 127.0.0.1:" in first
        client.close()


@on_both_loops
async def test_a_stream_is_relayed_as_it_comes_not_buffered() -> None:
    release = asyncio.Event()

    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await release.wait()  # the second event only after the first was read
        writer.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        response = await client.request(
            "POST", server.url, "/v1/completions", b"{}", JSON, idle_s=5
        )
        assert await response.readany() == b"data: 1\n\n"
        release.set()
        assert [piece async for piece in response.iter_any()] == [b"data: 2\n\n"]
        assert response.at_eof()
        response.release()
        client.close()


@on_both_loops
async def test_closing_a_response_mid_stream_closes_the_connection() -> None:
    """What makes vLLM abort a request whose client left."""
    closed = asyncio.Event()

    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        assert await reader.read() == b""  # EOF: the gateway hung up
        closed.set()

    async with serving(answer) as server:
        client = pool()
        response = await client.request(
            "POST", server.url, "/v1/completions", b"{}", JSON, idle_s=5
        )
        assert await response.readany() == b"data: 1\n\n"
        response.close()
        await asyncio.wait_for(closed.wait(), 5)
        with pytest.raises(EngineConnectionError, match="closed"):
            await response.readany()
        client.close()


@on_both_loops
async def test_an_engine_that_dies_mid_answer_is_an_error_not_a_short_answer() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        writer.transport.abort()

    async with serving(answer) as server:
        client = pool()
        response = await client.request(
            "POST", server.url, "/v1/completions", b"{}", JSON, idle_s=5
        )
        assert await response.readany() == b"data: 1\n\n"
        with pytest.raises(EngineConnectionError, match="closed the connection"):
            await response.readany()
        response.release()
        client.close()


@on_both_loops
async def test_a_kept_alive_connection_closed_by_the_engine_is_retried_on_a_new_one() -> None:
    """The engine closes idle connections; one it closed just as we reused it
    never saw the request, so it is sent again (not counted as a failure)."""

    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, n: int) -> None:
        await server.read_request(reader)
        writer.write(plain(b"first" if n == 1 else b"again"))
        await writer.drain()
        if n == 1:
            await server.read_request(reader)  # the reuse: hang up unanswered
            return
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None)
        assert await response.read() == b"first"
        response.release()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None)
        assert await response.read() == b"again"
        response.release()
        assert server.connections == 2
        client.close()


@on_both_loops
async def test_a_new_connection_closed_before_answering_fails_at_once() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)

    async with serving(answer) as server:
        client = pool()
        with pytest.raises(EngineConnectionError, match="before answering"):
            await asyncio.wait_for(
                client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None), 5
            )
        assert server.connections == 1  # a fresh connection is not retried
        client.close()


@on_both_loops
async def test_nothing_listening_is_a_connection_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = pool()
    with pytest.raises(EngineConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        await client.request("POST", f"http://127.0.0.1:{port}", "/p", b"{}", JSON, idle_s=None)


@on_both_loops
async def test_a_stalled_stream_times_out_on_the_idle_limit() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=0.2)
        assert await response.readany() == b"data: 1\n\n"
        with pytest.raises(TimeoutError):
            await response.readany()
        response.close()
        client.close()


@on_both_loops
async def test_the_total_limit_bounds_a_plain_answer() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        await reader.read()  # never answers

    async with serving(answer) as server:
        client = pool(total_s=0.3)
        with pytest.raises(TimeoutError):
            await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None)
        client.close()


@on_both_loops
async def test_a_body_that_ends_with_the_connection() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with serving(answer) as server:
        client = pool()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None)
        assert await response.read() == b"all of it"
        response.release()
        client.close()


@on_both_loops
async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    """Past 1 MiB unread the client stops reading from the socket, and starts
    again as the consumer catches up: nothing is lost or reordered."""
    pieces = [bytes([65 + i % 26]) * 65536 for i in range(64)]  # 4 MiB

    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD)
        for piece in pieces:
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=5)
        received = []
        while data := await response.readany():
            received.append(data)
            await asyncio.sleep(0.01)
        assert b"".join(received) == b"".join(pieces)
        response.release()
        client.close()


@on_both_loops
async def test_an_error_status_comes_with_its_body() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        body = b'{"error":{"message":"bad","param":"n"}}'
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        response = await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None)
        assert response.status == 400
        assert b'"param":"n"' in await response.read()
        response.release()
        client.close()


@on_both_loops
async def test_garbage_instead_of_http_is_an_error() -> None:
    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(answer) as server:
        client = pool()
        with pytest.raises(EngineHTTPError, match="invalid HTTP"):
            await asyncio.wait_for(
                client.request("POST", server.url, "/p", b"{}", JSON, idle_s=None), 5
            )
        client.close()


@on_both_loops
async def test_only_http_urls() -> None:
    with pytest.raises(EngineConnectionError, match="http://host:port"):
        await pool().request("POST", "https://engine:8000", "/p", b"{}", JSON, idle_s=None)


@on_both_loops
async def test_a_stream_whose_engine_never_answers_times_out_on_the_idle_limit() -> None:
    """A frozen engine (SIGSTOP) accepts connections but never answers."""

    async def answer(server: ScriptedServer, reader: Reader, writer: Writer, _: int) -> None:
        await server.read_request(reader)
        await reader.read()

    async with serving(answer) as server:
        client = pool(total_s=60)
        with pytest.raises(TimeoutError):
            await client.request("POST", server.url, "/p", b"{}", JSON, idle_s=0.2)
        client.close()


def test_where_an_engine_url_points() -> None:
    client = pool()
    v6 = client._target("http://[::1]:8000")
    assert (v6.origin, v6.host, v6.prefix) == (("::1", 8000), b"[::1]:8000", b"")
    named = client._target("http://engine-0/base/")
    assert (named.origin, named.host, named.prefix) == (("engine-0", 80), b"engine-0", b"/base")
