"""Rate limits per key and tenant: buckets, concurrency, defaults (in memory;
the Redis store runs end to end in tests/e2e/test_multi_tenant.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.admission.keys import KeyStore, create_key, load_keys_file
from serving.admission.quotas import MemoryQuotaStore, Quotas
from serving.config import QuotaConfig
from serving.errors import RateLimitError
from serving.observability.metrics import GatewayMetrics


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


def test_a_reloaded_keys_file_changes_the_limits_at_once(tmp_path: Path) -> None:
    """The merged limits are kept per key only while its records are the same:
    a reload (new records, the same key id) is read at once."""
    path = tmp_path / "keys.yaml"
    _, secret = create_key(path, tenant="t", name="a", limits={"max_tokens": 64})
    quotas = Quotas(QuotaConfig(), GatewayMetrics(), MemoryQuotaStore())
    first = KeyStore(load_keys_file(path)).authenticate(secret)
    assert first is not None and quotas.request_caps(first).max_tokens == 64
    assert quotas.scopes(first) is quotas.scopes(first)  # merged once
    text = path.read_text().replace("max_tokens: 64", "max_tokens: 16")
    assert text != path.read_text()
    path.write_text(text)
    reloaded = KeyStore(load_keys_file(path)).authenticate(secret)
    assert reloaded is not None and reloaded.key.id == first.key.id
    assert quotas.request_caps(reloaded).max_tokens == 16
