"""The gateway beside its peers: the capacity run (open-loop Poisson load, the
instant upstream, the proxy pinned to the quietest core, warm-up per level,
CPU ms per request from /proc) against Seed Serve's gateway with all its
behaviour on (API keys with a quota, lanes, the audit log, metrics), vLLM's
production-stack router (`vllm-router`, Rust) and LiteLLM's proxy, each set
up as its documentation recommends for one OpenAI upstream, streamed and not,
in one run.

    python -m benchmarks.overhead peers --out benchmarks/results/overhead

The peers are benchmark-only: each gets a virtual environment of its own under
``~/.cache/seed-serve/bench-peers/<name>`` (made on first use from the package
index), never a dependency of the product.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.common.http import wait_until_up
from benchmarks.common.machine import core_noise, quietest_cpu
from benchmarks.common.report import md_table, save_figure
from benchmarks.overhead.levels import level_summary, measure_levels, start_module
from serving.paths import seed_serve_home

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    name: str
    requirement: str | None  # pip requirement of its own venv (None: this project)
    # (port, upstream URL, workdir) -> (argv, ready path, request headers)
    launch: Callable[[int, str, Path], tuple[list[str], str, dict[str, str]]]


def _seed_serve(port: int, upstream: str, workdir: Path) -> tuple[list[str], str, dict[str, str]]:
    from serving.admission.keys import create_key

    keys = workdir / "keys.yaml"
    # A real key with a quota the load never reaches: the checks run, none refuses.
    _, secret = create_key(keys, tenant="bench", name="bench", limits={"rpm": 100_000_000})
    argv = [
        sys.executable, "-m", "benchmarks.overhead.static_gateway", "--port", str(port),
        "--upstream", upstream, "--keys-file", str(keys),
        "--audit-file", str(workdir / "audit.jsonl"),
    ]  # fmt: skip
    return argv, "/ready", {"Authorization": f"Bearer {secret}"}


def _floor(port: int, upstream: str, workdir: Path) -> tuple[list[str], str, dict[str, str]]:
    # The gateway's HTTP server and engine client with none of its behaviour
    # (benchmarks/overhead/floor_relay.py): what the gateway costs before its own work.
    argv = [sys.executable, "-m", "benchmarks.overhead.floor_relay", "--port", str(port),
            "--upstream", upstream]  # fmt: skip
    return argv, "/health", {}


def _vllm_router(port: int, upstream: str, workdir: Path) -> tuple[list[str], str, dict[str, str]]:
    # Its README's regular mode: the worker URLs and a policy (one worker here).
    binary = venv_of("vllm-router") / "bin" / "vllm-router"
    argv = [
        str(binary), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", upstream,
        "--policy", "round_robin", "--log-level", "warning",
    ]  # fmt: skip
    return argv, "/health", {}


def _litellm(port: int, upstream: str, workdir: Path) -> tuple[list[str], str, dict[str, str]]:
    # LiteLLM's proxy config for an OpenAI-compatible text-completion upstream,
    # one worker (the core it is pinned to), verbose logging off.
    config = {
        "model_list": [{
            "model_name": "instant",
            "litellm_params": {"model": "text-completion-openai/instant",
                               "api_base": upstream + "/v1", "api_key": "none"},
        }],
        "litellm_settings": {"set_verbose": False, "json_logs": False},
        "general_settings": {"master_key": "sk-bench"},
    }  # fmt: skip
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    binary = venv_of("litellm") / "bin" / "litellm"
    argv = [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    return argv, "/health/liveliness", {"Authorization": "Bearer sk-bench"}


PEERS = (
    Peer("seed-serve", None, _seed_serve),
    Peer("floor", None, _floor),
    Peer("vllm-router", "vllm-router==0.1.17", _vllm_router),
    Peer("litellm", "litellm[proxy]==1.108.7", _litellm),
)


def venv_of(name: str) -> Path:
    return seed_serve_home() / "bench-peers" / name


def ensure_peer(peer: Peer) -> None:
    """The peer's own virtual environment, made once from the package index."""
    if peer.requirement is None:
        return
    venv = venv_of(peer.name)
    stamp = venv / f".installed-{peer.requirement}"
    if stamp.exists():
        return
    print(f"installing {peer.requirement} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", peer.requirement], check=True)
    stamp.touch()


def start_peer(
    peer: Peer, port: int, upstream: str, cpu: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    argv, ready, headers = peer.launch(port, upstream, workdir)
    log = open(workdir / f"{peer.name}.log", "wb")
    process = subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        cwd=ROOT,
        env={**os.environ, "SEED_SERVE_HOME": str(workdir)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}{ready}", headers


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def peers_run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("peers needs two CPUs: one for the proxy, one for the load")
    chosen = [p for p in PEERS if p.name in args.peers.split(",")]
    for peer in chosen:
        ensure_peer(peer)
    noise = core_noise(cpus)
    proxy_cpu = quietest_cpu(noise)
    load_cpus = [cpu for cpu in cpus if cpu != proxy_cpu]
    os.sched_setaffinity(0, set(load_cpus))
    upstream_port = args.port + 1
    upstream = start_module(
        "benchmarks.overhead.instant_upstream", "--port", str(upstream_port), "--tokens",
        str(args.tokens), "--cpus", ",".join(map(str, load_cpus)),
    )  # fmt: skip
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    rates = [float(r) for r in args.rates.split(",")]
    runs: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="seed-serve-peers-"))
    try:
        await wait_until_up(upstream_url + "/health")
        # One start per proxy for both modes (a start costs seconds; the
        # proxy's state between two modes is what a long-running one has).
        for peer in chosen:
            workdir = Path(tempfile.mkdtemp(prefix=f"{peer.name}-", dir=scratch))
            process, ready, headers = start_peer(peer, args.port, upstream_url, proxy_cpu, workdir)
            try:
                await wait_until_up(ready, timeout_s=180, ok=300, process=process)
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), headers=headers
                ) as session:
                    for stream in (True, False):
                        body = {
                            "model": "instant", "prompt": "def f(x):",
                            "max_tokens": args.tokens, "stream": stream,
                        }  # fmt: skip
                        levels = await measure_levels(
                            session, upstream_url + "/v1/completions",
                            f"http://127.0.0.1:{args.port}/v1/completions", process.pid, body,
                            rates, args, label=f"{peer.name} {'streamed' if stream else 'plain'}",
                        )  # fmt: skip
                        runs.append({
                            "proxy": peer.name, "version": peer.requirement or "this commit",
                            "stream": stream, "levels": levels, **level_summary(levels),
                        })  # fmt: skip
            finally:
                stop(process)
    finally:
        stop(upstream)
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "proxy_cpu": proxy_cpu,
        "cpu_noise": noise,
        "load_cpus": len(load_cpus),
        "tokens_per_response": args.tokens,
        "slo_added_p99_ms": args.slo_added_p99_ms,
        "runs": runs,
    }


def _cpu_median(run: dict[str, Any]) -> float | None:
    clean = sorted(
        lvl["gateway_cpu_ms_per_request"] for lvl in run["levels"] if lvl["gateway_errors"] == 0
    )
    return clean[len(clean) // 2] if clean else None


def peers_markdown(result: dict[str, Any]) -> str:
    summary = [
        [run["proxy"], run["version"], "streamed" if run["stream"] else "plain",
         run["sustained_rps_per_core"], _cpu_median(run), run["cpu_bound_rps_per_core"]]
        for run in result["runs"]
    ]  # fmt: skip
    detail = [
        [run["proxy"], "streamed" if run["stream"] else "plain", lvl["offered_rps"],
         lvl["gateway_rps"], lvl["added_p50_ms"], lvl["added_p99_ms"], lvl["gateway_errors"],
         lvl["gateway_cpu_ms_per_request"]]
        for run in result["runs"] for lvl in run["levels"]
    ]  # fmt: skip
    ratios = []
    for stream in (True, False):
        by_proxy = {r["proxy"]: _cpu_median(r) for r in result["runs"] if r["stream"] is stream}
        ours, router = by_proxy.get("seed-serve"), by_proxy.get("vllm-router")
        floor = by_proxy.get("floor")
        mode = "streamed" if stream else "plain"
        if ours and router:
            ratios.append(
                f"- {mode}: Seed Serve / vllm-router CPU per request = {ours / router:.2f}x"
            )
        if ours and floor:
            ratios.append(
                f"- {mode}: the floor (the gateway's HTTP server and engine client alone) "
                f"{floor:.3g} ms per request; the gateway's own behaviour {ours - floor:.3g} ms"
            )
    return (
        f"Each proxy pinned to CPU {result['proxy_cpu']} (the quietest), the load generator and "
        f"the instant upstream on the other {result['load_cpus']}; "
        f"{result['tokens_per_response']} tokens per response; one proxy at a time, the same "
        "rates.\n\n"
        + md_table(
            [
                "proxy",
                "version",
                "mode",
                f"highest req/s within {result['slo_added_p99_ms']} ms added p99",
                "CPU ms/request (median over rates)",
                "CPU-bound req/s per core",
            ],
            summary,
        )
        + ("\n" + "\n".join(ratios) + "\n" if ratios else "")
        + "\n"
        + md_table(
            [
                "proxy",
                "mode",
                "offered req/s",
                "served req/s",
                "added p50 ms",
                "added p99 ms",
                "errors",
                "CPU ms/request",
            ],
            detail,
        )
    )


def peers_plot(result: dict[str, Any], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for column, stream in enumerate((True, False)):
        mode = "streamed" if stream else "plain"
        for run in (r for r in result["runs"] if r["stream"] is stream):
            offered = [lvl["offered_rps"] for lvl in run["levels"]]
            axes[0][column].plot(
                offered, [lvl["added_p99_ms"] for lvl in run["levels"]], marker="o",
                label=run["proxy"],
            )  # fmt: skip
            axes[1][column].plot(
                offered, [lvl["gateway_cpu_ms_per_request"] for lvl in run["levels"]],
                marker="o", label=run["proxy"],
            )  # fmt: skip
        axes[0][column].axhline(result["slo_added_p99_ms"], color="grey", linestyle="--")
        axes[0][column].set_title(f"added p99 latency, {mode}")
        axes[0][column].set_yscale("symlog")
        axes[1][column].set_title(f"proxy CPU ms per request, {mode}")
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("offered load (requests/s)")
        for row in (0, 1):
            axes[row][column].grid(True, alpha=0.3)
    axes[0][0].legend()
    return save_figure(figure, folder / "overhead-peers.png")
