"""Usage records for chargeback: per UTC day, tenant, user (the key's owner)
and task, the requests, prompt and completion tokens, errors and 429s; and
per day, tenant and language, the suggestions shown, accepted and dismissed
(the console's acceptance rates).

A request adds to counts kept in memory (a dict update on the request path);
every ``usage.flush_interval_s`` they are added to the store off the event
loop: an embedded SQLite file by default, Redis when gateways on several hosts
share the records (SQLite's locks are not safe on network volumes, and each
gateway's file would hold only its own share). Queries answer the store plus
what is not yet flushed, so a request shows at once. A gateway that dies
loses at most one interval of counts; the audit log has every request.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from serving.background import Periodic
from serving.config import UsageConfig

logger = logging.getLogger("seed_serve.usage")


@dataclass(frozen=True)
class Table:
    """One kind of record: the fields that key it, the counters it sums."""

    name: str
    keys: tuple[str, ...]  # "day" (YYYY-MM-DD, UTC) first
    counters: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.keys, *self.counters)


COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "rate_limited")
USAGE = Table("usage", ("day", "tenant", "user", "task"), COUNTERS)
SUGGESTIONS = Table(
    "suggestions", ("day", "tenant", "language"), ("shown", "accepted", "dismissed")
)
TABLES = (USAGE, SUGGESTIONS)
FIELDS = USAGE.fields


@dataclass(frozen=True)
class UsageQuery:
    """Which records: days ``since`` to ``until`` inclusive, optionally one
    tenant and/or one user."""

    since: dt.date
    until: dt.date
    tenant: str | None = None
    user: str | None = None

    def days(self) -> list[str]:
        count = (self.until - self.since).days + 1
        return [(self.since + dt.timedelta(days=i)).isoformat() for i in range(max(count, 0))]

    def matches(self, table: Table, key: tuple[str, ...]) -> bool:
        values = dict(zip(table.keys, key, strict=True))
        return (
            self.since.isoformat() <= values["day"] <= self.until.isoformat()
            and (self.tenant is None or values["tenant"] == self.tenant)
            and (self.user is None or values.get("user", self.user) == self.user)
        )

    def filters(self, table: Table) -> list[tuple[str, str]]:
        """(field, value) equalities this query sets on ``table``."""
        pairs = [("tenant", self.tenant), ("user", self.user)]
        return [(f, v) for f, v in pairs if v is not None and f in table.keys]


Counts = dict[tuple[str, ...], list[int]]


class UsageBackend(Protocol):
    """Where flushed counts live: adds are sums, so gateways may add concurrently."""

    def add(self, table: Table, counts: Counts) -> None: ...

    def query(self, table: Table, query: UsageQuery) -> Counts: ...

    def drop_before(self, day: str) -> int: ...

    def close(self) -> None: ...


class SqliteUsage:
    """A table per record kind, one row per key, summed by upsert (WAL:
    several gateway processes on one host may share the file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used from worker threads
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        for table in TABLES:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table.name} ("
                + ", ".join(f"{name} TEXT NOT NULL" for name in table.keys)
                + ", "
                + ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in table.counters)
                + f", PRIMARY KEY ({', '.join(table.keys)}))"
            )
        self._db.commit()
        path.chmod(0o600)  # who used what is not everybody's business

    def add(self, table: Table, counts: Counts) -> None:
        sums = ", ".join(f"{name} = {name} + excluded.{name}" for name in table.counters)
        rows = [(*key, *values) for key, values in counts.items()]
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT INTO {table.name} ({', '.join(table.fields)}) "
                f"VALUES ({', '.join('?' * len(table.fields))}) "
                f"ON CONFLICT ({', '.join(table.keys)}) DO UPDATE SET {sums}",
                rows,
            )

    def query(self, table: Table, query: UsageQuery) -> Counts:
        where = ["day >= ?", "day <= ?"]
        params: list[Any] = [query.since.isoformat(), query.until.isoformat()]
        for column, value in query.filters(table):
            where.append(f"{column} = ?")
            params.append(value)
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {', '.join(table.fields)} FROM {table.name} WHERE {' AND '.join(where)}",
                params,
            )
            width = len(table.keys)
            return {tuple(row[:width]): list(row[width:]) for row in cursor.fetchall()}

    def drop_before(self, day: str) -> int:
        with self._lock, self._db:
            return sum(
                self._db.execute(f"DELETE FROM {table.name} WHERE day < ?", (day,)).rowcount
                for table in TABLES
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SEP = "\x1f"  # between a field's parts: never in tenant names, tasks or counters


class RedisUsage:
    """One hash per record kind and day (``seed-serve:<kind>:<day>``), a field
    per key and counter, summed with HINCRBY; days expire after retention."""

    def __init__(self, url: str, retention_days: int) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._ttl_s = (retention_days + 1) * 86_400

    @staticmethod
    def _hash(table: Table, day: str) -> str:
        return f"seed-serve:{table.name}:{day}"

    def add(self, table: Table, counts: Counts) -> None:
        pipe = self._redis.pipeline(transaction=False)
        days = set()
        for key, values in counts.items():
            days.add(key[0])
            for name, value in zip(table.counters, values, strict=True):
                if value:
                    pipe.hincrby(self._hash(table, key[0]), _SEP.join((*key[1:], name)), value)
        for day in days:
            pipe.expire(self._hash(table, day), self._ttl_s)
        pipe.execute()

    def query(self, table: Table, query: UsageQuery) -> Counts:
        pipe = self._redis.pipeline(transaction=False)
        days = query.days()
        for day in days:
            pipe.hgetall(self._hash(table, day))
        counts: Counts = {}
        for day, fields in zip(days, pipe.execute(), strict=True):
            for raw_field, raw_value in fields.items():
                *rest, name = raw_field.decode().split(_SEP)
                key = (day, *rest)
                if len(key) == len(table.keys) and query.matches(table, key):
                    values = counts.setdefault(key, [0] * len(table.counters))
                    values[table.counters.index(name)] += int(raw_value)
        return counts

    def drop_before(self, day: str) -> int:
        return 0  # each day's hash expires by itself

    def close(self) -> None:
        self._redis.close()


def build_usage_backend(config: UsageConfig) -> UsageBackend:
    if config.backend == "redis":
        assert config.redis_url is not None  # the config checks it
        return RedisUsage(config.redis_url, config.retention_days)
    return SqliteUsage(Path(config.sqlite_file).expanduser())


class UsageRecorder:
    """Counts requests and suggestion events in memory, flushes them to
    ``backend``, answers queries."""

    def __init__(
        self, backend: UsageBackend, *, flush_interval_s: float, retention_days: int
    ) -> None:
        self.backend = backend
        self.retention_days = retention_days
        self._pending: dict[Table, Counts] = {table: {} for table in TABLES}
        self._day = ""
        self._day_ends = 0.0  # epoch seconds when _day is over
        self._flush_lock = asyncio.Lock()
        self._flusher = Periodic(
            "usage flush", self.flush, flush_interval_s, logger=logger, first_at_once=False
        )

    def _today(self) -> str:
        """Today's UTC date, worked out once a day (not per request)."""
        now = time.time()
        if now >= self._day_ends:
            today = dt.datetime.fromtimestamp(now, dt.UTC).date()
            self._day = today.isoformat()
            self._day_ends = (now // 86_400 + 1) * 86_400
        return self._day

    def _counts(self, table: Table, key: tuple[str, ...]) -> list[int]:
        pending = self._pending[table]
        values = pending.get(key)
        if values is None:
            values = pending[key] = [0] * len(table.counters)
        return values

    def record(
        self,
        *,
        tenant: str,
        user: str,
        task: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        now: dt.datetime | None = None,
    ) -> None:
        """One request (the request path: a dict update, nothing more)."""
        day = now.date().isoformat() if now is not None else self._today()
        values = self._counts(USAGE, (day, tenant, user, task))
        values[0] += 1
        values[1] += prompt_tokens
        values[2] += completion_tokens
        if status == 429:
            values[4] += 1
        elif status >= 400:
            values[3] += 1

    def record_suggestion(
        self, *, tenant: str, language: str, event: str, now: dt.datetime | None = None
    ) -> None:
        """A suggestion shown, accepted or dismissed (counted once each)."""
        day = now.date().isoformat() if now is not None else self._today()
        self._counts(SUGGESTIONS, (day, tenant, language))[SUGGESTIONS.counters.index(event)] += 1

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store; on a store
        error the counts stay pending for the next turn."""
        async with self._flush_lock:
            for table in TABLES:
                batch, self._pending[table] = self._pending[table], {}
                if not batch:
                    continue
                try:
                    await asyncio.to_thread(self.backend.add, table, batch)
                except BaseException:
                    _merge(self._pending[table], batch)
                    raise
            cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=self.retention_days)
            await asyncio.to_thread(self.backend.drop_before, cutoff.isoformat())

    async def query(self, query: UsageQuery, table: Table = USAGE) -> list[dict[str, Any]]:
        """The records ``query`` selects, store and pending together, sorted.

        Not while a flush is adding a batch: the batch is then neither pending
        nor yet stored, and would be missed (seen in the e2e tests)."""
        async with self._flush_lock:
            counts = await asyncio.to_thread(self.backend.query, table, query)
            pending = list(self._pending[table].items())
        _merge(counts, {k: v for k, v in pending if query.matches(table, k)})
        return [
            {
                **dict(zip(table.keys, key, strict=True)),
                **dict(zip(table.counters, values, strict=True)),
            }
            for key, values in sorted(counts.items())
        ]

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        try:
            await self.flush()
        except Exception:
            logger.exception("usage records of the last %s s were lost", self._flusher.interval_s)
        self.backend.close()


def _merge(into: Counts, more: Counts) -> None:
    for key, values in more.items():
        current = into.setdefault(key, [0] * len(values))
        for index, value in enumerate(values):
            current[index] += value


def usage_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The records as CSV with a header line (for spreadsheets and chargeback)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # A leading =, +, - or @ would be a formula to a spreadsheet.
        writer.writerow({k: _no_formula(v) for k, v in row.items()})
    return out.getvalue()


def _no_formula(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
