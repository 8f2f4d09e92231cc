"""What the gateway costs.

    # 1. the same workload on one vLLM replica, directly and through the gateway,
    #    interleaved in one run (a `seed-serve up` stack on this machine):
    python -m benchmarks.overhead engine --gateway http://127.0.0.1:8000 --key $KEY --model M
    # 2. requests/s one gateway process sustains on one core with p99 added
    #    latency <= 5 ms, against the instant upstream (a benchmark instrument):
    python -m benchmarks.overhead capacity
    # 3. the same beside vLLM's production-stack router and LiteLLM's proxy
    #    (benchmarks/overhead/peers.py):
    python -m benchmarks.overhead peers

`engine` reports added TTFT p50/p99 (ms), the throughput ratio at saturation,
and whether streaming is re-buffered (events per response and inter-token gaps
through the gateway against direct). `capacity` pins the gateway to one core
and the load generator plus the instant upstream to the other(s).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress, machine_info, summarize
from benchmarks.common.http import wait_until_up
from benchmarks.common.machine import core_noise, quietest_cpu
from benchmarks.common.report import md_table, publish, save_figure
from benchmarks.common.stats import percentile
from benchmarks.load.workload import default_source_tree, load_corpus
from benchmarks.overhead.levels import level_summary, measure_levels, start_module

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Timing:
    started: float
    first: float | None = None
    ended: float = 0.0
    events: list[float] = field(default_factory=list)
    tokens: int = 0
    status: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.started

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.events, self.events[1:], strict=False)]


async def timed_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> Timing:
    timing = Timing(started=time.monotonic())
    async with session.post(url, json=body, headers=headers) as response:
        timing.status = response.status
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                now = time.monotonic()
                timing.first = timing.first or now
                timing.events.append(now)
            if chunk.get("usage"):
                timing.tokens = int(chunk["usage"]["completion_tokens"])
    timing.ended = time.monotonic()
    return timing


# --------------------------------------------------------------------------- engine


async def _saturate(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    bodies: list[dict[str, Any]],
    deadline: float,
    rng: random.Random,
) -> int:
    """One closed-loop client until ``deadline``: output tokens received."""
    tokens = 0
    while time.monotonic() < deadline:
        tokens += (await timed_stream(session, url, headers, rng.choice(bodies))).tokens
    return tokens


async def engine_run(args: argparse.Namespace) -> dict[str, Any]:
    if args.direct_url:
        direct_url, token = args.direct_url.rstrip("/"), args.direct_token
    else:
        from benchmarks.common.engines import running_replicas

        replicas = [r for r in running_replicas() if r["model"] == args.model]
        if len(replicas) != 1:
            raise SystemExit(
                f"need exactly one ready replica of {args.model} (found {len(replicas)}): "
                "the comparison must hit the same engine both ways"
            )
        direct_url, token = replicas[0]["url"], replicas[0]["token"]
    paths = {
        "direct": (direct_url + "/v1/completions", {"Authorization": f"Bearer {token}"}),
        "gateway": (
            args.gateway.rstrip("/") + "/v1/completions",
            {"Authorization": f"Bearer {args.key}"},
        ),
    }
    corpus = load_corpus(default_source_tree(), max_files=50, seed=args.seed)
    rng = random.Random(args.seed)
    prompts = []
    for _ in range(args.requests):
        source = rng.choice(corpus)
        start = rng.randint(0, max(0, len(source.text) - args.prompt_chars))
        prompts.append(source.text[start : start + args.prompt_chars])

    def body(prompt: str, max_tokens: int) -> dict[str, Any]:
        return {
            "model": args.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    results: dict[str, list[Timing]] = {"direct": [], "gateway": []}
    same_events = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        progress = Progress(len(prompts), "latency pairs")
        for i, prompt in enumerate(prompts):
            # Warm the prefix cache once, so both measured requests find it equally.
            await timed_stream(session, *paths["direct"], body(prompt, 1))
            order = ["direct", "gateway"] if rng.random() < 0.5 else ["gateway", "direct"]
            pair = {}
            for name in order:
                pair[name] = await timed_stream(
                    session, *paths[name], body(prompt, args.max_tokens)
                )
                results[name].append(pair[name])
            same_events += len(pair["direct"].events) == len(pair["gateway"].events)
            progress.update(i + 1)
        progress.close()

        saturation: dict[str, float] = {"direct": 0.0, "gateway": 0.0}
        progress = Progress(4 * args.block_s, "saturation blocks", "s")
        elapsed_total = 0.0
        for block in ("direct", "gateway", "gateway", "direct"):
            url, headers = paths[block]
            block_started = time.monotonic()
            counts = await asyncio.gather(
                *(
                    _saturate(
                        session,
                        url,
                        headers,
                        [body(p, args.max_tokens) for p in prompts],
                        block_started + args.block_s,
                        random.Random(k),
                    )
                    for k in range(args.concurrency)
                )
            )
            tokens = sum(counts)
            saturation[block] += tokens / (time.monotonic() - block_started)
            elapsed_total += args.block_s
            progress.update(elapsed_total, f"{block}: {tokens} tokens")
        progress.close()

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return round(value * 1000, 3) if value is not None else None

    ttft = {name: [t.ttft for t in runs if t.ttft is not None] for name, runs in results.items()}
    gaps = {name: [g for t in runs for g in t.gaps()] for name, runs in results.items()}
    paired = [
        g.ttft - d.ttft
        for d, g in zip(results["direct"], results["gateway"], strict=True)
        if g.ttft is not None and d.ttft is not None
    ]
    return {
        "direct_url": "(engine, secret withheld)",
        "requests": len(prompts),
        "ttft_ms": {name: summarize(values) for name, values in ttft.items()},
        "added_ttft_ms": {
            "p50": ms(ttft["gateway"], 50) - ms(ttft["direct"], 50),  # type: ignore[operator]
            "p99": ms(ttft["gateway"], 99) - ms(ttft["direct"], 99),  # type: ignore[operator]
            "paired_median": ms(paired, 50),
        },
        "itl_ms": {name: summarize(values) for name, values in gaps.items()},
        "events_per_response": {
            name: sum(len(t.events) for t in runs) / max(len(runs), 1)
            for name, runs in results.items()
        },
        "pairs_with_same_event_count": same_events,
        "throughput_tokens_per_s": {k: round(v / 2, 2) for k, v in saturation.items()},
        "throughput_ratio": round(saturation["gateway"] / saturation["direct"], 4)
        if saturation["direct"]
        else None,
        "concurrency": args.concurrency,
    }


def engine_markdown(result: dict[str, Any]) -> str:
    ttft, itl = result["ttft_ms"], result["itl_ms"]
    rows = [
        [
            "TTFT p50 (ms)",
            ttft["direct"]["p50"],
            ttft["gateway"]["p50"],
            result["added_ttft_ms"]["p50"],
        ],
        [
            "TTFT p99 (ms)",
            ttft["direct"]["p99"],
            ttft["gateway"]["p99"],
            result["added_ttft_ms"]["p99"],
        ],
        ["inter-token gap p50 (ms)", itl["direct"]["p50"], itl["gateway"]["p50"], None],
        ["inter-token gap p99 (ms)", itl["direct"]["p99"], itl["gateway"]["p99"], None],
        [
            "events per response",
            result["events_per_response"]["direct"],
            result["events_per_response"]["gateway"],
            None,
        ],
        [
            f"tokens/s at concurrency {result['concurrency']}",
            result["throughput_tokens_per_s"]["direct"],
            result["throughput_tokens_per_s"]["gateway"],
            f"ratio {result['throughput_ratio']}",
        ],
    ]
    return (
        md_table(["", "direct", "gateway", "added"], rows)
        + f"\nPaired median added TTFT: {result['added_ttft_ms']['paired_median']} ms; "
        f"{result['pairs_with_same_event_count']}/{result['requests']} pairs streamed the same "
        "number of events (no re-buffering).\n"
    )


# --------------------------------------------------------------------------- capacity


async def capacity_run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("capacity needs two CPUs: one for the gateway, one for the load")
    # The gateway gets the quietest CPU: on small VMs one vCPU loses tens of
    # ms at a time to interrupts, which would be measured as gateway latency.
    noise = core_noise(cpus)
    gateway_cpu = quietest_cpu(noise)
    load_cpus = [cpu for cpu in cpus if cpu != gateway_cpu]
    os.sched_setaffinity(0, set(load_cpus))
    upstream_port, gateway_port = args.port + 1, args.port
    upstream = start_module(
        "benchmarks.overhead.instant_upstream",
        "--port",
        str(upstream_port),
        "--tokens",
        str(args.tokens),
        "--cpus",
        ",".join(map(str, load_cpus)),
    )
    gateway = start_module(
        "benchmarks.overhead.static_gateway",
        "--port",
        str(gateway_port),
        "--upstream",
        f"http://127.0.0.1:{upstream_port}",
        "--cpus",
        str(gateway_cpu),
    )
    try:
        await wait_until_up(f"http://127.0.0.1:{upstream_port}/health")
        await wait_until_up(f"http://127.0.0.1:{gateway_port}/ready")
        body = {
            "model": "instant",
            "prompt": "def f(x):",
            "max_tokens": args.tokens,
            "stream": not args.no_stream,
        }
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/completions"
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1/completions"
        rates = [float(r) for r in args.rates.split(",")]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            levels = await measure_levels(
                session, direct_url, gateway_url, gateway.pid, body, rates, args
            )
    finally:
        for process in (gateway, upstream):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "gateway_cpus": 1,
        "gateway_cpu": gateway_cpu,
        "cpu_noise": noise,
        "load_cpus": len(load_cpus),
        "stream": not args.no_stream,
        "tokens_per_response": args.tokens,
        "slo_added_p99_ms": args.slo_added_p99_ms,
        "levels": levels,
        **level_summary(levels),
    }


def capacity_plot(result: dict[str, Any], folder: Path) -> Path:
    """Added latency and the gateway's CPU per request against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    offered = [lvl["offered_rps"] for lvl in levels]
    fig, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("added_p50_ms", "added p50"), ("added_p99_ms", "added p99")):
        latency.plot(offered, [lvl[key] for lvl in levels], marker="o", label=label)
    latency.axhline(result["slo_added_p99_ms"], color="grey", linestyle="--", label="p99 target")
    latency.set_xlabel("offered load (requests/s)")
    latency.set_ylabel("ms added by the gateway")
    latency.set_title("Latency the gateway adds (one core)")
    cpu.plot(offered, [lvl["gateway_cpu_ms_per_request"] for lvl in levels], marker="o")
    cpu.set_xlabel("offered load (requests/s)")
    cpu.set_ylabel("gateway CPU ms per request")
    cpu.set_ylim(bottom=0)
    cpu.set_title("Gateway CPU time per request")
    for axis in (latency, cpu):
        axis.grid(True, alpha=0.3)
    latency.legend()
    return save_figure(fig, folder / "overhead-capacity.png")


def capacity_markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            lvl["offered_rps"],
            lvl["direct_rps"],
            lvl["gateway_rps"],
            lvl["direct_ms"]["p99"],
            lvl["gateway_ms"]["p99"],
            lvl["added_p50_ms"],
            lvl["added_p99_ms"],
            lvl["gateway_errors"],
            lvl["gateway_cpu_ms_per_request"],
            "yes"
            if lvl["within_slo"]
            else ("no" if lvl["baseline_resolves_slo"] else "cannot tell (noisy baseline)"),
        ]
        for lvl in result["levels"]
    ]
    note = (
        "\nThe load generator could not keep up at the highest rates on this machine: the "
        "sustained figure is a lower bound.\n"
        if result["limited_by_load_generator"]
        else ""
    )
    return (
        f"Gateway pinned to 1 core (CPU {result['gateway_cpu']}, the quietest); load generator "
        f"and instant upstream (benchmark instrument) on the other {result['load_cpus']} CPU(s). "
        f"Streamed: "
        f"{result['stream']}, {result['tokens_per_response']} tokens per response. CPU noise "
        f"(time a spinning process lost per second): "
        + ", ".join(
            f"CPU {cpu}: {n['lost_ms_per_s']} ms/s, longest gap {n['longest_gap_ms']} ms"
            for cpu, n in result["cpu_noise"].items()
        )
        + ".\n\n"
        + md_table(
            [
                "offered req/s",
                "direct req/s",
                "gateway req/s",
                "direct p99 ms",
                "gateway p99 ms",
                "added p50 ms",
                "added p99 ms",
                "errors",
                "gateway CPU ms/request",
                f"added p99 <= {result['slo_added_p99_ms']} ms",
            ],
            rows,
        )
        + f"\n**Sustained: {result['sustained_rps_per_core']} requests/s per gateway core.**\n"
        + (
            f"\nCPU-bound ceiling: {result['cpu_bound_rps_per_core']} requests/s per core "
            "(1000 / the gateway's CPU ms per request at the busiest rate it served cleanly).\n"
            if result["cpu_bound_rps_per_core"]
            else ""
        )
        + note
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    engine = sub.add_parser("engine", help="direct vs through the gateway, same engine")
    engine.add_argument("--gateway", required=True, help="gateway root URL (http://127.0.0.1:8000)")
    engine.add_argument("--key", required=True)
    engine.add_argument("--model", required=True)
    engine.add_argument(
        "--direct-url", help="engine root URL (default: asked of the running stack)"
    )
    engine.add_argument("--direct-token", help="the engine's secret, with --direct-url")
    engine.add_argument("--requests", type=int, default=40, help="latency pairs")
    engine.add_argument("--max-tokens", type=int, default=32)
    engine.add_argument("--prompt-chars", type=int, default=2000)
    engine.add_argument("--concurrency", type=int, default=8, help="saturation concurrency")
    engine.add_argument("--block-s", type=float, default=20.0, help="seconds per saturation block")
    engine.add_argument("--seed", type=int, default=0)
    capacity = sub.add_parser("capacity", help="requests/s per gateway core (instant upstream)")
    capacity.add_argument("--port", type=int, default=18400)
    capacity.add_argument("--rates", default="250,500,750,1000,1250,1500,2000,2500,3000")
    capacity.add_argument("--seconds", type=float, default=10.0)
    capacity.add_argument("--tokens", type=int, default=8)
    capacity.add_argument("--no-stream", action="store_true")
    capacity.add_argument("--slo-added-p99-ms", type=float, default=5.0)
    capacity.add_argument(
        "--all-rates", action="store_true", help="go on past the first rate over the SLO"
    )
    peers = sub.add_parser("peers", help="the capacity run beside vllm-router and LiteLLM")
    peers.add_argument("--port", type=int, default=18500)
    peers.add_argument("--rates", default="10,25,50,100,250,500,750,1000,1250,1500,2000,2500")
    peers.add_argument("--seconds", type=float, default=5.0)
    peers.add_argument("--tokens", type=int, default=8)
    peers.add_argument("--slo-added-p99-ms", type=float, default=5.0)
    peers.add_argument(
        "--peers",
        default="seed-serve,floor,vllm-router,litellm",
        help="of seed-serve, floor (the gateway's server and engine client alone), "
        "vllm-router, litellm",
    )
    peers.add_argument(
        "--all-rates", action="store_true", help="go on past the first rate over the SLO"
    )
    for sub_parser in (engine, capacity, peers):
        sub_parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    machine = machine_info()  # before the capacity run pins this process to one CPU
    if args.mode == "engine":
        result = asyncio.run(engine_run(args))
        text, name = engine_markdown(result), "overhead-engine"
    elif args.mode == "peers":
        from benchmarks.overhead.peers import peers_markdown, peers_run

        result = asyncio.run(peers_run(args))
        text, name = peers_markdown(result), "overhead-peers"
    else:
        result = asyncio.run(capacity_run(args))
        text, name = capacity_markdown(result), "overhead-capacity"
    secrets = {
        getattr(args, "key", None): "$KEY",
        getattr(args, "direct_token", None): "$ENGINE_TOKEN",
    }
    folder = publish("benchmarks.overhead", name, argv, secrets, args.out, result, text, machine)
    if args.mode == "capacity":
        print(f"plot: {capacity_plot(result, folder)}")
    elif args.mode == "peers":
        from benchmarks.overhead.peers import peers_plot

        print(f"plot: {peers_plot(result, folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
