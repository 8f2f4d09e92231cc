"""Routing gain: round-robin, least-loaded, prefix affinity and kv_aware (the
engines' own KV-cache events) side by side on the same engines, at each load.

    seed-serve up --replicas 2 --set 'replica_groups[0].kv_events=true' &
    python -m benchmarks.routing --key $KEY --model smollm2-135m-demo --developers 1,4

For each policy a gateway joins the running stack's Ray cluster (same engines,
its own port) and replays developer sessions: each developer edits a few
files, moving the cursor down a file, so successive completions share long
prefixes. Every policy and load gets its own files (no cache carried over).
Reports per load (developers at once) and policy: TTFT p50/p99, their ratios
to round-robin, throughput (answers/s) and the engines' prefix-cache hit rate
read from their metrics; the winner (lowest TTFT p50, on average over the
loads, relative to round-robin) and a PNG. kv_aware needs the stack's engines
to publish their events (``replica_groups[].kv_events: true``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress, summarize
from benchmarks.common.http import wait_until_up
from benchmarks.common.report import md_table, publish, results_dir, save_figure
from benchmarks.load.client import RequestRecord, Target
from benchmarks.load.workload import FimPrompt, SourceFile, default_source_tree, load_corpus
from serving.paths import run_state_file

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("round_robin", "least_loaded", "prefix_affinity", "kv_aware")


def engine_counters(replicas: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per replica: (prefix-cache hits, queries) from the engine's own /metrics."""
    import httpx

    counters = {}
    for replica in replicas:
        text = httpx.get(
            replica["url"] + "/metrics",
            headers={"Authorization": f"Bearer {replica['token']}"},
            timeout=10,
        ).text
        hits = queries = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
        counters[replica["replica_id"]] = (hits, queries)
    return counters


def start_gateway(
    policy: str, port: int, state: dict[str, Any], log: Path
) -> subprocess.Popen[bytes]:
    """A gateway with ``policy`` joined to the stack; its metrics on ``port`` + 1000
    (the benchmark reads them without an admin key)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "gateway",
            "--ray-address",
            state["ray_address"],
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--set",
            f"ray.namespace={state['namespace']}",
            "--set",
            f"ray.controller_name={state['controller_name']}",
            "--set",
            f"routing.policy={policy}",
            "--set",
            f"gateway.metrics_port={port + 1000}",
            # The stack's keys, so that the benchmark's key works on this gateway too.
            *(["--set", f"auth.keys_file={state['keys_file']}"] if state.get("keys_file") else []),
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "SEED_SERVE_AUTH__DEMO_KEY_FILE": ""},
    )


async def replay(
    args: argparse.Namespace, base_url: str, files: list[SourceFile], seed: int, developers: int
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    deadline = time.monotonic() + args.duration

    async def developer(index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(seed * 100 + index)
        target = Target(session, base_url + "/v1", model=args.model, key=args.key)
        mine = [
            files[(index * args.files_per_developer + k) % len(files)]
            for k in range(args.files_per_developer)
        ]
        cursors = {
            f.path: rng.randint(args.prefix_chars, max(args.prefix_chars, len(f.text) // 2))
            for f in mine
        }
        anchors = {path: max(0, c - args.prefix_chars) for path, c in cursors.items()}
        while time.monotonic() < deadline:
            source = mine[0] if rng.random() < 0.7 else rng.choice(mine)  # mostly one file
            cursor = cursors[source.path] = min(
                len(source.text) - 1, cursors[source.path] + rng.randint(5, 80)
            )
            cursor = source.text.rfind("\n", 0, cursor) + 1 or cursor
            # The prefix starts where the session started (an editor sends the file
            # from a stable point), so successive requests share it and grow it.
            prompt = FimPrompt(
                document=f"dev{index}/{source.path}",
                prefix=source.text[anchors[source.path] : cursor],
                suffix=source.text[cursor : cursor + 600],
                max_tokens=args.max_tokens,
            )
            record = RequestRecord(task="completion", started=time.monotonic())
            records.append(record)
            await target.completion(prompt, record)
            await asyncio.sleep(rng.uniform(0.05, 0.3))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(developer(i, session) for i in range(developers)))
    return records


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)


def _policy_result(
    records: list[RequestRecord],
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    policy: str,
    seconds: float,
) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    first_errors = sorted({r.error for r in records if r.error})[:3]
    if not ok:
        raise SystemExit(f"{policy}: every request failed, e.g. {first_errors[:1]}")
    hits = sum(after[k][0] - before[k][0] for k in after)
    queries = sum(after[k][1] - before[k][1] for k in after)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "ttft_ms": summarize([r.ttft for r in ok if r.ttft is not None]),
        "e2e_ms": summarize([r.e2e for r in ok]),
        "answers_per_s": round(len(ok) / seconds, 2),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "per_replica_queries": {k: after[k][1] - before[k][1] for k in after},
        "first_errors": first_errors,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.common.engines import running_replicas

    state = json.loads(run_state_file().read_text())
    replicas = [r for r in running_replicas() if r["model"] == args.model]
    if len(replicas) < 2:
        raise SystemExit(
            f"routing needs >= 2 ready replicas of {args.model} (found {len(replicas)})"
        )
    policies = args.policies.split(",")
    if "kv_aware" in policies and not all(r.get("kv_events") for r in replicas):
        raise SystemExit(
            "kv_aware needs the stack's engines to publish their KV-cache events: start it "
            "with replica_groups[].kv_events: true (or leave kv_aware out of --policies)"
        )
    loads = [int(n) for n in str(args.developers).split(",")]
    corpus = [
        f
        for f in load_corpus(default_source_tree(), seed=args.seed)
        if len(f.text) > 3 * args.prefix_chars
    ]
    random.Random(args.seed).shuffle(corpus)
    shares = [n * args.files_per_developer for n in loads]
    if len(corpus) < sum(shares) * len(policies):
        raise SystemExit("not enough long source files for disjoint sessions per policy and load")
    folder = results_dir(args.out, "routing")
    progress = Progress(len(policies) * len(loads), "policy x load")
    # Every policy's gateway starts up front, together (an idle gateway costs
    # the engines nothing); each is measured alone at each load.
    gateways = {
        policy: start_gateway(policy, args.port + n, state, folder / f"gateway-{policy}.log")
        for n, policy in enumerate(policies)
    }
    levels: list[dict[str, Any]] = [{"developers": n, "policies": {}} for n in loads]
    used = 0
    try:
        await asyncio.gather(
            *(
                wait_until_up(
                    f"http://127.0.0.1:{args.port + n}/ready",
                    ok=201,
                    timeout_s=180,
                    process=gateways[policy],
                )
                for n, policy in enumerate(policies)
            )
        )
        if "kv_aware" in policies:  # its gateway follows every engine's events first
            await _wait_kv_events_live(args.port + policies.index("kv_aware"), replicas)
        done = 0
        for level, share in zip(levels, shares, strict=True):
            for n, policy in enumerate(policies):
                before = engine_counters(replicas)
                decisions = await gateway_metric(args.port + n, "seed_serve_kv_routing_total")
                files = corpus[used : used + share]
                used += share
                records = await replay(
                    args, f"http://127.0.0.1:{args.port + n}", files, args.seed + used,
                    level["developers"],
                )  # fmt: skip
                after = engine_counters(replicas)
                entry = _policy_result(records, before, after, policy, args.duration)
                if policy == "kv_aware":  # how often it routed on a cached prefix
                    now = await gateway_metric(args.port + n, "seed_serve_kv_routing_total")
                    entry["kv_decisions"] = {k: v - decisions.get(k, 0.0) for k, v in now.items()}
                level["policies"][policy] = entry
                done += 1
                progress.update(
                    done,
                    f"{level['developers']} dev, {policy}: TTFT p50 {entry['ttft_ms']['p50']} ms",
                )
    finally:
        for process in gateways.values():
            _stop(process)
    progress.close()
    for level in levels:
        base = level["policies"].get("round_robin", {}).get("ttft_ms", {})
        for entry in level["policies"].values():
            for q in ("p50", "p99"):
                entry[f"ttft_{q}_vs_round_robin"] = (
                    round(entry["ttft_ms"][q] / base[q], 3)
                    if base.get(q) and entry["ttft_ms"][q]
                    else None
                )
    result: dict[str, Any] = {"replicas": len(replicas), "levels": levels}
    result["winner"] = winner(levels)
    return result


async def gateway_metric(port: int, name: str) -> dict[str, float]:
    """One metric of a benchmark gateway (its metrics port), by its first label's value."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{port + 1000}/metrics")).text
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


async def _wait_kv_events_live(
    port: int, replicas: list[dict[str, Any]], timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    wanted = {r["replica_id"] for r in replicas}
    while time.monotonic() < deadline:
        live = await gateway_metric(port, "seed_serve_replica_kv_events_live")
        if all(live.get(rid) == 1.0 for rid in wanted):
            return
        await asyncio.sleep(0.5)
    raise SystemExit("the kv_aware gateway did not follow every engine's KV-cache events in 60 s")


def winner(levels: list[dict[str, Any]]) -> str | None:
    """The policy with the lowest TTFT p50 relative to round-robin, on average
    (geometric) over the loads (the lowest TTFT p50 without a round-robin run)."""
    scores: dict[str, list[float]] = {}
    for level in levels:
        for policy, entry in level["policies"].items():
            ratio = entry.get("ttft_p50_vs_round_robin") or entry["ttft_ms"]["p50"]
            if ratio:
                scores.setdefault(policy, []).append(float(ratio))
    if not scores:
        return None
    return min(scores, key=lambda p: math.prod(scores[p]) ** (1 / len(scores[p])))


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    policies = list(levels[0]["policies"])
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / max(len(policies), 1)
    for i, policy in enumerate(policies):
        xs = [k + i * width for k in range(len(levels))]
        entries = [level["policies"][policy] for level in levels]
        axes[0].bar(xs, [e["ttft_ms"]["p50"] or 0 for e in entries], width, label=policy)
        axes[1].bar(xs, [e["ttft_ms"]["p99"] or 0 for e in entries], width, label=policy)
        axes[2].bar(xs, [e["prefix_cache_hit_rate"] or 0 for e in entries], width, label=policy)
    ticks = [k + width * (len(policies) - 1) / 2 for k in range(len(levels))]
    for axis, title in zip(
        axes, ("TTFT p50 (ms)", "TTFT p99 (ms)", "engines' prefix-cache hit rate"), strict=True
    ):
        axis.set_xticks(ticks, [f"{level['developers']} developers" for level in levels])
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"Routing policies on {result['replicas']} replicas (winner: {result['winner']})"
    )
    return save_figure(figure, path)


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        [
            level["developers"],
            policy,
            e["ok"],
            e["errors"],
            e["answers_per_s"],
            e["ttft_ms"]["p50"],
            e["ttft_ms"]["p99"],
            e["ttft_p50_vs_round_robin"],
            e["ttft_p99_vs_round_robin"],
            e["prefix_cache_hit_rate"],
        ]
        for level in result["levels"]
        for policy, e in level["policies"].items()
    ]
    kv_lines = [
        f"- {level['developers']} developer(s): kv_aware routed "
        + ", ".join(f"{int(v)} {k}" for k, v in sorted(e["kv_decisions"].items()) if v)
        for level in result["levels"]
        if (e := level["policies"].get("kv_aware")) and e.get("kv_decisions")
    ]
    kv_text = ("\n\nkv_aware's decisions:\n" + "\n".join(kv_lines) + "\n") if kv_lines else ""
    return (
        f"{result['replicas']} replicas of `{args.model}`, {args.files_per_developer} files per "
        f"developer, prefixes of {args.prefix_chars} characters, {args.duration:g} s per policy "
        f"and load. Winner (TTFT p50 vs round-robin, geometric mean over the loads): "
        f"**{result['winner']}**.\n\n"
        + md_table(
            [
                "developers",
                "policy",
                "ok",
                "errors",
                "answers/s",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "p50 / round-robin",
                "p99 / round-robin",
                "prefix-cache hit rate",
            ],
            rows,
        )
        + kv_text
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.routing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--key", required=True, help="a key of the running stack")
    parser.add_argument("--model", required=True)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--developers",
        default="1,4",
        help="developers at once, one load per value (a light and a near-saturating one)",
    )
    parser.add_argument("--files-per-developer", type=int, default=2)
    parser.add_argument("--prefix-chars", type=int, default=5000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per policy")
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = asyncio.run(run(args))
    folder = publish(
        "benchmarks.routing",
        "routing",
        argv,
        {args.key: "$KEY"},
        args.out,
        result,
        markdown(result, args),
    )
    print(f"plot: {plot(result, folder / 'routing.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
