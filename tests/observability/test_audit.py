"""The audit log file: rotation, and no prompt text unless asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from serving.config import AuditConfig
from serving.observability.audit import AuditLog


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
        hashed.text_field("secret code") == "sha256:" + hashlib.sha256(b"secret code").hexdigest()
    )
