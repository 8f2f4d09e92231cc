"""The audit log: one JSON line per request, whatever its outcome.

Each line is written with a single ``os.write`` on an ``O_APPEND`` descriptor
as soon as the request ends: it is in the file (the kernel's page cache) before
anything else happens, so a crash of the gateway loses no line it answered,
and concurrent writers never interleave inside a line. The file rotates by
size. Prompt and completion text appear only if the operator asks (then
optionally as SHA-256 hashes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from serving.config import AuditConfig

logger = logging.getLogger("seed_serve.audit")


class AuditLog:
    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.path = Path(config.file).expanduser() if config.file else None
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()  # rotation is rare; writes are single syscalls
        self.write_errors = 0
        if self.path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        assert self.path is not None and self._fd is not None
        os.close(self._fd)
        count = self.config.backup_count
        if count == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(count - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    @property
    def enabled(self) -> bool:
        """Whether lines go anywhere (else callers need not build them)."""
        return self._fd is not None or self.config.stdout

    def text_field(self, text: str | None) -> str | None:
        """What the log keeps of a prompt or completion."""
        if text is None or self.config.prompts == "off":
            return None
        if self.config.prompts == "hash":
            return "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        return text

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        if self.config.stdout:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
        if self._fd is None:
            return
        try:
            with self._lock:
                if self._size + len(line) > self.config.max_bytes and self._size > 0:
                    self._rotate()
                assert self._fd is not None
                os.write(self._fd, line)
                self._size += len(line)
        except OSError as exc:
            self.write_errors += 1
            logger.error("audit log write failed: %s", exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
