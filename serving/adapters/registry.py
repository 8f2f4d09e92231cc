"""The adapter registry: one YAML file (on the shared adapter volume when
several gateways run) that ``seed-serve adapters`` and the admin API edit and
every gateway reloads when it changes.

An adapter is a peft LoRA folder (``adapter_config.json`` + weights) under one
of ``adapters.roots``; anything else (a path outside the roots, also through a
symbolic link, a folder without a config, a rank above the group's
``max_lora_rank``) is refused when it is added, and again by the replica
before it asks vLLM to load it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ConfigError

ADAPTER_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterRefused(ValueError):
    """An adapter that must not be registered or loaded, and why."""


class AdapterRecord(BaseModel):
    """One registered adapter."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME_PATTERN, description="Unique; `<base>:<name>` ids it.")
    base_model: str = Field(min_length=1, description="Served name of the model it adapts.")
    path: str = Field(min_length=1, description="The adapter folder (absolute).")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The team that owns it.")
    created: dt.datetime
    rank: int = Field(ge=1, description="LoRA rank (from adapter_config.json).")
    scores: dict[str, float] = Field(
        default_factory=dict, description="Evaluation: base vs adapter on held-out examples."
    )
    description: str = Field(default="", max_length=500)


class AdapterRegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    adapters: list[AdapterRecord] = Field(default_factory=list)
    # tenant -> its published adapter (what `adapters train` publishes and
    # `--default` sets; the registry lives on the shared volume, which every
    # gateway can write, unlike a keys file mounted from a Secret).
    defaults: dict[str, str] = Field(default_factory=dict)

    def get(self, name: str) -> AdapterRecord | None:
        return next((a for a in self.adapters if a.name == name), None)


@dataclass(frozen=True)
class AdapterFolder:
    """What an adapter folder says about itself."""

    path: Path  # resolved
    rank: int


def _inside(path: Path, roots: list[str]) -> bool:
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if path == real_root or real_root in path.parents:
            return True
    return False


def check_adapter_folder(
    path: str | Path, roots: list[str], *, max_rank: int | None = None
) -> AdapterFolder:
    """The adapter folder at ``path``, checked: inside a root (symbolic links
    resolved first), a readable peft LoRA config, weights present, rank
    within ``max_rank``. Raises AdapterRefused naming the problem."""
    given = Path(path).expanduser()
    if not given.is_absolute():
        raise AdapterRefused(f"adapter path {str(path)!r} must be absolute")
    real = Path(os.path.realpath(given))
    if not _inside(real, roots):
        raise AdapterRefused(
            f"adapter path {str(path)!r} is outside the configured adapter roots "
            f"(adapters.roots: {', '.join(roots) or 'none'})"
        )
    config_file = real / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterRefused(
            f"{str(path)!r} has no adapter_config.json (not a peft adapter)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AdapterRefused(f"{config_file} cannot be read: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterRefused(f"{config_file} does not describe a LoRA adapter (peft_type LORA)")
    if not any((real / name).is_file() for name in WEIGHT_FILES):
        raise AdapterRefused(f"{str(path)!r} has no weights ({' or '.join(WEIGHT_FILES)})")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRefused(f"{config_file}: 'r' (the LoRA rank) must be a positive integer")
    if max_rank is not None and rank > max_rank:
        raise AdapterRefused(
            f"adapter rank {rank} is above the engines' max_lora_rank {max_rank} "
            "(replica_groups[].lora.max_lora_rank)"
        )
    return AdapterFolder(path=real, rank=rank)


def load_registry(path: Path) -> AdapterRegistryFile:
    """Parse and validate; a missing file is an empty registry."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return AdapterRegistryFile()
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the adapter registry: {exc}") from None
    try:
        registry = AdapterRegistryFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(str(path), f"{where}: {first['msg']}") from None
    names = [a.name for a in registry.adapters]
    if len(names) != len(set(names)):
        raise ConfigError(str(path), "an adapter name is registered twice")
    return registry


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One editor at a time (several gateways' admin APIs, the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save(path: Path, registry: AdapterRegistryFile) -> None:
    data = registry.model_dump(mode="json")
    fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)  # readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_adapter(
    registry_path: Path,
    *,
    name: str,
    base_model: str,
    path: str | Path,
    tenant: str,
    roots: list[str],
    max_rank: int | None = None,
    scores: dict[str, float] | None = None,
    description: str = "",
) -> AdapterRecord:
    """Register an adapter (checked: see ``check_adapter_folder``)."""
    folder = check_adapter_folder(path, roots, max_rank=max_rank)
    try:
        record = AdapterRecord(
            name=name,
            base_model=base_model,
            path=str(folder.path),
            tenant=tenant,
            created=dt.datetime.now(dt.UTC).replace(microsecond=0),
            rank=folder.rank,
            scores=scores or {},
            description=description,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AdapterRefused(f"{first['loc'][0]}: {first['msg']}") from None
    with _locked(registry_path):
        registry = load_registry(registry_path)
        if registry.get(name) is not None:
            raise AdapterRefused(f"an adapter named {name!r} is already registered")
        registry.adapters.append(record)
        _save(registry_path, registry)
    return record


def update_adapter(registry_path: Path, name: str, **changes: Any) -> AdapterRecord:
    """Change fields of a registered adapter (its scores, its description)."""
    with _locked(registry_path):
        registry = load_registry(registry_path)
        record = registry.get(name)
        if record is None:
            raise KeyError(name)
        updated = AdapterRecord.model_validate({**record.model_dump(), **changes})
        registry.adapters[registry.adapters.index(record)] = updated
        _save(registry_path, registry)
    return updated


def remove_adapter(registry_path: Path, name: str) -> AdapterRecord:
    """Unregister (the files stay; a tenant it was the default of falls back
    to the base model); raises KeyError for an unknown name."""
    with _locked(registry_path):
        registry = load_registry(registry_path)
        record = registry.get(name)
        if record is None:
            raise KeyError(name)
        registry.adapters.remove(record)
        registry.defaults = {t: a for t, a in registry.defaults.items() if a != name}
        _save(registry_path, registry)
    return record


def set_default(registry_path: Path, tenant: str, name: str | None) -> None:
    """Make ``name`` the tenant's adapter (None: the base model again)."""
    with _locked(registry_path):
        registry = load_registry(registry_path)
        if name is None:
            registry.defaults.pop(tenant, None)
        else:
            record = registry.get(name)
            if record is None or record.tenant != tenant:
                raise AdapterRefused(f"tenant {tenant!r} has no adapter named {name!r}")
            registry.defaults[tenant] = name
        _save(registry_path, registry)


class AdapterCatalog:
    """The gateway's view of the registry: reloaded when the file changes
    (checked by the caller's periodic task), answers who may use what."""

    def __init__(self, registry_path: Path) -> None:
        self.registry_path = registry_path
        self._stamp: tuple[int, int] | None = None
        self._by_name: dict[str, AdapterRecord] = {}
        self._defaults: dict[str, str] = {}

    def reload(self) -> bool:
        """Re-read the file if it changed; True when it did. A bad file keeps
        the last good view (and raises ConfigError for the caller to log)."""
        try:
            stat = self.registry_path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        registry = load_registry(self.registry_path)
        self._by_name = {a.name: a for a in registry.adapters}
        self._defaults = dict(registry.defaults)
        self._stamp = stamp
        return True

    def default_of(self, tenant: str | None) -> str | None:
        """The adapter published as ``tenant``'s default, if any."""
        return self._defaults.get(tenant) if tenant is not None else None

    def get(self, name: str) -> AdapterRecord | None:
        return self._by_name.get(name)

    def all(self) -> list[AdapterRecord]:
        return list(self._by_name.values())

    def of_tenant(self, tenant: str) -> list[AdapterRecord]:
        return [a for a in self._by_name.values() if a.tenant == tenant]

    def usable(self, name: str, *, tenant: str | None, base_model: str) -> AdapterRecord | None:
        """The adapter ``name`` of ``base_model`` if ``tenant`` owns it (None
        otherwise, for unknown and foreign adapters alike)."""
        record = self._by_name.get(name)
        if record is None or record.base_model != base_model or record.tenant != tenant:
            return None
        return record
