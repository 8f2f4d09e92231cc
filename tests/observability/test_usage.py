"""Usage records: counted in memory, flushed to SQLite (or a real Redis),
summed across gateways, answered with what is not yet flushed, CSV-safe; and
GET /v1/admin/usage over the real gateway app in front of a scripted engine."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from serving.admission.keys import create_key, update_tenant
from serving.observability.usage import (
    COUNTERS,
    SUGGESTIONS,
    Counts,
    RedisUsage,
    SqliteUsage,
    Table,
    UsageBackend,
    UsageQuery,
    UsageRecorder,
    usage_csv,
)
from tests.support.asgi import scripted_config, scripted_gateway
from tests.support.redis_server import redis_server
from tests.support.scripted_engine import Script, ScriptedEngine

DAY = dt.datetime(2026, 11, 28, 23, 59, tzinfo=dt.UTC)
NEXT_DAY = DAY + dt.timedelta(minutes=2)
ALL = UsageQuery(since=dt.date(2026, 11, 1), until=dt.date(2026, 11, 30))


def recorder(backend: UsageBackend) -> UsageRecorder:
    return UsageRecorder(backend, flush_interval_s=3600, retention_days=100_000)


def record(usage: UsageRecorder, tenant: str = "a", user: str = "alice", **kwargs: Any) -> None:
    values: dict[str, Any] = {
        "task": "code_completion", "status": 200, "prompt_tokens": 10, "completion_tokens": 4,
        "now": DAY, **kwargs,
    }  # fmt: skip
    usage.record(tenant=tenant, user=user, **values)


def counts(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], tuple[int, ...]]:
    return {
        (r["day"], r["tenant"], r["user"], r["task"]): tuple(r[c] for c in COUNTERS) for r in rows
    }


def test_requests_tokens_errors_and_429s_per_day_tenant_user_and_task(tmp_path: Path) -> None:
    asyncio.run(_requests_tokens_errors_and_429s_per_day_tenant_user_and_task(tmp_path))


async def _requests_tokens_errors_and_429s_per_day_tenant_user_and_task(tmp_path: Path) -> None:
    usage = recorder(SqliteUsage(tmp_path / "usage.sqlite3"))
    record(usage)
    record(usage, status=400, prompt_tokens=0, completion_tokens=0)
    record(usage, status=429, prompt_tokens=0, completion_tokens=0)
    record(usage, status=503, prompt_tokens=0, completion_tokens=0)
    record(usage, user="bob", task="repair", prompt_tokens=100, completion_tokens=50)
    record(usage, tenant="b", now=NEXT_DAY)  # the next UTC day
    # Not yet flushed: answered all the same.
    before = counts(await usage.query(ALL))
    await usage.flush()
    after = counts(await usage.query(ALL))
    assert (
        before
        == after
        == {
            ("2026-11-28", "a", "alice", "code_completion"): (4, 10, 4, 2, 1),
            ("2026-11-28", "a", "bob", "repair"): (1, 100, 50, 0, 0),
            ("2026-11-29", "b", "alice", "code_completion"): (1, 10, 4, 0, 0),
        }
    )
    only_a = UsageQuery(since=DAY.date(), until=DAY.date(), tenant="a", user="bob")
    assert list(counts(await usage.query(only_a))) == [("2026-11-28", "a", "bob", "repair")]
    await usage.stop()


def test_gateways_sharing_the_file_add_up_and_pending_counts_join_flushed_ones(
    tmp_path: Path,
) -> None:
    asyncio.run(_gateways_sharing_the_file_add_up_and_pending_counts_join_flushed_ones(tmp_path))


async def _gateways_sharing_the_file_add_up_and_pending_counts_join_flushed_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.sqlite3"
    first, second = recorder(SqliteUsage(path)), recorder(SqliteUsage(path))
    for _ in range(3):
        record(first)
    record(second)
    await asyncio.gather(first.flush(), second.flush())
    record(first)  # pending in the first gateway only
    assert counts(await first.query(ALL)) == {
        ("2026-11-28", "a", "alice", "code_completion"): (5, 50, 20, 0, 0)
    }
    assert counts(await second.query(ALL))[("2026-11-28", "a", "alice", "code_completion")][0] == 4
    await first.stop()  # the last counts are flushed on the way out
    assert counts(await second.query(ALL))[("2026-11-28", "a", "alice", "code_completion")][0] == 5
    await second.stop()
    assert path.stat().st_mode & 0o077 == 0


class WrappedStore:
    """A store in front of another: what the wrappers below do not change."""

    def __init__(self, inner: UsageBackend) -> None:
        self.inner = inner

    def add(self, table: Table, batch: Counts) -> None:
        self.inner.add(table, batch)

    def query(self, table: Table, query: UsageQuery) -> Counts:
        return self.inner.query(table, query)

    def drop_before(self, day: str) -> int:
        return self.inner.drop_before(day)

    def close(self) -> None:
        self.inner.close()


class FailingOnce(WrappedStore):
    """A store that refuses its first add (a full disk, Redis away)."""

    def __init__(self, inner: UsageBackend) -> None:
        super().__init__(inner)
        self.failed = False

    def add(self, table: Table, batch: Counts) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("disk full")
        self.inner.add(table, batch)


def test_a_failed_flush_keeps_the_counts_for_the_next(tmp_path: Path) -> None:
    asyncio.run(_a_failed_flush_keeps_the_counts_for_the_next(tmp_path))


async def _a_failed_flush_keeps_the_counts_for_the_next(tmp_path: Path) -> None:
    usage = recorder(FailingOnce(SqliteUsage(tmp_path / "u.sqlite3")))
    record(usage)
    with pytest.raises(OSError):
        await usage.flush()
    record(usage)
    await usage.flush()
    assert counts(await usage.query(ALL))[("2026-11-28", "a", "alice", "code_completion")][0] == 2
    await usage.stop()


def test_records_past_retention_are_dropped(tmp_path: Path) -> None:
    asyncio.run(_records_past_retention_are_dropped(tmp_path))


async def _records_past_retention_are_dropped(tmp_path: Path) -> None:
    usage = UsageRecorder(
        SqliteUsage(tmp_path / "u.sqlite3"), flush_interval_s=60, retention_days=30
    )
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    record(usage, now=old)
    record(usage, now=dt.datetime.now(dt.UTC))
    await usage.flush()
    today = dt.datetime.now(dt.UTC).date()
    rows = await usage.query(UsageQuery(since=today - dt.timedelta(days=60), until=today))
    assert [r["day"] for r in rows] == [today.isoformat()]
    await usage.stop()


def test_gateways_on_several_hosts_share_records_in_redis(tmp_path: Path) -> None:
    asyncio.run(_gateways_on_several_hosts_share_records_in_redis(tmp_path))


async def _gateways_on_several_hosts_share_records_in_redis(tmp_path: Path) -> None:
    with redis_server(tmp_path) as (port, _):
        url = f"redis://127.0.0.1:{port}/0"
        first = recorder(RedisUsage(url, retention_days=400))
        second = recorder(RedisUsage(url, retention_days=400))
        record(first, user="alice@example.com")
        record(first, status=429, user="alice@example.com", prompt_tokens=0, completion_tokens=0)
        record(second, user="alice@example.com")
        record(second, tenant="b", now=NEXT_DAY)
        await asyncio.gather(first.flush(), second.flush())
        assert counts(await second.query(ALL)) == {
            ("2026-11-28", "a", "alice@example.com", "code_completion"): (3, 20, 8, 0, 1),
            ("2026-11-29", "b", "alice", "code_completion"): (1, 10, 4, 0, 0),
        }
        one_tenant = UsageQuery(since=ALL.since, until=ALL.until, tenant="b")
        assert list(counts(await first.query(one_tenant))) == [
            ("2026-11-29", "b", "alice", "code_completion")
        ]
        await first.stop()
        await second.stop()


def test_csv_has_a_header_and_never_a_formula() -> None:
    rows = [
        {"day": "2026-11-28", "tenant": "a", "user": "=HYPERLINK(\"x\")", "task": "chat",
         "requests": 1, "prompt_tokens": 2, "completion_tokens": 3, "errors": 0,
         "rate_limited": 0},
    ]  # fmt: skip
    lines = usage_csv(rows).splitlines()
    assert (
        lines[0]
        == "day,tenant,user,task,requests,prompt_tokens,completion_tokens,errors,rate_limited"
    )
    assert lines[1] == '2026-11-28,a,"\'=HYPERLINK(""x"")",chat,1,2,3,0,0'


def test_admin_usage_route_counts_each_keys_owner(tmp_path: Path) -> None:
    asyncio.run(_admin_usage_route_counts_each_keys_owner(tmp_path))


async def _admin_usage_route_counts_each_keys_owner(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    _, alice = create_key(keys_file, tenant="team-a", name="laptop", owner="alice@example.com")
    _, ci = create_key(keys_file, tenant="team-a", name="ci-bot")  # no owner: counted by name
    _, admin = create_key(keys_file, tenant="ops", name="admin", role="admin")
    update_tenant(keys_file, "team-a", rpm=3)
    config = scripted_config(
        tmp_path, auth={"enabled": True, "keys_file": str(keys_file), "demo_key_file": None}
    )
    async with scripted_gateway(
        ScriptedEngine("s-0", default=Script(tokens=4)), config=config
    ) as gateway:

        def as_(secret: str) -> dict[str, str]:
            return {"authorization": f"Bearer {secret}"}

        async def complete(secret: str, **body: Any) -> int:
            payload = {"model": "scripted", "prompt": "def f(x):", "max_tokens": 8, **body}
            reply = await gateway.call("POST", "/v1/completions", json_body=payload,
                                       headers=as_(secret))  # fmt: skip
            return reply.status

        statuses = [await complete(alice), await complete(alice), await complete(ci, n=0)]
        statuses.append(await complete(alice))  # over rpm 3
        assert statuses == [200, 200, 400, 429]
        reply = await gateway.call("GET", "/v1/admin/usage", headers=as_(admin))
        assert reply.status == 200, reply.body
        data = reply.json()
        today = dt.datetime.now(dt.UTC).date()
        assert data["until"] == today.isoformat()
        assert data["since"] == (today - dt.timedelta(days=29)).isoformat()
        by_user = {(r["user"], r["task"]): r for r in data["data"]}
        alice_row = by_user[("alice@example.com", "completion")]
        assert (alice_row["requests"], alice_row["errors"], alice_row["rate_limited"]) == (3, 0, 1)
        assert alice_row["completion_tokens"] == 8 and alice_row["prompt_tokens"] > 0
        assert by_user[("ci-bot", "completion")]["errors"] == 1
        assert {r["tenant"] for r in data["data"]} == {"team-a"}
        # CSV for spreadsheets, one tenant.
        reply = await gateway.call(
            "GET", "/v1/admin/usage?format=csv&tenant=team-a&user=ci-bot", headers=as_(admin)
        )
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/csv")
        assert "attachment" in reply.headers["content-disposition"]
        assert reply.body.decode().splitlines()[1].startswith(f"{today.isoformat()},team-a,ci-bot,")
        assert len(reply.body.decode().splitlines()) == 2
        # Not for developers' keys; bad parameters named.
        assert (await gateway.call("GET", "/v1/admin/usage", headers=as_(alice))).status == 403
        for query, param in (("since=yesterday", "since"), ("format=xml", "format"),
                             ("since=2026-02-01&until=2026-01-01", None), ("colour=red", "colour"),
                             ("tenant=a&tenant=b", "tenant")):  # fmt: skip
            reply = await gateway.call("GET", f"/v1/admin/usage?{query}", headers=as_(admin))
            assert reply.status == 400, (query, reply.body)
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error"
            if param is not None:
                assert error["param"] == param, (query, error)
        # The query parameters are documented where clients look.
        reply = await gateway.call("GET", "/openapi.json", headers=as_(alice))
        operation = reply.json()["paths"]["/v1/admin/usage"]["get"]
        assert [p["name"] for p in operation["parameters"]] == [
            "since", "until", "tenant", "user", "format"
        ]  # fmt: skip
        assert all(p["in"] == "query" and not p["required"] for p in operation["parameters"])


def test_suggestion_events_per_day_tenant_and_language(tmp_path: Path) -> None:
    asyncio.run(_suggestion_events(tmp_path))


async def _suggestion_events(tmp_path: Path) -> None:
    with redis_server(tmp_path) as (port, _):
        for backend in (SqliteUsage(tmp_path / "u.sqlite3"),
                        RedisUsage(f"redis://127.0.0.1:{port}/0", retention_days=400)):  # fmt: skip
            usage = recorder(backend)
            for event in ("shown", "shown", "shown", "accepted", "dismissed"):
                usage.record_suggestion(tenant="a", language="python", event=event, now=DAY)
            usage.record_suggestion(tenant="b", language="go", event="shown", now=DAY)
            record(usage)  # a request: another kind of record, kept apart
            expected = [
                {"day": "2026-11-28", "tenant": "a", "language": "python", "shown": 3,
                 "accepted": 1, "dismissed": 1},
                {"day": "2026-11-28", "tenant": "b", "language": "go", "shown": 1,
                 "accepted": 0, "dismissed": 0},
            ]  # fmt: skip
            assert await usage.query(ALL, SUGGESTIONS) == expected  # pending
            await usage.flush()
            assert await usage.query(ALL, SUGGESTIONS) == expected  # stored
            only_b = UsageQuery(since=ALL.since, until=ALL.until, tenant="b")
            assert await usage.query(only_b, SUGGESTIONS) == expected[1:]
            assert [r["requests"] for r in await usage.query(ALL)] == [1]
            await usage.stop()


class SlowStore(WrappedStore):
    """A store whose add takes until the test lets it finish."""

    def __init__(self, inner: UsageBackend) -> None:
        super().__init__(inner)
        self.adding = threading.Event()
        self.finish = threading.Event()

    def add(self, table: Table, batch: Counts) -> None:
        self.adding.set()
        self.finish.wait(timeout=30)
        self.inner.add(table, batch)


def test_a_query_during_a_flush_misses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SlowStore(SqliteUsage(tmp_path / "u.sqlite3"))
        usage = recorder(store)
        record(usage)
        flushing = asyncio.create_task(usage.flush())
        await asyncio.to_thread(store.adding.wait, 30)  # the batch left pending, not yet stored
        querying = asyncio.create_task(usage.query(ALL))
        await asyncio.sleep(0.05)
        store.finish.set()
        await flushing
        rows = await querying
        assert [r["requests"] for r in rows] == [1]
        await usage.stop()

    asyncio.run(scenario())
