"""What the gateway adds on one real engine (the demo model), a short run."""

from __future__ import annotations

from pathlib import Path

from tests.support.benchmarks import report, run_benchmark
from tests.support.stack import DEMO_MODEL, SeedServeProcess


def test_overhead_against_one_engine(demo_stack: SeedServeProcess, tmp_path: Path) -> None:
    run_benchmark(
        "benchmarks.overhead",
        [
            "engine",
            "--gateway",
            demo_stack.base_url,
            "--key",
            demo_stack.api_key,
            "--model",
            DEMO_MODEL,
            "--requests",
            "4",
            "--max-tokens",
            "8",
            "--prompt-chars",
            "400",
            "--concurrency",
            "2",
            "--block-s",
            "3",
            "--out",
            str(tmp_path),
        ],
        home=demo_stack.home,
    )
    data = report(tmp_path, "overhead-engine")
    assert data["ttft_ms"]["direct"]["n"] == 4 and data["ttft_ms"]["gateway"]["n"] == 4
    # min_tokens = max_tokens at temperature 0: both paths stream every token as its own event.
    assert data["pairs_with_same_event_count"] == 4
    assert data["throughput_ratio"] > 0
