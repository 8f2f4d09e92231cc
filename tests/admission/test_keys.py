"""API keys and the keys file, credentials, allow-lists and hot reload."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import stat
from pathlib import Path

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
from serving.config import AuthConfig
from serving.errors import AuthenticationError, PermissionDeniedError
from serving.observability.metrics import GatewayMetrics


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


def _create_many(path: str, tenant: str, count: int) -> None:
    for index in range(count):
        create_key(Path(path), tenant=tenant, name=f"k{index}", owner=f"{tenant}@corp")


def test_concurrent_writers_lose_no_key(tmp_path: Path) -> None:
    """The CLI and gateways creating self-service keys edit one file: each
    read-modify-write holds the file's lock, so none overwrites another's key."""
    path = tmp_path / "keys.yaml"
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_create_many, args=(str(path), f"t{n}", 15)) for n in range(3)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    keys = load_keys_file(path)
    assert len(keys.keys) == 45 and len({k.id for k in keys.keys}) == 45
    assert set(keys.tenants) == {"t0", "t1", "t2"}
    assert {k.owner for k in keys.keys} == {"t0@corp", "t1@corp", "t2@corp"}
