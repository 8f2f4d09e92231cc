"""BENCHMARK INSTRUMENT ONLY: an "engine" that answers instantly.

It speaks just enough of vLLM's OpenAI server (``/v1/completions`` streamed or
not, ``/metrics``, ``/health``) for a gateway to route to it, and answers
without generating anything, so that what a load test measures is the
gateway's own cost. Never a stand-in for a real engine anywhere else.

    python -m benchmarks.overhead.instant_upstream --port 9001 --tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import time

from aiohttp import web

_METRICS = (
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{model_name="instant"} 0.0\n'
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{model_name="instant"} 0.0\n'
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{model_name="instant"} 0.0\n'
)


def _compact(value: object) -> bytes:
    """JSON as vLLM writes it (pydantic: no spaces), so the gateway's relay
    finds the same markers (``"usage":{``) it finds in a real engine's stream."""
    return json.dumps(value, separators=(",", ":")).encode()


def build(tokens: int, model: str) -> web.Application:
    created = int(time.time())

    def chunk(text: str, finish: str | None) -> bytes:
        body = {
            "id": "cmpl-instant",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + _compact(body) + b"\n\n"

    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
    stream_body = b"".join(chunk(" x", None) for _ in range(tokens - 1)) + chunk(" x", "length")
    stream_body += (
        b"data: "
        + _compact(
            {
                "id": "cmpl-instant",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        + b"\n\ndata: [DONE]\n\n"
    )
    plain_body = _compact(
        {
            "id": "cmpl-instant",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "text": " x" * tokens, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": usage,
        }
    )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            return web.Response(body=stream_body, content_type="text/event-stream")
        return web.Response(body=plain_body, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=_METRICS, content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--model", default="instant")
    parser.add_argument("--cpus", default=None, help="comma list of CPUs to pin to")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    web.run_app(
        build(args.tokens, args.model), host=args.host, port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
