"""An engine's KV-cache events, behind the same wall as the engine.

vLLM publishes them (``--kv-events-config``) on a ZeroMQ PUB socket, with a
ROUTER socket that replays recent batches. ZeroMQ has no notion of the
engine's secret, so both sockets are bound to Unix sockets in a folder only
this user may enter, never to a network port; the engine guard (loaded into
the engine's HTTP server) relays them to the gateway as server-sent events on
``GET /seed-serve/kv-events``, which, like every engine path, needs the
replica's secret. Token ids are prompt contents: they never leave that wall.

Each event the gateway reads is ``id: <sequence>`` and one JSON line:
``{"instance": ..., "events": [...]}`` where an event is ``{"stored":
{"hashes", "parent", "tokens", "block_size", "lora"}}``, ``{"removed":
{"hashes"}}`` or ``{"cleared": true}`` (block hashes as hex or decimal
strings). ``instance`` names the engine process: a gateway that sees another
one knows the engine restarted with an empty cache. ``?since=N`` first
replays what the engine still holds from sequence N on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS_ENV = "SEED_SERVE_KV_EVENTS"  # JSON {"pub": endpoint, "replay": endpoint}
KEEPALIVE_S = 5.0  # a comment line this often: the gateway tells a dead link from a quiet one
_END_SEQ = (-1).to_bytes(8, "big", signed=True)


@dataclass(frozen=True)
class KvEventSockets:
    """Where one engine publishes its KV-cache events (Unix sockets)."""

    folder: Path
    pub: str
    replay: str

    @classmethod
    def create(cls) -> KvEventSockets:
        # Short (a Unix socket path has at most 107 bytes) and private (0700).
        folder = Path(tempfile.mkdtemp(prefix="ssk-"))
        return cls(folder, f"ipc://{folder}/pub", f"ipc://{folder}/replay")

    def engine_args(self, buffer_steps: int) -> list[str]:
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.pub,
            "replay_endpoint": self.replay,
            "buffer_steps": buffer_steps,
        }
        return ["--kv-events-config", json.dumps(config, separators=(",", ":"))]

    def environment(self) -> dict[str, str]:
        return {EVENTS_ENV: json.dumps({"pub": self.pub, "replay": self.replay})}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _hash_text(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def event_json(event: dict[str, Any]) -> dict[str, Any] | None:
    """One of vLLM's KV-cache events (msgpack-decoded: a map tagged with its
    ``type``) as the gateway reads it; None for one the gateway does not use
    (a block on an offloading tier: vLLM names its first tier GPU on any device)."""
    kind = event.get("type")
    if kind in ("BlockStored", "BlockRemoved") and event.get("medium") not in (None, "GPU"):
        return None
    if kind == "BlockStored":
        parent = event.get("parent_block_hash")
        return {
            "stored": {
                "hashes": [_hash_text(h) for h in event["block_hashes"]],
                "parent": None if parent is None else _hash_text(parent),
                "tokens": list(event["token_ids"]),
                "block_size": int(event["block_size"]),
                "lora": event.get("lora_name"),
            }
        }
    if kind == "BlockRemoved":
        return {"removed": {"hashes": [_hash_text(h) for h in event["block_hashes"]]}}
    if kind == "AllBlocksCleared":
        return {"cleared": True}
    return None


class KvEventRelay:
    """The engine guard's side: subscribes to the engine's sockets and yields
    server-sent events (live, after a replay from ``since`` when asked)."""

    def __init__(self, pub: str, replay: str) -> None:
        self.pub = pub
        self.replay = replay
        self.instance = uuid.uuid4().hex  # one per engine process
        self._decode: Callable[[bytes], Any] | None = None

    @classmethod
    def from_environment(cls) -> KvEventRelay | None:
        raw = os.environ.get(EVENTS_ENV)
        if not raw:
            return None
        endpoints = json.loads(raw)
        return cls(endpoints["pub"], endpoints["replay"])

    def _batch_events(self, payload: bytes) -> list[dict[str, Any]]:
        if self._decode is None:
            import msgspec  # vLLM's own dependency, as is zmq: there in every engine

            self._decode = msgspec.msgpack.Decoder().decode
        # vLLM's KVEventBatch is array-like: [ts, events, data_parallel_rank].
        batch = self._decode(payload)
        return [e for e in map(event_json, batch[1]) if e is not None]

    def _sse(self, seq: int, payload: bytes) -> bytes:
        events = self._batch_events(payload)
        data = json.dumps({"instance": self.instance, "events": events}, separators=(",", ":"))
        return f"id: {seq}\ndata: {data}\n\n".encode()

    async def stream(self, since: int | None) -> AsyncGenerator[bytes, None]:
        import zmq
        import zmq.asyncio

        context = zmq.asyncio.Context.instance()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.pub)
        last = -1
        try:
            # The hello: which engine process this is, before any event.
            yield self._hello()
            if since is not None:
                # Subscribed first, so nothing published during the replay is lost
                # (what both give is sent once, by sequence number).
                async for seq, payload in self._replayed(context, since):
                    if seq > last:
                        last = seq
                        yield self._sse(seq, payload)
            while True:
                try:
                    frames = await asyncio.wait_for(sub.recv_multipart(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                _, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big")
                if seq > last:
                    last = seq
                    yield self._sse(seq, payload)
        finally:
            sub.close()

    def _hello(self) -> bytes:
        data = json.dumps({"instance": self.instance, "events": []}, separators=(",", ":"))
        return f"data: {data}\n\n".encode()

    async def _replayed(self, context: Any, since: int) -> AsyncIterator[tuple[int, bytes]]:
        import zmq

        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay)
        try:
            await dealer.send_multipart((b"", max(0, since).to_bytes(8, "big")))
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), 10)
                _, _, seq_bytes, payload = frames
                if seq_bytes == _END_SEQ:
                    return
                yield int.from_bytes(seq_bytes, "big"), payload
        except TimeoutError:
            return  # an engine too busy to replay: live events only
        finally:
            dealer.close()


def since_of(query_string: bytes) -> int | None:
    """``since=N`` of a query string (None when absent or not a number)."""
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"since" and value.isdigit():
            return int(value)
    return None
