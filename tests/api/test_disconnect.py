"""Client disconnects, at the ASGI level: work and streams stop at once, their
clean-up runs, and a disconnect is not mistaken for a shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serving.api.disconnect import ClientDisconnected, DisconnectWatch
from serving.api.responses import EventStream


class Client:
    """An ASGI peer: ``leave()`` makes ``receive`` answer http.disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.leave()  # as uvicorn: a finished response also wakes receive


def bodies(client: Client) -> list[bytes]:
    return [m["body"] for m in client.sent if m["type"] == "http.response.body"]


async def watched(client: Client, work: Any) -> Any:
    """``work`` as the gateway runs a route's work: under a watch made in its task."""
    watch = DisconnectWatch(client.receive)
    try:
        return await watch.run(work)
    finally:
        watch.close()


async def _a_stream_stops_and_cleans_up_when_the_client_leaves() -> None:
    client = Client()
    cleaned = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            index = 0
            while True:
                index += 1
                if index == 3:
                    client.leave()
                yield b"data: %d\n\n" % index
                await asyncio.sleep(0.01)
        finally:
            cleaned.set()  # where the relay closes the engine connection

    response = EventStream(endless())
    await response({"type": "http"}, client.receive, client.send)  # in this task: it is cancelled
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert cleaned.is_set()
    assert client.sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in client.sent[0]["headers"]
    assert 3 <= len(bodies(client)) < 10
    assert all(m.get("more_body") for m in client.sent[1:]), "no end sent to a client that left"


async def _a_finished_stream_is_not_taken_for_a_disconnect() -> None:
    client = Client()

    async def three() -> AsyncIterator[bytes]:
        for index in range(3):
            yield b"data: %d\n\n" % index
            await asyncio.sleep(0)

    response = EventStream(three())
    await response({"type": "http"}, client.receive, client.send)
    await asyncio.sleep(0.05)  # the watcher wakes now: it must cancel nothing
    assert bodies(client) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def _one_watch_guards_the_work_then_its_stream() -> None:
    """The gateway's way: the watch that guarded the route's work is handed on
    to the stream it answered with (one watcher task per request)."""
    client = Client()
    cleaned = asyncio.Event()
    tasks_while_streaming: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            index = 0
            while True:
                index += 1
                tasks_while_streaming.append(len(asyncio.all_tasks()))
                if index == 3:
                    client.leave()
                yield b"data: %d\n\n" % index
                await asyncio.sleep(0.01)
        finally:
            cleaned.set()

    async def work() -> EventStream:
        return EventStream(endless())

    watch = DisconnectWatch(client.receive)
    stream = await watch.run(work())
    await stream.send_watched(client.send, watch)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert cleaned.is_set()
    assert 3 <= len(bodies(client)) < 10
    assert all(m.get("more_body") for m in client.sent[1:]), "no end sent to a client that left"
    assert set(tasks_while_streaming) == {2}  # this task and the one watcher


async def _a_watched_work_is_cancelled_when_the_client_leaves() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    asyncio.get_running_loop().call_later(0.05, client.leave)
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(watched(client, slow()), 5)
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    async def quick() -> str:
        return "answer"

    assert await watched(client, quick()) == "answer"


async def _a_shutdown_cancellation_is_not_swallowed() -> None:
    client = Client()
    task = asyncio.ensure_future(watched(client, asyncio.sleep(30)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_stream_stops_and_cleans_up_when_the_client_leaves() -> None:
    asyncio.run(_a_stream_stops_and_cleans_up_when_the_client_leaves())


def test_a_finished_stream_is_not_taken_for_a_disconnect() -> None:
    asyncio.run(_a_finished_stream_is_not_taken_for_a_disconnect())


def test_a_watched_work_is_cancelled_when_the_client_leaves() -> None:
    asyncio.run(_a_watched_work_is_cancelled_when_the_client_leaves())


def test_a_shutdown_cancellation_is_not_swallowed() -> None:
    asyncio.run(_a_shutdown_cancellation_is_not_swallowed())
