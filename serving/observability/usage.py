"""Usage records for chargeback: per UTC day, tenant, user (the key's owner)
and task, the requests, prompt and completion tokens, errors and 429s.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from serving.background import Periodic
from serving.config import UsageConfig

logger = logging.getLogger("seed_serve.usage")

COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "rate_limited")
FIELDS = ("day", "tenant", "user", "task", *COUNTERS)


class UsageKey(NamedTuple):
    day: str  # YYYY-MM-DD, UTC
    tenant: str
    user: str
    task: str


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

    def matches(self, key: UsageKey) -> bool:
        return (
            self.since.isoformat() <= key.day <= self.until.isoformat()
            and (self.tenant is None or key.tenant == self.tenant)
            and (self.user is None or key.user == self.user)
        )


Counts = dict[UsageKey, list[int]]


class UsageBackend(Protocol):
    """Where flushed counts live: adds are sums, so gateways may add concurrently."""

    def add(self, counts: Counts) -> None: ...

    def query(self, query: UsageQuery) -> Counts: ...

    def drop_before(self, day: str) -> int: ...

    def close(self) -> None: ...


class SqliteUsage:
    """One row per (day, tenant, user, task), summed by upsert (WAL: several
    gateway processes on one host may share the file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used from worker threads
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS usage (day TEXT NOT NULL, tenant TEXT NOT NULL, "
            "user TEXT NOT NULL, task TEXT NOT NULL, "
            + ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in COUNTERS)
            + ", PRIMARY KEY (day, tenant, user, task))"
        )
        self._db.commit()
        path.chmod(0o600)  # who used what is not everybody's business

    def add(self, counts: Counts) -> None:
        sums = ", ".join(f"{name} = {name} + excluded.{name}" for name in COUNTERS)
        rows = [(*key, *values) for key, values in counts.items()]
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT INTO usage ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) "
                f"ON CONFLICT (day, tenant, user, task) DO UPDATE SET {sums}",
                rows,
            )

    def query(self, query: UsageQuery) -> Counts:
        where = ["day >= ?", "day <= ?"]
        params: list[Any] = [query.since.isoformat(), query.until.isoformat()]
        for column, value in (("tenant", query.tenant), ("user", query.user)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {', '.join(FIELDS)} FROM usage WHERE {' AND '.join(where)}", params
            )
            return {UsageKey(*row[:4]): list(row[4:]) for row in cursor.fetchall()}

    def drop_before(self, day: str) -> int:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM usage WHERE day < ?", (day,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SEP = "\x1f"  # between a field's parts: never in tenant names, tasks or counters


class RedisUsage:
    """One hash per day (``seed-serve:usage:<day>``), a field per (tenant,
    user, task, counter), summed with HINCRBY; days expire after retention."""

    PREFIX = "seed-serve:usage:"

    def __init__(self, url: str, retention_days: int) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._ttl_s = (retention_days + 1) * 86_400

    def add(self, counts: Counts) -> None:
        pipe = self._redis.pipeline(transaction=False)
        days = set()
        for key, values in counts.items():
            days.add(key.day)
            for name, value in zip(COUNTERS, values, strict=True):
                if value:
                    field = _SEP.join((key.tenant, key.user, key.task, name))
                    pipe.hincrby(self.PREFIX + key.day, field, value)
        for day in days:
            pipe.expire(self.PREFIX + day, self._ttl_s)
        pipe.execute()

    def query(self, query: UsageQuery) -> Counts:
        pipe = self._redis.pipeline(transaction=False)
        days = query.days()
        for day in days:
            pipe.hgetall(self.PREFIX + day)
        counts: Counts = {}
        for day, fields in zip(days, pipe.execute(), strict=True):
            for raw_field, raw_value in fields.items():
                tenant, user, task, name = raw_field.decode().split(_SEP)
                key = UsageKey(day, tenant, user, task)
                if query.matches(key):
                    values = counts.setdefault(key, [0] * len(COUNTERS))
                    values[COUNTERS.index(name)] += int(raw_value)
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
    """Counts requests in memory, flushes them to ``backend``, answers queries."""

    def __init__(
        self, backend: UsageBackend, *, flush_interval_s: float, retention_days: int
    ) -> None:
        self.backend = backend
        self.retention_days = retention_days
        self._pending: Counts = {}
        self._flush_lock = asyncio.Lock()
        self._flusher = Periodic(
            "usage flush", self.flush, flush_interval_s, logger=logger, first_at_once=False
        )

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
        day = (now or dt.datetime.now(dt.UTC)).date().isoformat()
        key = UsageKey(day, tenant, user, task)
        values = self._pending.get(key)
        if values is None:
            values = self._pending[key] = [0, 0, 0, 0, 0]
        values[0] += 1
        values[1] += prompt_tokens
        values[2] += completion_tokens
        if status == 429:
            values[4] += 1
        elif status >= 400:
            values[3] += 1

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store; on a store
        error the counts stay pending for the next turn."""
        async with self._flush_lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                await asyncio.to_thread(self.backend.add, batch)
            except BaseException:
                _merge(self._pending, batch)
                raise
            cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=self.retention_days)
            await asyncio.to_thread(self.backend.drop_before, cutoff.isoformat())

    async def query(self, query: UsageQuery) -> list[dict[str, Any]]:
        """The records ``query`` selects, store and pending together, sorted."""
        counts = await asyncio.to_thread(self.backend.query, query)
        _merge(counts, {k: v for k, v in list(self._pending.items()) if query.matches(k)})
        return [
            {**key._asdict(), **dict(zip(COUNTERS, values, strict=True))}
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
        current = into.setdefault(key, [0] * len(COUNTERS))
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
