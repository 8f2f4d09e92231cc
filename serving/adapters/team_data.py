"""The teams' training data: accepted suggestions of tenants that opted in
(``training_data: collect``), each with the context it was made for.

One folder per tenant under ``adapters.data_dir``, one JSON-lines file per
UTC day (retention drops whole days). Appends take an exclusive ``flock`` on
the day's file and write each line in one ``write`` on an ``O_APPEND``
descriptor, so several gateways sharing the folder (a shared volume) never
interleave or tear lines. Nothing is written for a tenant that did not opt in:
the caller asks ``wants(tenant)`` first, and no code path writes otherwise.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DAY_FILE = re.compile(r"^accepted-(\d{4}-\d{2}-\d{2})\.jsonl$")


@dataclass(frozen=True)
class TrainingExample:
    """One accepted suggestion and what the model saw when it made it."""

    completion_id: str
    time: str  # ISO 8601, UTC
    tenant: str
    model: str
    adapter: str | None
    language: str
    path: str | None
    prefix: str  # as the model saw it (after fitting to the context window)
    suffix: str
    shown: str  # the suggestion as the IDE showed it
    accepted_chars: int  # how much of it the developer kept
    context: str = ""  # other files of the repository, as the model saw them
    # Indentation typed before the cursor but held back from the prompt (the
    # model wrote it, then the gateway dropped it): part of what it must write.
    healed: str = ""

    @property
    def accepted(self) -> str:
        return self.shown[: self.accepted_chars]

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrainingExample:
        return cls(**data)  # type: ignore[arg-type]


def _tenant_dir(root: Path, tenant: str) -> Path:
    if not _TENANT.fullmatch(tenant) or tenant in {".", ".."}:
        raise ValueError(f"{tenant!r} is not a tenant name")
    return root / tenant


class TeamDataStore:
    def __init__(self, data_dir: str | Path, *, retention_days: int | None) -> None:
        self.root = Path(data_dir).expanduser()
        self.retention_days = retention_days

    def append(self, example: TrainingExample, *, now: dt.datetime | None = None) -> Path:
        """Keep one example (a blocking call: run it off the event loop)."""
        day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
        folder = _tenant_dir(self.root, example.tenant)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"accepted-{day}.jsonl"
        line = (json.dumps(asdict(example), ensure_ascii=False) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = 0
            while written < len(line):  # one lock, the whole line
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)  # closing releases the lock
        return path

    def _day_files(self, tenant: str) -> list[tuple[dt.date, Path]]:
        folder = _tenant_dir(self.root, tenant)
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _DAY_FILE.match(path.name)
            if match:
                found.append((dt.date.fromisoformat(match.group(1)), path))
        return sorted(found)

    def examples(self, tenant: str) -> Iterator[TrainingExample]:
        """Every kept example of ``tenant``, oldest first (torn lines skipped)."""
        for _, path in self._day_files(tenant):
            with open(path, encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH)
                lines = handle.readlines()
            for line in lines:
                try:
                    yield TrainingExample.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    continue

    def count(self, tenant: str) -> int:
        return sum(1 for _ in self.examples(tenant))

    def tenants(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _TENANT.match(p.name))

    def delete(self, tenant: str) -> int:
        """Remove everything kept for ``tenant``; the number of examples removed."""
        removed = self.count(tenant)
        folder = _tenant_dir(self.root, tenant)
        if folder.exists():
            shutil.rmtree(folder)
        return removed

    def apply_retention(self, *, today: dt.date | None = None) -> int:
        """Drop the days older than ``retention_days``; the number of files removed."""
        if self.retention_days is None:
            return 0
        cutoff = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=self.retention_days)
        removed = 0
        for tenant in self.tenants():
            for day, path in self._day_files(tenant):
                if day < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed
