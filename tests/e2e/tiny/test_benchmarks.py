"""The load, routing and quality benchmarks, short runs against the tiny stack."""

from __future__ import annotations

from pathlib import Path

from tests.support.benchmarks import report, run_benchmark
from tests.support.stack import TINY_MODEL, SeedServeProcess, admin_key


def test_load_benchmark_against_the_gateway(tiny_stack: SeedServeProcess, tmp_path: Path) -> None:
    admin = admin_key(tiny_stack)
    output = run_benchmark(
        "benchmarks.load",
        [
            "--url",
            tiny_stack.base_url + "/v1",
            "--key",
            tiny_stack.api_key,
            "--admin-key",
            admin,
            "--model",
            TINY_MODEL,
            "--developers",
            "1,2",
            "--rate",
            "2",
            "--duration",
            "4",
            "--prefix-chars",
            "300-1200",
            "--mix",
            "completion=0.9,repair=0.1,tests=0.0",
            "--out",
            str(tmp_path),
        ],
    )
    assert "TTFT p50" in output
    data = report(tmp_path, "load")
    assert [level["developers"] for level in data["levels"]] == [1, 2]
    completion = data["levels"][-1]["tasks"]["completion"]
    assert completion["ok"] > 0 and completion["ttft_ms"]["p50"] > 0
    assert completion["output_tokens_per_s"] > 0
    assert data["levels"][-1]["engine_generated_tokens"] > 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"latency_cdf.png", "latency_vs_load.png"}
    saved = (tmp_path / "load.json").read_text()
    assert tiny_stack.api_key not in saved and admin not in saved


def test_routing_benchmark(tiny_stack: SeedServeProcess, tmp_path: Path) -> None:
    run_benchmark(
        "benchmarks.routing",
        [
            "--key",
            tiny_stack.api_key,
            "--model",
            TINY_MODEL,
            "--duration",
            "3",
            "--developers",
            "2",
            "--prefix-chars",
            "1500",
            "--out",
            str(tmp_path),
        ],
        home=tiny_stack.home,
    )
    data = report(tmp_path, "routing")
    (level,) = data["levels"]
    policies = level["policies"]
    assert level["developers"] == 2
    assert set(policies) == {"round_robin", "least_loaded", "prefix_affinity", "kv_aware"}
    for entry in policies.values():
        assert entry["ok"] > 0 and entry["prefix_cache_hit_rate"] is not None
        assert entry["answers_per_s"] == round(entry["ok"] / 3, 2)
    # Round-robin spreads one developer's requests over both engines.
    assert all(q > 0 for q in policies["round_robin"]["per_replica_queries"].values())
    # kv_aware's gateway followed both engines' events and decided every request.
    kv = policies["kv_aware"]
    assert sum(kv["kv_decisions"].values()) >= kv["ok"]
    p50 = {policy: e["ttft_p50_vs_round_robin"] for policy, e in policies.items()}
    assert data["winner"] == min(p50, key=lambda policy: p50[policy])
    assert (tmp_path / "routing.png").read_bytes().startswith(b"\x89PNG")


def test_quality_benchmark(tiny_stack: SeedServeProcess, tmp_path: Path) -> None:
    run_benchmark(
        "benchmarks.quality",
        [
            "--url",
            tiny_stack.base_url + "/v1",
            "--key",
            tiny_stack.api_key,
            "--model",
            TINY_MODEL,
            "--limit",
            "2",
            "--repair-candidates",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    data = report(tmp_path, "quality")
    summary = data["summary"]
    assert summary["completion"]["n"] == 2 and 0 <= summary["completion"]["pass@1"] <= 1
    assert summary["repair"]["n"] >= 1 and summary["tests"]["n"] == 2
    assert data["errors"] == []
