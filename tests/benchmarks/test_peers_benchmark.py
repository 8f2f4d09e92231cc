"""benchmarks/overhead peers: the capacity run per proxy, streamed and plain.
Here with Seed Serve's gateway only (the peers' virtual environments are made
from the package index by the benchmark itself, not by the test suite), with
its keys, quota and audit log on; the side-by-side report from known figures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.overhead.peers import peers_markdown
from tests.support.benchmarks import report, run_benchmark


def test_the_gateway_with_keys_quotas_and_audit_on_in_the_peers_run(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    run_benchmark(
        "benchmarks.overhead",
        ["peers", "--peers", "seed-serve", "--rates", "50", "--seconds", "2", "--all-rates",
         "--out", str(tmp_path)],
    )  # fmt: skip
    data = report(tmp_path, "overhead-peers")
    assert [(run["proxy"], run["stream"]) for run in data["runs"]] == [
        ("seed-serve", True), ("seed-serve", False),
    ]  # fmt: skip
    for run in data["runs"]:
        (level,) = run["levels"]
        # Every request carried the benchmark's key: a refused one would count as an error.
        assert level["gateway_errors"] == 0 and level["gateway_ms"]["n"] > 50
        assert level["gateway_cpu_ms_per_request"] > 0
    plot = tmp_path / "overhead-peers.png"
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 10_000


def _run(proxy: str, stream: bool, cpu_ms: list[float]) -> dict[str, object]:
    levels = [
        {"offered_rps": 100.0 * (i + 1), "gateway_rps": 100.0 * (i + 1), "added_p50_ms": 1.0,
         "added_p99_ms": 2.0, "gateway_errors": 0, "gateway_cpu_ms_per_request": ms}
        for i, ms in enumerate(cpu_ms)
    ]  # fmt: skip
    return {"proxy": proxy, "version": "v", "stream": stream, "levels": levels,
            "sustained_rps_per_core": 100.0 * len(cpu_ms), "cpu_bound_rps_per_core": 1000}  # fmt: skip


def test_the_report_sets_the_gateway_against_vllm_router() -> None:
    result = {
        "proxy_cpu": 1, "load_cpus": 1, "tokens_per_response": 8, "slo_added_p99_ms": 5.0,
        "runs": [_run("seed-serve", True, [0.9, 0.8, 0.7]), _run("vllm-router", True, [0.3, 0.4]),
                 _run("seed-serve", False, [0.6]), _run("litellm", False, [80.0])],
    }  # fmt: skip
    text = peers_markdown(result)
    assert "streamed: Seed Serve / vllm-router CPU per request = 2.00x" in text  # 0.8 / 0.4
    assert "plain: Seed Serve / vllm-router" not in text  # no router run in that mode
    assert "| litellm | v | plain | 100 | 80 | 1000 |" in text
