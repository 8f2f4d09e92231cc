"""Keys, allow-lists, quotas, the admission queue and the audit log, in process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from pathlib import Path
from typing import ClassVar

import pytest

from serving.admission.auth import Authenticator
from serving.admission.keys import (
    KeyStore,
    create_key,
    ensure_demo_key,
    load_keys_file,
    revoke_key,
    save_keys_file,
)
from serving.admission.quotas import MemoryQuotaStore, Quotas
from serving.admission.scheduler import AdmissionScheduler, Superseded, Ticket
from serving.config import AdmissionConfig, AuditConfig, AuthConfig, QuotaConfig
from serving.engines.registry import ReplicaRegistry, StaticSource
from serving.engines.router import RoundRobinRouter
from serving.engines.types import ReplicaInfo, ReplicaState
from serving.errors import (
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from serving.observability.audit import AuditLog
from serving.observability.metrics import GatewayMetrics

# --------------------------------------------------------------------------- keys


def test_keys_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    record, secret = create_key(path, tenant="team-a", name="laptop", limits={"rpm": 5})
    text = path.read_text()
    assert secret.startswith("sk-seed-")
    assert secret not in text
    assert secret.split("-")[-1] not in text
    assert record.sha256 in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = KeyStore(load_keys_file(path)).authenticate(secret)
    assert principal is not None and principal.tenant_name == "team-a" and principal.key.rpm == 5


def test_wrong_revoked_and_expired_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    record, secret = create_key(path, tenant="t", name="a")
    _, expired = create_key(
        path, tenant="t", name="b", expires=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    store = KeyStore(load_keys_file(path))
    assert store.authenticate(secret) is not None
    assert store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.authenticate("sk-nonsense") is None
    assert store.authenticate("") is None
    assert store.authenticate(expired) is None
    revoke_key(path, record.id)
    assert KeyStore(load_keys_file(path)).authenticate(secret) is None


def test_demo_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    keys, secret_file = tmp_path / "keys.yaml", tmp_path / "demo-key"
    first = ensure_demo_key(keys, secret_file)
    assert ensure_demo_key(keys, secret_file) == first
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(load_keys_file(keys).keys) == 1
    revoke_key(keys, load_keys_file(keys).keys[0].id)
    assert ensure_demo_key(keys, secret_file) != first  # a revoked demo key is replaced


def _auth(tmp_path: Path, **settings: object) -> Authenticator:
    config = AuthConfig(keys_file=str(tmp_path / "keys.yaml"), **settings)  # type: ignore[arg-type]
    return Authenticator(config, GatewayMetrics())


def test_credentials_from_the_headers_sdks_use(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    assert auth.credential({b"authorization": b"Bearer sk-x"}) == "sk-x"
    assert auth.credential({b"api-key": b"sk-y"}) == "sk-y"
    assert auth.credential({b"x-api-key": b"sk-z"}) == "sk-z"
    assert auth.credential({b"authorization": b"Basic abc"}) is None


def test_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    auth = _auth(tmp_path, trusted_proxies=["10.0.0.0/8"])
    assert auth.client_ip("203.0.113.9", "1.2.3.4") == "203.0.113.9"  # not a proxy: ignored
    assert auth.client_ip("10.1.1.1", "198.51.100.7, 10.2.2.2") == "198.51.100.7"
    assert auth.client_ip("10.1.1.1", None) == "10.1.1.1"


def test_allow_lists_global_tenant_and_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _, secret = create_key(path, tenant="office", name="a")
    keys = load_keys_file(path)
    keys.tenants["office"].allowed_cidrs = ["192.168.0.0/16"]
    save_keys_file(path, keys)
    auth = _auth(tmp_path, allowed_cidrs=["192.168.0.0/16", "10.0.0.0/8"])
    assert auth.authenticate(secret, "192.168.4.2").tenant_name == "office"
    with pytest.raises(PermissionDeniedError):
        auth.authenticate(secret, "10.0.0.1")  # allowed globally, not for this tenant
    with pytest.raises(PermissionDeniedError):
        auth.check_network("8.8.8.8")
    with pytest.raises(AuthenticationError):
        auth.authenticate(None, "192.168.4.2")


def test_reload_swaps_keys_and_keeps_the_last_good_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _, first = create_key(path, tenant="t", name="a")
    auth = _auth(tmp_path)
    _, second = create_key(path, tenant="t", name="b")
    assert auth.reload_if_changed()
    assert auth.authenticate(second, "127.0.0.1")
    path.write_text("keys: [this is {not valid")
    assert not auth.reload_if_changed()
    assert auth.authenticate(first, "127.0.0.1")  # the last good keys still work
    samples = {
        s.labels["result"]: s.value
        for m in auth.metrics.registry.collect()
        for s in m.samples
        if s.name == "seed_serve_keys_reloads_total"
    }
    assert samples == {"ok": 1.0, "rejected": 1.0}


# --------------------------------------------------------------------------- quotas


def _principal(tmp_path: Path, **limits: int):  # type: ignore[no-untyped-def]
    path = tmp_path / f"keys-{len(list(tmp_path.iterdir()))}.yaml"
    _, secret = create_key(path, tenant="t", name="a", limits=limits)
    principal = KeyStore(load_keys_file(path)).authenticate(secret)
    assert principal is not None
    return principal


def test_rpm_bucket_answers_429_with_retry_after(tmp_path: Path) -> None:
    quotas = Quotas(QuotaConfig(), GatewayMetrics())
    principal = _principal(tmp_path, rpm=2)

    async def run() -> None:
        await quotas.admit(principal)
        await quotas.admit(principal)
        with pytest.raises(RateLimitError) as caught:
            await quotas.admit(principal)
        assert int(caught.value.headers["Retry-After"]) >= 1
        assert caught.value.code == "rate_limit_exceeded"

    asyncio.run(run())


def test_tpm_is_charged_with_real_usage(tmp_path: Path) -> None:
    quotas = Quotas(QuotaConfig(), GatewayMetrics())
    principal = _principal(tmp_path, tpm=100)

    async def run() -> None:
        await quotas.admit(principal)
        await quotas.charge(principal, 150)  # more than the minute's budget
        with pytest.raises(RateLimitError, match="tokens per minute"):
            await quotas.admit(principal)

    asyncio.run(run())


def test_concurrency_slots_come_back(tmp_path: Path) -> None:
    quotas = Quotas(QuotaConfig(), GatewayMetrics())
    principal = _principal(tmp_path, max_concurrency=1)

    async def run() -> None:
        slots = await quotas.admit(principal)
        with pytest.raises(RateLimitError, match="at once"):
            await quotas.admit(principal)
        await quotas.release(slots)
        await quotas.admit(principal)

    asyncio.run(run())


def test_tenant_limits_bind_every_key_of_the_tenant(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _, one = create_key(path, tenant="shared", name="a")
    _, two = create_key(path, tenant="shared", name="b")
    keys = load_keys_file(path)
    keys.tenants["shared"].rpm = 2
    store = KeyStore(keys)
    quotas = Quotas(QuotaConfig(), GatewayMetrics())

    async def run() -> None:
        await quotas.admit(store.authenticate(one))  # type: ignore[arg-type]
        await quotas.admit(store.authenticate(two))  # type: ignore[arg-type]
        with pytest.raises(RateLimitError, match="tenant shared"):
            await quotas.admit(store.authenticate(one))  # type: ignore[arg-type]

    asyncio.run(run())


def test_defaults_apply_when_a_key_sets_nothing(tmp_path: Path) -> None:
    config = QuotaConfig(key_defaults={"max_tokens": 64, "max_n": 2})  # type: ignore[arg-type]
    caps = Quotas(config, GatewayMetrics(), MemoryQuotaStore()).request_caps(_principal(tmp_path))
    assert (caps.max_tokens, caps.max_n) == (64, 2)


# --------------------------------------------------------------------------- admission queue


def _scheduler(target: int = 1, **settings: object) -> tuple[AdmissionScheduler, ReplicaRegistry]:
    replica = ReplicaInfo("r-0", "g", "m", ReplicaState.READY, url="http://127.0.0.1:9")
    registry = ReplicaRegistry(StaticSource([replica]))
    config = AdmissionConfig(target_inflight_per_replica=target, adaptive=False, **settings)  # type: ignore[arg-type]
    return AdmissionScheduler(config, registry, RoundRobinRouter(), GatewayMetrics()), registry


def test_lanes_and_fairness_order_dispatch() -> None:
    async def run() -> list[str]:
        scheduler, registry = _scheduler()
        await registry.refresh()
        order: list[str] = []
        holder = await scheduler.acquire(Ticket("m", "completion", "first"))  # fills the replica

        async def request(lane: str, key: str, label: str) -> None:
            lease = await scheduler.acquire(Ticket("m", lane, key, cost=10))
            order.append(label)
            await asyncio.sleep(0)
            lease.release()

        tasks = [asyncio.create_task(request("tests", "flooder", f"tests-{i}")) for i in range(3)]
        tasks += [
            asyncio.create_task(request("completion", "flooder", f"flood-{i}")) for i in range(3)
        ]
        await asyncio.sleep(0.01)
        tasks += [
            asyncio.create_task(request("completion", "quiet", f"quiet-{i}")) for i in range(2)
        ]
        await asyncio.sleep(0.01)
        holder.release()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    # Completions before tests; the quiet key is not stuck behind the flood.
    assert all(label.startswith(("flood", "quiet")) for label in order[:5])
    assert order[-3:] == ["tests-0", "tests-1", "tests-2"]
    assert order.index("quiet-0") <= 2 and order.index("quiet-1") <= 4


def test_full_queue_answers_503_at_once() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(max_queue=1)
        await registry.refresh()
        await scheduler.acquire(Ticket("m", "completion", "a"))
        waiting = asyncio.create_task(scheduler.acquire(Ticket("m", "completion", "b")))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailableError) as caught:
            await scheduler.acquire(Ticket("m", "completion", "c"))
        assert caught.value.code == "queue_full" and caught.value.headers["Retry-After"]
        waiting.cancel()

    asyncio.run(run())


def test_newer_completion_supersedes_a_queued_one() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler()
        await registry.refresh()
        holder = await scheduler.acquire(Ticket("m", "completion", "dev", document="a.py"))
        older = asyncio.create_task(
            scheduler.acquire(Ticket("m", "completion", "dev", document="b.py"))
        )
        await asyncio.sleep(0.01)
        newer = asyncio.create_task(
            scheduler.acquire(Ticket("m", "completion", "dev", document="b.py"))
        )
        await asyncio.sleep(0.01)
        with pytest.raises(Superseded):
            await older
        holder.release()
        (await newer).release()
        assert scheduler.queued() == 0

    asyncio.run(run())


def test_supersession_cancels_a_running_completion() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(target=4)
        await registry.refresh()
        cancelled: list[str] = []
        first = await scheduler.acquire(Ticket("m", "completion", "dev", document="x.py"))
        first.ticket.on_cancel = cancelled.append
        second = await scheduler.acquire(Ticket("m", "completion", "dev", document="x.py"))
        assert cancelled == ["superseded"]
        # Another developer's same file, or another file, is left alone.
        other = await scheduler.acquire(Ticket("m", "completion", "someone", document="x.py"))
        assert cancelled == ["superseded"]
        for lease in (first, second, other):
            lease.release()

    asyncio.run(run())


def test_queue_wait_times_out_with_503() -> None:
    async def run() -> None:
        scheduler, registry = _scheduler(queue_timeout_s=0.05)
        await registry.refresh()
        await scheduler.acquire(Ticket("m", "completion", "a"))
        with pytest.raises(ServiceUnavailableError) as caught:
            await scheduler.acquire(Ticket("m", "completion", "b"))
        assert caught.value.code == "queue_timeout"
        assert scheduler.queued() == 0

    asyncio.run(run())


# --------------------------------------------------------------------------- audit


def test_audit_lines_rotate_and_never_carry_text_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path), max_bytes=4096, backup_count=2))
    for index in range(200):
        log.write({"request_id": f"r{index}", "prompt": log.text_field("secret code")})
    log.close()
    current = [json.loads(line) for line in path.read_text().splitlines()]
    rotated = [json.loads(line) for line in (tmp_path / "audit.jsonl.1").read_text().splitlines()]
    assert current and rotated
    assert current[-1]["request_id"] == "r199"
    assert all(line["prompt"] is None for line in current + rotated)
    assert not (tmp_path / "audit.jsonl.3").exists()
    hashed = AuditLog(AuditConfig(file=None, prompts="hash"))
    assert (
        hashed.text_field("secret code")
        == "sha256:" + __import__("hashlib").sha256(b"secret code").hexdigest()
    )


def test_inflight_target_adapts_to_engine_load() -> None:
    from serving.engines.stats import EngineStats

    class Stats:
        stats: ClassVar[dict[str, EngineStats]] = {}

    async def run() -> list[int]:
        scheduler, registry = _scheduler(target=4)
        scheduler.config.adaptive = True
        scheduler.stats = Stats()  # type: ignore[assignment]
        await registry.refresh()
        seen = []
        Stats.stats["r-0"] = EngineStats(waiting=3)  # the engine queues: over-full
        scheduler._adapt()
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        leases = [await scheduler.acquire(Ticket("m", "completion", str(i))) for i in range(2)]
        Stats.stats["r-0"] = EngineStats(waiting=0, kv_cache_usage=0.2)  # full, and keeping up
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        Stats.stats["r-0"] = EngineStats(kv_cache_usage=0.99)  # out of KV cache
        scheduler._adapt()
        seen.append(scheduler.target("r-0"))
        for lease in leases:
            lease.release()
        return seen

    assert asyncio.run(run()) == [2, 3, 2]
