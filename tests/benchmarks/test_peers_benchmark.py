"""benchmarks/overhead peers: the capacity run per proxy, streamed and plain.
Here with Seed Serve's gateway only (the peers' virtual environments are made
from the package index by the benchmark itself, not by the test suite), with
its keys, quota and audit log on; the side-by-side report from known figures."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from benchmarks.common.http import wait_until_up
from benchmarks.overhead.levels import start_module
from benchmarks.overhead.peers import peers_markdown
from tests.support.benchmarks import report, run_benchmark
from tests.support.stack import free_port


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
                 _run("floor", True, [0.25, 0.3]),
                 _run("seed-serve", False, [0.6]), _run("litellm", False, [80.0])],
    }  # fmt: skip
    text = peers_markdown(result)
    assert "streamed: Seed Serve / vllm-router CPU per request = 2.00x" in text  # 0.8 / 0.4
    # The floor's median (0.3) split off the gateway's (0.8); none in plain mode.
    assert (
        "- streamed: the floor (the gateway's HTTP server and engine client alone) 0.3 ms "
        "per request; the gateway's own behaviour 0.5 ms" in text
    )
    assert "plain: the floor" not in text
    assert "plain: Seed Serve / vllm-router" not in text  # no router run in that mode
    assert "| litellm | v | plain | 100 | 80 | 1000 |" in text


def test_the_floor_relays_the_upstreams_answers_as_they_are() -> None:
    """The floor instrument (the gateway's server and engine client alone)
    passes on exactly what the upstream says, streamed and not."""
    up_port, floor_port = free_port(), free_port()
    upstream = start_module(
        "benchmarks.overhead.instant_upstream", "--port", str(up_port), "--tokens", "3"
    )
    floor = start_module(
        "benchmarks.overhead.floor_relay", "--port", str(floor_port),
        "--upstream", f"http://127.0.0.1:{up_port}",
    )  # fmt: skip
    try:
        asyncio.run(wait_until_up(f"http://127.0.0.1:{up_port}/health"))
        asyncio.run(wait_until_up(f"http://127.0.0.1:{floor_port}/health", process=floor))
        for stream in (False, True):
            body = {"model": "instant", "prompt": "x", "max_tokens": 3, "stream": stream}
            direct = httpx.post(f"http://127.0.0.1:{up_port}/v1/completions", json=body)
            relayed = httpx.post(f"http://127.0.0.1:{floor_port}/v1/completions", json=body)
            assert relayed.status_code == direct.status_code == 200
            # The instant upstream says the same bytes every time.
            assert relayed.content == direct.content and b'"text":" x' in direct.content
            if stream:
                assert relayed.content.endswith(b"data: [DONE]\n\n")
                assert relayed.headers["content-type"] == "text/event-stream"
    finally:
        for process in (floor, upstream):
            process.terminate()
            process.wait(timeout=15)
