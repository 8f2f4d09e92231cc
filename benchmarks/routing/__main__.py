"""Routing gain: prefix affinity vs round-robin vs least-loaded on the same engines.

    seed-serve up --replicas 2 &           # or any stack with >= 2 replicas
    python -m benchmarks.routing --key $KEY --model smollm2-135m-demo --duration 60

For each policy a gateway joins the running stack's Ray cluster (same engines,
its own port) and replays developer sessions: each developer edits a few
files, moving the cursor down a file, so successive completions share long
prefixes. Every policy gets its own files (no cache carried over from the
previous policy). Reports TTFT p50/p99 per policy, their ratios to
round-robin, and the engines' prefix-cache hit rates read from their metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from benchmarks.common.report import md_table, publish, results_dir
from benchmarks.load.client import RequestRecord, Target
from benchmarks.load.workload import FimPrompt, SourceFile, default_source_tree, load_corpus
from serving.paths import run_state_file

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("round_robin", "least_loaded", "prefix_affinity")


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
            # The stack's keys, so that the benchmark's key works on this gateway too.
            *(["--set", f"auth.keys_file={state['keys_file']}"] if state.get("keys_file") else []),
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "SEED_SERVE_AUTH__DEMO_KEY_FILE": ""},
    )


async def replay(
    args: argparse.Namespace, base_url: str, files: list[SourceFile], seed: int
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
        await asyncio.gather(*(developer(i, session) for i in range(args.developers)))
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
    corpus = [
        f
        for f in load_corpus(default_source_tree(), seed=args.seed)
        if len(f.text) > 3 * args.prefix_chars
    ]
    random.Random(args.seed).shuffle(corpus)
    share = args.developers * args.files_per_developer
    policies = args.policies.split(",")
    if len(corpus) < share * len(policies):
        raise SystemExit("not enough long source files for disjoint sessions per policy")
    results: dict[str, Any] = {}
    folder = results_dir(args.out, "routing")
    progress = Progress(len(policies), "policies")
    # Every policy's gateway starts up front, together (an idle gateway costs
    # the engines nothing); each is measured alone, then stopped.
    gateways = {
        policy: start_gateway(policy, args.port + n, state, folder / f"gateway-{policy}.log")
        for n, policy in enumerate(policies)
    }
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
        for n, policy in enumerate(policies):
            before = engine_counters(replicas)
            files = corpus[n * share : (n + 1) * share]
            records = await replay(args, f"http://127.0.0.1:{args.port + n}", files, args.seed + n)
            after = engine_counters(replicas)
            _stop(gateways[policy])
            results[policy] = _policy_result(records, before, after, policy)
            progress.update(n + 1, f"{policy}: TTFT p50 {results[policy]['ttft_ms']['p50']} ms")
    finally:
        for process in gateways.values():
            _stop(process)
    progress.close()
    base = results.get("round_robin", {}).get("ttft_ms", {})
    for entry in results.values():
        for q in ("p50", "p99"):
            entry[f"ttft_{q}_vs_round_robin"] = (
                round(entry["ttft_ms"][q] / base[q], 3)
                if base.get(q) and entry["ttft_ms"][q]
                else None
            )
    return {"replicas": len(replicas), "policies": results}


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        [
            policy,
            e["ok"],
            e["errors"],
            e["ttft_ms"]["p50"],
            e["ttft_ms"]["p99"],
            e["ttft_p50_vs_round_robin"],
            e["ttft_p99_vs_round_robin"],
            e["prefix_cache_hit_rate"],
        ]
        for policy, e in result["policies"].items()
    ]
    return (
        f"{result['replicas']} replicas of `{args.model}`, {args.developers} developers x "
        f"{args.files_per_developer} files, prefixes of {args.prefix_chars} characters, "
        f"{args.duration:g} s per policy.\n\n"
        + md_table(
            [
                "policy",
                "ok",
                "errors",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "p50 / round-robin",
                "p99 / round-robin",
                "prefix-cache hit rate",
            ],
            rows,
        )
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
    parser.add_argument("--developers", type=int, default=6)
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
    publish(
        "benchmarks.routing",
        "routing",
        argv,
        {args.key: "$KEY"},
        args.out,
        result,
        markdown(result, args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
