"""The open-loop measurement every proxy comparison shares: each rate sent
directly and through the proxy, back to back, with the proxy's CPU time per
request."""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress, summarize
from benchmarks.common.machine import process_cpu_seconds
from benchmarks.common.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
_WARM_UP_S = 1.0


def start_module(module: str, *args: str) -> subprocess.Popen[bytes]:
    """`python -m module args` from the repository root (stderr kept for its failure)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float, body: dict[str, Any]
) -> tuple[list[float], collections.Counter[str], float]:
    """Requests at ``rate``/s for ``seconds`` (Poisson): latencies, errors by
    kind (``HTTP 503``, an exception's name), achieved rate."""
    rng = random.Random(7)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        started = time.monotonic()
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status != 200:
                    errors[f"HTTP {response.status}"] += 1
                    return
        except (TimeoutError, aiohttp.ClientError) as exc:
            errors[type(exc).__name__] += 1
            return
        latencies.append(time.monotonic() - started)

    started = time.monotonic()
    next_at = started
    while next_at < started + seconds:
        next_at += rng.expovariate(rate)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, unfinished = await asyncio.wait(list(tasks), timeout=30)
        for task in unfinished:  # counted, not left to spill into the next level
            task.cancel()
            errors["no answer in 30 s"] += 1
    elapsed = time.monotonic() - started
    return latencies, errors, len(latencies) / elapsed


async def measure_levels(
    session: aiohttp.ClientSession,
    direct_url: str,
    proxy_url: str,
    proxy_pid: int,
    body: dict[str, Any],
    rates: list[float],
    args: argparse.Namespace,
    label: str = "rates",
) -> list[dict[str, Any]]:
    """Each rate, directly and through the proxy, back to back: added latency,
    errors and the proxy's CPU per request; stops after the first rate over
    the SLO (unless ``args.all_rates``)."""
    levels: list[dict[str, Any]] = []
    progress = Progress(len(rates), label)
    await open_loop(session, proxy_url, 50, 2, body)  # warm-up
    for i, rate in enumerate(rates):
        # Unrecorded warm-up at each level's rate: connections for its
        # concurrency are opened here, not counted as latency.
        await open_loop(session, direct_url, rate, _WARM_UP_S, body)
        direct, direct_errors, direct_rate = await open_loop(
            session, direct_url, rate, args.seconds, body
        )
        await open_loop(session, proxy_url, rate, _WARM_UP_S, body)
        cpu_before = process_cpu_seconds(proxy_pid)
        through, errors, achieved = await open_loop(session, proxy_url, rate, args.seconds, body)
        proxy_cpu_s = process_cpu_seconds(proxy_pid) - cpu_before
        p99_direct = percentile(direct, 99) or 0.0
        p99_gateway = percentile(through, 99) or 0.0
        level = {
            "offered_rps": rate,
            "direct_rps": round(direct_rate, 1),
            "gateway_rps": round(achieved, 1),
            "direct_errors": sum(direct_errors.values()),
            "gateway_errors": sum(errors.values()),
            "gateway_error_kinds": dict(errors),
            "direct_ms": summarize(direct),
            "gateway_ms": summarize(through),
            "added_p50_ms": round(
                ((percentile(through, 50) or 0) - (percentile(direct, 50) or 0)) * 1000, 3
            ),
            "added_p99_ms": round((p99_gateway - p99_direct) * 1000, 3),
            # Less noisy than latency on a shared machine: the proxy's own CPU
            # time per answered request at this rate.
            "gateway_cpu_ms_per_request": round(
                proxy_cpu_s * 1000 / max(1, len(through) + sum(errors.values())), 3
            ),
            # The load generator itself kept up (else the figure says nothing of the proxy).
            "load_generator_kept_up": direct_rate >= 0.95 * rate,
            # The direct run itself stayed within the SLO: a noisier baseline
            # cannot resolve a few ms added (the difference of two noisy p99s
            # can even come out negative).
            "baseline_resolves_slo": p99_direct * 1000 <= args.slo_added_p99_ms,
        }
        level["within_slo"] = (
            level["baseline_resolves_slo"]
            and level["added_p99_ms"] <= args.slo_added_p99_ms
            and achieved >= 0.95 * rate
            and not errors
        )
        levels.append(level)
        progress.update(i + 1, f"{rate:g} req/s: +{level['added_p99_ms']} ms p99")
        if not level["within_slo"] and level["load_generator_kept_up"] and not args.all_rates:
            break
    progress.close()
    return levels


def level_summary(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest rate within the SLO and the CPU-bound ceiling of one core."""
    clean = [
        lvl
        for lvl in levels
        if lvl["gateway_errors"] == 0
        and lvl["gateway_cpu_ms_per_request"] > 0
        and lvl["gateway_rps"] >= 0.95 * lvl["offered_rps"]
    ]
    sustained: list[float] = [float(lvl["gateway_rps"]) for lvl in levels if lvl["within_slo"]]
    return {
        "sustained_rps_per_core": max(sustained) if sustained else 0.0,
        # What one core could answer if the proxy's CPU were the only limit:
        # from its CPU time per request at the busiest rate it served cleanly.
        "cpu_bound_rps_per_core": round(1000 / clean[-1]["gateway_cpu_ms_per_request"])
        if clean
        else None,
        "limited_by_load_generator": any(not lvl["load_generator_kept_up"] for lvl in levels),
    }
