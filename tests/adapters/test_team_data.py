"""The teams' training data: kept per tenant, appended by several gateways
at once without a torn line, exported, deleted, aged out."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest

from serving.adapters import TeamDataStore, TrainingExample


def example(i: int, tenant: str = "payments", text: str = "x") -> TrainingExample:
    return TrainingExample(
        completion_id=f"cmpl-{i}", time="2026-11-29T00:00:00Z", tenant=tenant, model="m",
        adapter=None, language="python", path="src/app.py", prefix=f"def f{i}(", suffix=")",
        shown=text, accepted_chars=len(text),
    )  # fmt: skip


def _append_many(root: str, worker: int) -> None:
    store = TeamDataStore(root, retention_days=None)
    big = "y" * 20_000  # far beyond one pipe buffer: one line must still never tear
    for i in range(50):
        store.append(example(worker * 1000 + i, text=big if i % 5 == 0 else f"w{worker}"))


def test_several_writers_never_tear_or_interleave_lines(tmp_path: Path) -> None:
    workers = [
        multiprocessing.get_context("fork").Process(target=_append_many, args=(str(tmp_path), w))
        for w in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    store = TeamDataStore(tmp_path, retention_days=None)
    kept = list(store.examples("payments"))
    assert len(kept) == 200
    assert len({e.completion_id for e in kept}) == 200
    lines = next((tmp_path / "payments").glob("*.jsonl")).read_text().splitlines()
    assert len(lines) == 200  # every line whole (a torn one would not parse)


def test_export_delete_and_retention(tmp_path: Path) -> None:
    store = TeamDataStore(tmp_path, retention_days=30)
    old = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    new = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    store.append(example(1), now=old)
    store.append(example(2), now=new)
    store.append(example(3, tenant="search"), now=new)
    assert [e.completion_id for e in store.examples("payments")] == ["cmpl-1", "cmpl-2"]
    assert store.apply_retention(today=dt.date(2026, 11, 29)) == 1
    assert [e.completion_id for e in store.examples("payments")] == ["cmpl-2"]
    assert store.delete("payments") == 1
    assert list(store.examples("payments")) == [] and not (tmp_path / "payments").exists()
    assert store.count("search") == 1  # another tenant's data untouched
    with pytest.raises(ValueError, match="not a tenant name"):
        store.append(example(4, tenant="../etc"))
