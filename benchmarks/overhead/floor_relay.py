"""BENCHMARK INSTRUMENT ONLY: the floor under Seed Serve's gateway.

The same HTTP server as the gateway (uvicorn with uvloop and httptools, the
settings of ``serving.runtime``) and the same engine client
(``serving.engine_link.http``), relaying ``POST /v1/completions`` to one
upstream and nothing else: no keys, quotas, lanes, parsing, routing, metrics
or audit. Beside the gateway in ``benchmarks.overhead peers`` (as the peer
``floor``) it splits the gateway's CPU per request into what this Python
server stack costs anyway and what the gateway's own behaviour adds. Never a
way to serve anything.

    python -m benchmarks.overhead.floor_relay --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
import uvloop

from serving.engine_link.http import EngineConnectionPool

_JSON = b"Content-Type: application/json\r\n"
_STREAM_MARKS = (b'"stream":true', b'"stream": true')


class FloorRelay:
    """The ASGI app: the request body to the upstream, its answer back as it comes."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool: EngineConnectionPool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] != "/v1/completions":
            await _answer(send, 200 if scope["path"] == "/health" else 404, b"", b"text/plain")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.pool is not None
        upstream = await self.pool.request("POST", self.upstream, "/v1/completions", body, _JSON)
        try:
            if not any(mark in body for mark in _STREAM_MARKS):
                await _answer(send, upstream.status, await upstream.read(), b"application/json")
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for chunk in upstream.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            upstream.release()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = EngineConnectionPool(connect_s=5.0, total_s=60.0)
                await send({"type": "lifespan.startup.complete"})
            else:
                if self.pool is not None:
                    self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        FloorRelay(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
