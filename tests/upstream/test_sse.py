"""The one SSE reader: events whole whatever the chunking, raw bytes kept for
the relay, data parsed once for the task paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serving.errors import UpstreamError
from serving.upstream.sse import SSEReader, event_around, json_events, split_events

STREAM = (
    b'data: {"id":"a","choices":[{"text":"x"}]}\n\n'
    b": a comment\n\n"
    b'data: {"id": "a",\n'
    b'data:  "choices": []}\n\n'
    b"data: [DONE]\n\n"
)


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 1000])
def test_events_are_whole_whatever_the_chunking(size: int) -> None:
    reader = SSEReader()
    events, raw = [], b""
    for chunk in _split(STREAM, size):
        complete = reader.feed(chunk)
        found = split_events(complete)
        events += found
        raw += complete
        assert complete == b"".join(e.raw for e in found)
    assert raw == STREAM and reader.rest() == b""
    assert [e.data for e in events] == [
        b'{"id":"a","choices":[{"text":"x"}]}',
        None,  # a comment: no data
        b'{"id": "a",\n "choices": []}',  # data lines joined with \n
        b"[DONE]",
    ]
    assert events[2].json() == {"id": "a", "choices": []}
    assert events[3].done and not events[0].done


def test_crlf_streams_and_a_cut_tail() -> None:
    reader = SSEReader()
    complete = reader.feed(b'data: {"a": 1}\r\n\r\ndata: {"b": 2}\r\n\r\ndata: {"c"')
    assert [e.json() for e in split_events(complete)] == [{"a": 1}, {"b": 2}]
    assert complete == b'data: {"a": 1}\r\n\r\ndata: {"b": 2}\r\n\r\n'
    assert reader.rest() == b'data: {"c"'


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _collect(*parts: bytes) -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        return [event async for event in json_events(_chunks(*parts))]

    return asyncio.run(run())


def test_json_events_until_done_and_a_last_event_without_its_blank_line() -> None:
    assert _collect(b'data: {"n": 1}\n\ndata: [DONE]\n\ndata: {"n": 2}\n\n') == [{"n": 1}]
    assert _collect(b'data: {"n": 1}\n\n', b'data: {"n": 2}') == [{"n": 1}, {"n": 2}]


def test_an_error_event_raises_in_the_task_path() -> None:
    with pytest.raises(UpstreamError) as caught:
        _collect(b'data: {"n": 1}\n\ndata: {"error": {"message": "out of memory"}}\n\n')
    assert caught.value.code == "engine_error" and "out of memory" in caught.value.message


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n"])
def test_one_event_is_read_out_of_a_batch_without_splitting_the_rest(end: bytes) -> None:
    events = [b'data: {"n": 1}', b'data: {"n": 2, "usage": {}}', b"data: [DONE]"]
    batch = b"".join(event + end for event in events)
    position = batch.index(b'"usage"')
    start, event = event_around(batch, position)
    assert event.raw == events[1] + end and event.json() == {"n": 2, "usage": {}}
    assert batch[start : start + len(event.raw)] == event.raw
    first_start, first = event_around(batch, 0)
    assert first_start == 0 and first.json() == {"n": 1}
    with pytest.raises(ValueError):
        event_around(batch + b'data: {"cut', len(batch) + 3)
