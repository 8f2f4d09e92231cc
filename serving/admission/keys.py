"""API keys and tenants: the keys file (hashes only), and checking a presented key.

A secret looks like ``sk-seed-<key id>-<43 random characters>``. The file keeps
its SHA-256 and never the secret; the key id inside the secret finds the
record, and the digests are compared in constant time. Secrets are 256-bit
random, so a fast hash is enough (nothing to brute-force).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.adapters import ADAPTER_NAME_PATTERN
from serving.config import LimitsConfig, check_cidrs
from serving.errors import ConfigError

SECRET_PREFIX = "sk-seed-"
_SECRET = re.compile(r"^sk-seed-(?P<key_id>[a-f0-9]{12})-(?P<random>[A-Za-z0-9_-]{43})$")
Role = Literal["user", "admin"]


class TenantRecord(LimitsConfig):
    allowed_cidrs: list[str] = Field(
        default_factory=list, description="Client networks allowed (empty: any)."
    )
    adapter: str | None = Field(
        default=None,
        pattern=ADAPTER_NAME_PATTERN,
        description="Pins the tenant's team adapter, applied when its keys ask for the base "
        "model (wins over the default published in the adapter registry).",
    )
    training_data: Literal["off", "collect"] | None = Field(
        default=None,
        description="collect: keep accepted suggestions for the tenant's adapter training "
        "(null: adapters.training_data).",
    )

    _cidrs = field_validator("allowed_cidrs")(check_cidrs)


class KeyRecord(LimitsConfig):
    id: str = Field(pattern=r"^[a-f0-9]{12}$")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str = Field(min_length=1, max_length=128)
    # Whose key it is (a person's sign-in name, or a service): usage records
    # count per owner; keys without one count under their name.
    owner: str | None = Field(default=None, min_length=1, max_length=256)
    role: Role = "user"
    created: dt.datetime
    expires: dt.datetime | None = None
    revoked: bool = False
    allowed_cidrs: list[str] = Field(default_factory=list)

    _cidrs = field_validator("allowed_cidrs")(check_cidrs)

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and now >= self.expires


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    tenants: dict[str, TenantRecord] = Field(default_factory=dict)
    keys: list[KeyRecord] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and its tenant (limits already merged)."""

    key: KeyRecord
    tenant_name: str
    tenant: TenantRecord

    @property
    def user(self) -> str:
        """Who usage is counted for: the key's owner, else its name."""
        return self.key.owner or self.key.name


_LIMIT_FIELDS = tuple(LimitsConfig.model_fields)


def person_principal(
    *,
    subject: str,
    user: str,
    tenant: str,
    role: Role,
    tenant_record: TenantRecord,
    created: dt.datetime,
    expires: dt.datetime,
    via: str,
) -> Principal:
    """A caller known by a signed token or console session, not an API key:
    a key record of its own (no secret: its digest matches nothing), so
    quotas, audit and usage treat it as they treat keys. The same ``subject``
    is the same record id (its rate limits follow it across tokens)."""
    record = KeyRecord.model_construct(
        id=hashlib.sha256(subject.encode()).hexdigest()[:12],
        sha256="0" * 64,
        tenant=tenant,
        name=f"{via}:{user}"[:128],
        owner=user[:256],
        role=role,
        created=created,
        expires=expires,
        revoked=False,
        allowed_cidrs=[],
        **dict.fromkeys(_LIMIT_FIELDS),
    )
    return Principal(key=record, tenant_name=tenant, tenant=tenant_record)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """(key id, secret)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{SECRET_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def load_keys_file(path: Path) -> KeysFile:
    """Parse and validate; raises ConfigError naming the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return KeysFile()
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the keys file: {exc}") from None
    try:
        return KeysFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(str(path), f"{where}: {first['msg']}") from None


def save_keys_file(path: Path, keys: KeysFile) -> None:
    """Atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = keys.model_dump(mode="json", exclude_none=True)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[None]:
    """One writer of the keys file at a time (the CLI, and gateways creating
    self-service keys): an exclusive lock on a file beside it around every
    read-modify-write, so no edit is lost to a concurrent one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_key(
    path: Path,
    *,
    tenant: str,
    name: str,
    role: Role = "user",
    owner: str | None = None,
    expires: dt.datetime | None = None,
    limits: dict[str, Any] | None = None,
) -> tuple[KeyRecord, str]:
    """Add a key to the file; return its record and the secret (shown once)."""
    with _editing(path):
        return _create_key(path, tenant, name, role, owner, expires, limits or {})


def _create_key(
    path: Path,
    tenant: str,
    name: str,
    role: Role,
    owner: str | None,
    expires: dt.datetime | None,
    limits: dict[str, Any],
) -> tuple[KeyRecord, str]:
    keys = load_keys_file(path)
    key_id, secret = new_secret()
    record = KeyRecord(
        id=key_id,
        sha256=digest(secret),
        tenant=tenant,
        name=name,
        owner=owner,
        role=role,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0),
        expires=expires,
        **limits,
    )
    keys.keys.append(record)
    keys.tenants.setdefault(tenant, TenantRecord())
    save_keys_file(path, keys)
    return record, secret


def update_tenant(path: Path, tenant: str, **changes: Any) -> TenantRecord:
    """Set fields of a tenant's record (limits, ``adapter``, ``training_data``;
    None clears one). Gateways pick the change up with the keys file."""
    with _editing(path):
        return _update_tenant(path, tenant, changes)


def _update_tenant(path: Path, tenant: str, changes: dict[str, Any]) -> TenantRecord:
    keys = load_keys_file(path)
    current = keys.tenants.get(tenant, TenantRecord())
    values = {**current.model_dump(exclude_none=True), **changes}
    try:
        record = TenantRecord.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"tenants.{tenant}.{where}", first["msg"]) from None
    keys.tenants[tenant] = record
    save_keys_file(path, keys)
    return record


def rotate_key(path: Path, key_id: str, *, expires: dt.datetime | None) -> tuple[KeyRecord, str]:
    """A new secret for the key's owner, name, role and limits; the old key is
    revoked in the same write. The new record and its secret (shown once)."""
    with _editing(path):
        keys = load_keys_file(path)
        old = next((record for record in keys.keys if record.id == key_id), None)
        if old is None:
            raise ConfigError("key", f"no key with id {key_id!r} in {path}")
        key_id, secret = new_secret()
        record = old.model_copy(
            update={
                "id": key_id,
                "sha256": digest(secret),
                "created": dt.datetime.now(dt.UTC).replace(microsecond=0),
                "expires": expires,
                "revoked": False,
            }
        )
        old.revoked = True
        keys.keys.append(record)
        save_keys_file(path, keys)
        return record, secret


def revoke_key(path: Path, key_id: str) -> KeyRecord:
    with _editing(path):
        keys = load_keys_file(path)
        for record in keys.keys:
            if record.id == key_id:
                record.revoked = True
                save_keys_file(path, keys)
                return record
    raise ConfigError("key", f"no key with id {key_id!r} in {path}")


class KeyStore:
    """The keys the gateway accepts (one immutable snapshot, swapped on reload)."""

    def __init__(self, keys: KeysFile) -> None:
        self.file = keys
        self._by_id = {record.id: record for record in keys.keys}

    def authenticate(self, presented: str, now: dt.datetime | None = None) -> Principal | None:
        """The principal of a valid, unexpired, unrevoked key; None otherwise."""
        match = _SECRET.match(presented)
        # Compare against a record's digest even for malformed or unknown keys,
        # so the time taken says nothing about which part was wrong.
        record = self._by_id.get(match.group("key_id")) if match else None
        expected = record.sha256 if record is not None else "0" * 64
        valid = hmac.compare_digest(digest(presented), expected)
        if record is None or not valid or record.revoked:
            return None
        if record.expired(now or dt.datetime.now(dt.UTC)):
            return None
        tenant = self.file.tenants.get(record.tenant, TenantRecord())
        return Principal(key=record, tenant_name=record.tenant, tenant=tenant)


DEMO_TENANT = "demo"


def ensure_demo_key(keys_path: Path, secret_path: Path) -> str:
    """The demo key's secret: reused while it still works, else a new one is
    created for tenant ``demo`` and written to ``secret_path`` (mode 0600)."""
    if secret_path.is_file():
        secret = secret_path.read_text(encoding="utf-8").strip()
        principal = KeyStore(load_keys_file(keys_path)).authenticate(secret)
        if principal is not None:
            return secret
    _, secret = create_key(keys_path, tenant=DEMO_TENANT, name="demo (make run)")
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.chmod(secret_path, 0o600)
    return secret
