"""The one reader of an engine's server-sent events, for the stream relay
(which passes the events on untouched as they complete, and reads only the
few it must) and for the task paths (which parse every event).

Events end with a blank line (``\\n\\n``, or ``\\r\\n\\r\\n``); an event's data is
its ``data:`` lines joined by ``\\n``. Comments and other fields are kept in
the raw bytes but carry no data.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from serving.errors import UpstreamError

DONE_DATA = b"[DONE]"
_ANY_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_UNSET: Any = object()


class SSEEvent:
    """One complete event: ``raw`` as received (terminator included) and its
    ``data`` (None when it has no data field); :meth:`json` parses it once."""

    __slots__ = ("_parsed", "data", "raw")

    def __init__(self, raw: bytes, data: bytes | None) -> None:
        self.raw = raw
        self.data = data
        self._parsed: Any = _UNSET

    @property
    def done(self) -> bool:
        return self.data == DONE_DATA

    @property
    def event_id(self) -> str | None:
        """Its ``id:`` field, if it has one."""
        for line in self.raw.splitlines():
            if line.startswith(b"id:"):
                return line[3:].strip().decode("utf-8", "replace")
        return None

    def json(self) -> Any:
        """The data as JSON (ValueError when it is not JSON)."""
        if self._parsed is _UNSET:
            if self.data is None:
                raise ValueError("the event has no data")
            self._parsed = json.loads(self.data)
        return self._parsed


def _data_of(body: bytes) -> bytes | None:
    if body.startswith(b"data: ") and b"\n" not in body and b"\r" not in body:
        return body[6:]  # the shape every engine writes: one data line
    lines = [line for line in body.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line[5:6] == b" " else line[5:] for line in lines)


def split_events(raw: bytes) -> list[SSEEvent]:
    """The events of ``raw``: complete events, as :meth:`SSEReader.feed` gives them."""
    if b"\r" not in raw:  # the common case: LF line ends
        return [SSEEvent(body + b"\n\n", _data_of(body)) for body in raw.split(b"\n\n")[:-1]]
    events: list[SSEEvent] = []
    start = 0
    for end in _ANY_END.finditer(raw):
        events.append(SSEEvent(raw[start : end.end()], _data_of(raw[start : end.start()])))
        start = end.end()
    return events


def event_around(raw: bytes, position: int) -> tuple[int, SSEEvent]:
    """The event of ``raw`` (complete events) whose body holds byte
    ``position``, and where it starts, found without splitting the others:
    the relay reads one or two events out of each batch this way."""
    if b"\r" in raw:  # CR framing (no engine here writes it): split them all
        start = 0
        for event in split_events(raw):
            if start + len(event.raw) > position:
                return start, event
            start += len(event.raw)
        raise ValueError("no complete event holds that position")
    start = raw.rfind(b"\n\n", 0, position)
    start = 0 if start < 0 else start + 2
    end = raw.find(b"\n\n", position)
    if end < 0:
        raise ValueError("no complete event holds that position")
    return start, SSEEvent(raw[start : end + 2], _data_of(raw[start:end]))


class SSEReader:
    """Cuts a byte stream at event boundaries, whatever the chunking: each feed
    gives the events it completed, as raw bytes (the relay passes them on
    as they are; :func:`split_events` makes events of them when needed)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of the events ``chunk`` completed (``b""``: none yet)."""
        buffer = self._pending + chunk if self._pending else chunk
        if b"\r" not in buffer:
            end = buffer.rfind(b"\n\n")
            cut = end + 2 if end >= 0 else 0
        else:
            ends = list(_ANY_END.finditer(buffer))
            cut = ends[-1].end() if ends else 0
        self._pending = buffer[cut:]
        return buffer[:cut]

    def rest(self) -> bytes:
        """What came after the last complete event (a stream cut short)."""
        rest, self._pending = self._pending, b""
        return rest


async def json_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI-style event stream, until ``[DONE]``; an
    error event (``{"error": ...}``) raises :class:`UpstreamError`."""
    reader = SSEReader()
    async for chunk in chunks:
        for data in _objects(split_events(reader.feed(chunk))):
            if data is None:
                return
            yield data
    # A last event without its blank line (the stream was cut there): as meant.
    rest = reader.rest().strip()
    if rest:
        for data in _objects(split_events(rest + b"\n\n")):
            if data is not None:
                yield data


def _objects(events: list[SSEEvent]) -> list[dict[str, Any] | None]:
    """Each event's JSON object (None for ``[DONE]``, which ends the list)."""
    found: list[dict[str, Any] | None] = []
    for event in events:
        if event.data is None:
            continue
        if event.done:
            found.append(None)
            break
        data = event.json()
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"Engine error mid-stream: {message}", code="engine_error")
        if isinstance(data, dict):
            found.append(data)
    return found
