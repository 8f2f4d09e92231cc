"""TEST FIXTURE: a scripted, in-process engine behind the gateway's transport
seam (``serving.upstream.client.EngineTransport``).

It is for testing the gateway's own logic (retries, failover, mid-stream
errors, timeouts, supersession, disconnects, the load signal) in
milliseconds. It is never shipped, and never a stand-in for vLLM where a
test claims end-to-end behaviour: those tests (``tests/e2e``) run real vLLM
engines on real Ray.

Each request takes the next :class:`Script` of its engine (or the engine's
default): answer N tokens at a given pace (streamed or whole), fail before
answering, answer an HTTP error, die mid-stream, or stall. The engine
records every request it got and whether the gateway hung up on it (which
makes vLLM abort a request).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.cluster.adapters import ResidentAdapters
from serving.config import LoraConfig
from serving.engine_link.http import EngineConnectionError
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState


@dataclass
class Script:
    """What the engine does with one request."""

    tokens: int = 3  # tokens to generate
    pace_s: float = 0.0  # between tokens
    text: Callable[[int], str] = lambda i: f" t{i}"
    finish_reason: str = "length"
    status: int = 200  # non-200: answer this status with `error_body`
    error_body: bytes = b'{"error": {"message": "scripted failure", "type": "server_error"}}'
    fail_before_answer: bool = False  # the connection fails before any byte
    die_after: int | None = None  # the stream breaks after this many tokens
    stall_after: int | None = None  # the stream stops sending after this many tokens
    headers_delay_s: float = 0.0  # before the status line
    spaced: bool = False  # JSON with spaces and shuffled keys (other servers write that)
    error_event_after: int | None = None  # an error event after this many tokens
    end_after_done_s: float = 0.0  # the response's end comes this long after [DONE]


@dataclass
class Received:
    """One request the engine got."""

    path: str
    payload: dict[str, Any]
    hung_up: bool = False  # the gateway closed the connection mid-answer
    finished: bool = False  # the engine sent its whole answer
    sent: bytes = b""  # the body the engine wrote
    progress: asyncio.Event | None = None  # set as it writes


def _dumps(value: Any, spaced: bool, rng: random.Random) -> bytes:
    if not spaced:
        return json.dumps(value, separators=(",", ":")).encode()

    def shuffled(item: Any) -> Any:
        if isinstance(item, dict):
            keys = list(item)
            rng.shuffle(keys)
            return {key: shuffled(item[key]) for key in keys}
        if isinstance(item, list):
            return [shuffled(x) for x in item]
        return item

    return json.dumps(shuffled(value), indent=1).replace("\n", " ").encode()


class ScriptedEngine:
    """One replica's engine."""

    def __init__(self, replica_id: str, *, model: str = "scripted", default: Script | None = None):
        self.replica_id = replica_id
        self.model = model
        self.url = f"http://{replica_id}.scripted:8000"
        self.default = default or Script()
        self.scripts: deque[Script] = deque()
        self.received: list[Received] = []
        self.running = 0  # answers in progress (its load, as its metrics would say)
        self.extra_waiting = 0.0  # more load, as if from other gateways
        self.kv_cache_usage = 0.0
        self.info_overrides: dict[str, Any] = {}  # e.g. its group's lanes, speculative method
        self._rng = random.Random(0)
        self._arrival: asyncio.Event | None = None
        # vLLM's runtime adapter API: loads and unloads it was asked for, and
        # adapter folders whose load fails (a corrupt adapter).
        self.adapter_calls: list[tuple[str, str]] = []
        self.broken_adapter_paths: set[str] = set()
        self.adapters: ResidentAdapters | None = None
        self.tokenize = True  # whether it answers /tokenize (vLLM does)

    async def adapter_api(
        self, method: str, path: str, body: Any = None, *, timeout_s: float = 5.0
    ) -> tuple[int, bytes]:
        """What vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter answer."""
        action = "load" if path == "/v1/load_lora_adapter" else "unload"
        self.adapter_calls.append((action, body["lora_name"]))
        if action == "load" and body["lora_path"] in self.broken_adapter_paths:
            message = "Loading lora failed: adapter_model.safetensors is not a safetensors file"
            return 500, json.dumps({"error": {"message": message}}).encode()
        return 200, b"Success"

    async def sent(self, events: int, request: int = 0) -> None:
        """Until its answer to request ``request`` has sent ``events`` SSE events."""
        await self.requests(request + 1)
        answer = self.received[request]
        while answer.sent.count(b"\n\n") < events:
            answer.progress = answer.progress or asyncio.Event()
            await answer.progress.wait()
            answer.progress.clear()

    @staticmethod
    def chat_prompt_tokens(payload: dict[str, Any]) -> int:
        """What its /tokenize counts for chat messages: 3 for its chat
        template, one per character of their text."""
        return 3 + sum(len(str(m.get("content") or "")) for m in payload.get("messages") or [])

    def got(self, received: Received) -> None:
        self.received.append(received)
        if self._arrival is not None:
            self._arrival.set()

    async def requests(self, count: int = 1) -> None:
        """Until this engine has received ``count`` requests."""
        while len(self.received) < count:
            self._arrival = self._arrival or asyncio.Event()
            await self._arrival.wait()
            self._arrival.clear()

    def then(self, *scripts: Script) -> ScriptedEngine:
        """The next requests take these scripts, in order."""
        self.scripts.extend(scripts)
        return self

    def info(self, state: ReplicaState = ReplicaState.READY, **overrides: Any) -> ReplicaInfo:
        values: dict[str, Any] = {
            "replica_id": self.replica_id,
            "group": "scripted",
            "model": self.model,
            "state": state,
            "url": self.url,
            "token": f"token-{self.replica_id}",
            "max_model_len": 4096,
            "fim_template": "seed-coder",
            "has_chat_template": True,
            "running": float(self.running),
            "waiting": self.extra_waiting,
            "kv_cache_usage": self.kv_cache_usage,
        }
        if self.adapters is not None:
            values.update(
                lora_capacity=self.adapters.lora.capacity,
                lora_min_resident_s=self.adapters.lora.min_resident_s,
                lora_load_bound=self.adapters.lora.load_bound,
                adapters=self.adapters.report(),
            )
        values.update(self.info_overrides)
        values.update(overrides)
        return ReplicaInfo(**values)

    # ---------------------------------------------------------------- answering

    def _chunk(
        self,
        created: int,
        index: int,
        text: str,
        finish: str | None,
        first: bool,
        spaced: bool,
        *,
        choice_index: int = 0,
        chat: bool = False,
    ) -> bytes:
        if chat:  # /v1/chat/completions: the text is the delta's content
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            chat_choice = {"index": choice_index, "delta": delta, "finish_reason": finish}
            return self._event(
                {
                    "id": f"chatcmpl-{self.replica_id}",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.model,
                    "choices": [chat_choice],
                },
                spaced,
            )
        choice: dict[str, Any] = {
            "index": choice_index,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "token_ids": [index],
        }
        if first:
            choice["prompt_token_ids"] = [1, 2, 3, 4]
        return self._event(
            {
                "id": f"cmpl-{self.replica_id}",
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": [choice],
            },
            spaced,
        )

    def _event(self, value: Any, spaced: bool) -> bytes:
        return b"data: " + _dumps(value, spaced, self._rng) + b"\n\n"

    def _usage(self, tokens: int) -> dict[str, int]:
        return {"prompt_tokens": 4, "completion_tokens": tokens, "total_tokens": 4 + tokens}

    async def run(self, script: Script, received: Received, answer: ScriptedAnswer) -> None:
        payload = received.payload
        if received.path == "/tokenize":
            answer.start(200 if self.tokenize else 404)
            answer.feed(json.dumps({"count": self.chat_prompt_tokens(payload)}).encode())
            answer.end()
            return
        created = 1_700_000_000
        if script.headers_delay_s:
            await asyncio.sleep(script.headers_delay_s)
        if script.fail_before_answer:
            answer.fail(EngineConnectionError("scripted: connection reset before answering"))
            return
        if script.status != 200:
            answer.start(script.status)
            answer.feed(script.error_body)
            answer.end()
            return
        stream = bool(payload.get("stream"))
        texts = [script.text(i) for i in range(script.tokens)]
        if not stream:
            # As vLLM answers: the status line and the body together, at the end.
            await asyncio.sleep(script.pace_s * script.tokens)
            answer.start(200)
            body = {
                "id": f"cmpl-{self.replica_id}",
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(texts),
                        "logprobs": None,
                        "finish_reason": script.finish_reason,
                    }
                ],
                "usage": self._usage(script.tokens),
            }
            answer.feed(_dumps(body, script.spaced, self._rng))
            answer.end()
            received.finished = True
            return
        answer.start(200)
        for index, text in enumerate(texts):
            if script.die_after is not None and index == script.die_after:
                answer.fail(EngineConnectionError("scripted: the engine died mid-stream"))
                return
            if script.stall_after is not None and index == script.stall_after:
                await asyncio.Event().wait()  # never again
            if script.error_event_after is not None and index == script.error_event_after:
                error = {"error": {"message": "scripted mid-stream error"}}
                answer.feed(self._event(error, script.spaced))
                answer.feed(b"data: [DONE]\n\n")
                answer.end()
                return
            if index and script.pace_s:
                await asyncio.sleep(script.pace_s)
            last = index == len(texts) - 1
            finish = script.finish_reason if last else None
            for choice_index in range(int(payload.get("n") or 1)):  # each of n choices
                chunk = self._chunk(
                    created,
                    index,
                    text,
                    finish,
                    index == 0,
                    script.spaced,
                    choice_index=choice_index,
                    chat=received.path.endswith("/chat/completions"),
                )
                answer.feed(chunk)
        options = payload.get("stream_options") or {}
        if options.get("include_usage"):
            answer.feed(
                self._event(
                    {
                        "id": f"cmpl-{self.replica_id}",
                        "object": "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [],
                        "usage": self._usage(script.tokens),
                    },
                    script.spaced,
                )
            )
        answer.feed(b"data: [DONE]\n\n")
        if script.end_after_done_s:
            await asyncio.sleep(script.end_after_done_s)
        answer.end()
        received.finished = True


class ScriptedAnswer:
    """The engine's answer as the gateway's transport hands it over (the
    same surface as the HTTP client's answers, timeouts included)."""

    def __init__(self, idle_s: float | None, total_s: float) -> None:
        self.status = 0
        self._queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self._started = asyncio.Event()
        self._error: Exception | None = None
        self._ended = False
        self.closed = False
        self.idle_s = idle_s
        self.deadline = asyncio.get_running_loop().time() + total_s
        self.task: asyncio.Task[None] | None = None
        self.received: Received | None = None

    # the engine side
    def start(self, status: int) -> None:
        self.status = status
        self._started.set()

    def feed(self, data: bytes) -> None:
        if self.received is not None:
            self.received.sent += data
            if self.received.progress is not None:
                self.received.progress.set()
        self._queue.put_nowait(data)

    def end(self) -> None:
        self._queue.put_nowait(None)

    def fail(self, exc: Exception) -> None:
        self._error = exc
        self._started.set()
        self._queue.put_nowait(exc)

    # the gateway side
    def _limit(self, idle: bool) -> float:
        loop = asyncio.get_running_loop()
        left = self.deadline - loop.time()
        return min(left, self.idle_s) if idle and self.idle_s is not None else left

    async def wait_started(self) -> None:
        async with asyncio.timeout(self._limit(idle=True)):
            await self._started.wait()
        if not self.status and self._error is not None:
            raise self._error

    async def _next(self, idle: bool) -> bytes | None:
        if self._ended:
            return None
        if self.closed:
            raise EngineConnectionError("the response was closed")
        async with asyncio.timeout(self._limit(idle)):
            item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        if item is None:
            self._ended = True
        return item

    async def readany(self) -> bytes:
        return (await self._next(idle=True)) or b""

    async def read(self) -> bytes:
        parts = []
        while (item := await self._next(idle=False)) is not None:
            parts.append(item)
        return b"".join(parts)

    def release(self) -> None:
        if not self._ended and self.received is not None:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.received is not None and not self.received.finished:
            self.received.hung_up = True
        if self.task is not None:
            self.task.cancel()
        # As the HTTP client does: whoever waits for the next bytes learns now.
        self._queue.put_nowait(EngineConnectionError("the response was closed"))


class ScriptedTransport:
    """The transport seam: requests to ``engine.url`` reach that engine."""

    def __init__(self, *engines: ScriptedEngine) -> None:
        self.engines = {engine.url: engine for engine in engines}
        self.closed = False

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
    ) -> ScriptedAnswer:
        engine = self.engines.get(url)
        if engine is None:
            raise EngineConnectionError(f"cannot connect to {url}: no such scripted engine")
        token = f"token-{engine.replica_id}".encode()
        if b"Authorization: Bearer " + token not in headers:
            raise AssertionError("the gateway sent no (or the wrong) engine secret")
        received = Received(path, json.loads(body) if body else {})
        engine.got(received)
        script = engine.scripts.popleft() if engine.scripts else engine.default
        answer = ScriptedAnswer(idle_s, 600.0 if total_s is None else total_s)
        answer.received = received

        async def run() -> None:
            engine.running += 1
            try:
                await engine.run(script, received, answer)
            finally:
                engine.running -= 1

        answer.task = asyncio.create_task(run())
        try:
            await answer.wait_started()
        except BaseException:
            answer.close()
            raise
        return answer

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedCluster:
    """A replica source over scripted engines (what the controller would list);
    each listing carries the engines' load as their metrics would say it."""

    engines: list[ScriptedEngine]
    states: dict[str, ReplicaState] = field(default_factory=dict)
    metrics_pages: dict[str, str] = field(default_factory=dict)

    async def list_replicas(self) -> list[ReplicaInfo]:
        return [
            engine.info(self.states.get(engine.replica_id, ReplicaState.READY))
            for engine in self.engines
        ]

    async def tokenizer_json(self, model: str) -> str | None:
        return None

    async def engine_metrics(self) -> dict[str, str]:
        return dict(self.metrics_pages)

    async def report_load(self, gateway_id: str, queued: dict[str, int]) -> None:
        return None

    async def groups(self) -> list[dict[str, Any]]:
        return [{"group": "scripted", "replicas": len(self.engines), "model": "scripted"}]

    async def scale(self, group: str, replicas: int) -> dict[str, Any]:
        raise ValueError(f"no replica group {group!r}")

    def transport(self) -> ScriptedTransport:
        return ScriptedTransport(*self.engines)

    def enable_lora(self, lora: LoraConfig, roots: list[str], clock: Any = None) -> None:
        """Give every engine team adapters, managed by the replica's own logic
        (serving.cluster.adapters) over the engines' scripted adapter API."""
        for engine in self.engines:
            extra = {} if clock is None else {"clock": clock}
            engine.adapters = ResidentAdapters(lora, roots, engine.adapter_api, **extra)

    async def ensure_adapter(self, replica_id: str, name: str, path: str) -> dict[str, Any]:
        engine = next(e for e in self.engines if e.replica_id == replica_id)
        assert engine.adapters is not None, "enable_lora() first"
        return await engine.adapters.ensure(name, path)

    async def unload_adapter(self, name: str) -> list[str]:
        return [e.replica_id for e in self.engines if e.adapters and await e.adapters.unload(name)]


async def settle() -> None:
    """Let tasks that are ready run (a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)


__all__ = [
    "Received",
    "Script",
    "ScriptedCluster",
    "ScriptedEngine",
    "ScriptedTransport",
    "settle",
]
