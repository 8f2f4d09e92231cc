"""Many developers against one OpenAI-compatible endpoint.

    python -m benchmarks.load --url http://127.0.0.1:8000/v1 --key $KEY \\
        --model smollm2-135m-demo --developers 1,2,4 --duration 60

Each simulated developer opens a few real source files and acts at random
times (Poisson, or gamma for burstier arrivals): 80% completions at a cursor
(prefix 0.5-2k tokens of real code, the rest of the file as suffix, 16-64
tokens), 15% repairs, 5% test generation by default. While typing, the next
completion for the same document follows 100-400 ms later and cancels the
previous one client-side (and, on Seed Serve, supersedes it server-side).
Reports per task TTFT, time per output token, inter-token latency and
end-to-end latency (p50/p90/p99), requests/s, output tokens/s, goodput under
the SLO, errors, 429/503 counts and wasted tokens; JSON, Markdown and PNG
plots (latency CDFs; latency against offered load when several levels run).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress, machine_info, summarize, write_report
from benchmarks.common.report import command_line, md_table, results_dir, save_figure
from benchmarks.load.client import Api, RequestRecord, Target
from benchmarks.load.workload import (
    TASKS,
    FimPrompt,
    Mix,
    PromptFactory,
    SourceFile,
    default_source_tree,
    load_corpus,
)


@dataclass(frozen=True)
class LoadSettings:
    developers: int
    rate_per_developer: float
    duration_s: float
    arrivals: str  # poisson | gamma
    gamma_shape: float
    typing_probability: float
    slo_ttft_s: float
    seed: int


def _interarrival(rng: random.Random, settings: LoadSettings) -> float:
    mean = 1.0 / settings.rate_per_developer
    if settings.arrivals == "gamma":
        return rng.gammavariate(settings.gamma_shape, mean / settings.gamma_shape)
    return rng.expovariate(1.0 / mean)


class Developer:
    """One developer: open documents, arrivals, typing bursts that supersede."""

    def __init__(
        self,
        index: int,
        target: Target,
        factory: PromptFactory,
        mix: Mix,
        settings: LoadSettings,
        records: list[RequestRecord],
    ) -> None:
        self.rng = random.Random(settings.seed * 1000 + index)
        self.target = target
        self.factory = PromptFactory(
            factory.corpus,
            self.rng,
            prefix_chars=factory.prefix_chars,
            suffix_chars=factory.suffix_chars,
            max_tokens=factory.max_tokens,
        )
        self.mix = mix
        self.settings = settings
        self.records = records
        self.documents: list[SourceFile] = [
            self.factory.document() for _ in range(self.rng.randint(1, 3))
        ]
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self, deadline: float) -> None:
        while True:
            await asyncio.sleep(_interarrival(self.rng, self.settings))
            if time.monotonic() >= deadline:
                return
            task = self.mix.pick(self.rng)
            if task == "completion":
                self._spawn(self._typing(deadline))
            elif task == "repair":
                record = self._record("repair")
                self._spawn(self.target.repair(self.factory.repair(), record))
            else:
                record = self._record("tests")
                self._spawn(self.target.tests(self.factory.function(), record))

    def _record(self, task: Any) -> RequestRecord:
        record = RequestRecord(task=task, started=time.monotonic())
        self.records.append(record)
        return record

    async def _typing(self, deadline: float) -> None:
        source = self.rng.choice(self.documents)
        prompt: FimPrompt = self.factory.fim(source)
        keystrokes = 1
        if self.rng.random() < self.settings.typing_probability:
            keystrokes += self.rng.randint(1, 3)
        for stroke in range(keystrokes):
            if stroke:
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))
                prompt = self.factory.keystroke(prompt, source)
            previous = self.inflight.get(prompt.document)
            if previous is not None and not previous.done():
                previous.cancel()  # the developer typed on: this suggestion is stale
            record = self._record("completion")
            self.inflight[prompt.document] = self._spawn(self.target.completion(prompt, record))

    async def drain(self, timeout_s: float) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout_s)
        for task in list(self.tasks):
            task.cancel()


async def _engine_tokens(
    session: aiohttp.ClientSession, base: str, admin_key: str | None
) -> float | None:
    """Tokens all engines generated so far (Seed Serve's /metrics/engines, admin key)."""
    if not admin_key:
        return None
    root = base.rstrip("/").removesuffix("/v1")
    try:
        async with session.get(
            root + "/metrics/engines", headers={"Authorization": f"Bearer {admin_key}"}
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except aiohttp.ClientError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


async def run_level(
    args: argparse.Namespace, settings: LoadSettings, corpus: list[SourceFile]
) -> dict[str, Any]:
    records: list[RequestRecord] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        target = Target(
            session,
            args.url,
            model=args.model,
            key=args.key,
            api=args.api,
            fim_template=args.fim_template,
        )
        factory = PromptFactory(
            corpus,
            random.Random(settings.seed),
            prefix_chars=(args.prefix_chars[0], args.prefix_chars[1]),
            max_tokens=(args.max_tokens[0], args.max_tokens[1]),
        )
        mix = Mix.parse(args.mix)
        developers = [
            Developer(i, target, factory, mix, settings, records)
            for i in range(settings.developers)
        ]
        engine_before = await _engine_tokens(session, args.url, args.admin_key)
        started = time.monotonic()
        deadline = started + settings.duration_s
        progress = Progress(settings.duration_s, f"{settings.developers} developers", "s")
        runners = [asyncio.ensure_future(d.run(deadline)) for d in developers]
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            finished = sum(1 for r in records if r.ended)
            progress.update(time.monotonic() - started, f"{len(records)} sent, {finished} done")
        await asyncio.gather(*runners)
        await asyncio.gather(*(d.drain(args.drain_s) for d in developers))
        progress.close()
        elapsed = time.monotonic() - started
        engine_after = await _engine_tokens(session, args.url, args.admin_key)
    return summarize_level(records, settings, elapsed, engine_before, engine_after)


def summarize_level(
    records: list[RequestRecord],
    settings: LoadSettings,
    elapsed_s: float,
    engine_before: float | None,
    engine_after: float | None,
) -> dict[str, Any]:
    per_task: dict[str, Any] = {}
    for task in TASKS:
        mine = [r for r in records if r.task == task]
        if not mine:
            continue
        ok = [r for r in mine if r.ok]
        ttfts = [r.ttft for r in ok if r.ttft is not None]
        entry = {
            "sent": len(mine),
            "ok": len(ok),
            "cancelled": sum(r.cancelled for r in mine),
            "errors": sum(1 for r in mine if not r.ok and not r.cancelled),
            "status_429": sum(r.status == 429 for r in mine),
            "status_503": sum(r.status == 503 for r in mine),
            "requests_per_s": round(len(ok) / elapsed_s, 3),
            "output_tokens_per_s": round(sum(r.output_tokens for r in ok) / elapsed_s, 2),
            "ttft_ms": summarize(ttfts),
            "tpot_ms": summarize([t for r in ok if (t := r.tpot) is not None]),
            "itl_ms": summarize([gap for r in ok for gap in r.itls()]),
            "e2e_ms": summarize([r.e2e for r in ok]),
            "wasted_tokens_seen": sum(r.output_tokens for r in mine if r.cancelled),
            "first_errors": sorted({r.error for r in mine if r.error})[:3],
        }
        if task == "completion":
            good = sum(1 for r in ok if r.ttft is not None and r.ttft <= settings.slo_ttft_s)
            entry["goodput_per_s"] = round(good / elapsed_s, 3)
            entry["slo_attainment"] = round(good / len(mine), 3) if mine else None
        per_task[task] = entry
    delivered = sum(r.output_tokens for r in records if r.ok)
    level: dict[str, Any] = {
        "developers": settings.developers,
        "offered_arrivals_per_s": settings.developers * settings.rate_per_developer,
        "requests_sent": len(records),
        "elapsed_s": round(elapsed_s, 2),
        "tasks": per_task,
        "engine_generated_tokens": None,
        "wasted_tokens_engine": None,
    }
    if engine_before is not None and engine_after is not None:
        generated = engine_after - engine_before
        level["engine_generated_tokens"] = generated
        # Everything the engines generated that no developer received whole.
        level["wasted_tokens_engine"] = max(0.0, generated - delivered)
    level["_samples"] = {
        task: {
            "ttft": [r.ttft for r in records if r.task == task and r.ok and r.ttft is not None],
            "e2e": [r.e2e for r in records if r.task == task and r.ok],
        }
        for task in TASKS
    }
    return level


def plot(levels: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    last = levels[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("ttft", "e2e"), strict=True):
        for task, samples in last["_samples"].items():
            values = sorted(samples[metric])
            if not values:
                continue
            shares = [(i + 1) / len(values) for i in range(len(values))]
            axis.plot([v * 1000 for v in values], shares, label=task)
        axis.set_xlabel(f"{metric.upper()} (ms)")
        axis.set_ylabel("share of requests")
        axis.set_xscale("log")
        axis.grid(True, alpha=0.3)
        axis.legend()
        axis.set_title(f"{metric.upper()} CDF, {last['developers']} developers")
    written.append(save_figure(fig, folder / "latency_cdf.png"))
    if len(levels) > 1:
        fig, axis = plt.subplots(figsize=(6, 4))
        offered = [lvl["offered_arrivals_per_s"] for lvl in levels]
        for quantile in ("p50", "p99"):
            values = [
                lvl["tasks"].get("completion", {}).get("ttft_ms", {}).get(quantile)
                for lvl in levels
            ]
            axis.plot(offered, values, marker="o", label=f"completion TTFT {quantile}")
        axis.set_xlabel("offered load (arrivals/s)")
        axis.set_ylabel("ms")
        axis.grid(True, alpha=0.3)
        axis.legend()
        written.append(save_figure(fig, folder / "latency_vs_load.png"))
    return written


def markdown(levels: list[dict[str, Any]], slo_ms: float) -> str:
    rows = []
    for level in levels:
        for task, entry in level["tasks"].items():
            rows.append(
                [
                    level["developers"],
                    task,
                    entry["sent"],
                    entry["ok"],
                    entry["cancelled"],
                    entry["errors"],
                    entry["status_429"],
                    entry["status_503"],
                    entry["ttft_ms"]["p50"],
                    entry["ttft_ms"]["p99"],
                    entry["tpot_ms"]["p50"],
                    entry["itl_ms"]["p99"],
                    entry["e2e_ms"]["p50"],
                    entry["e2e_ms"]["p99"],
                    entry["requests_per_s"],
                    entry["output_tokens_per_s"],
                    entry.get("goodput_per_s"),
                    entry["wasted_tokens_seen"],
                ]
            )
    table = md_table(
        [
            "devs",
            "task",
            "sent",
            "ok",
            "cancelled",
            "errors",
            "429",
            "503",
            "TTFT p50",
            "TTFT p99",
            "TPOT p50",
            "ITL p99",
            "E2E p50",
            "E2E p99",
            "req/s",
            "out tok/s",
            f"goodput/s (TTFT<={slo_ms:g}ms)",
            "wasted tok (client)",
        ],
        rows,
    )
    wasted = [
        f"- {lvl['developers']} developers: engines generated {lvl['engine_generated_tokens']:.0f} "
        f"tokens, {lvl['wasted_tokens_engine']:.0f} of them never reached a developer"
        for lvl in levels
        if lvl["engine_generated_tokens"] is not None
    ]
    return "Latencies in ms.\n\n" + table + ("\n" + "\n".join(wasted) + "\n" if wasted else "")


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument("--key", help="API key (Bearer)")
    parser.add_argument(
        "--admin-key", help="Seed Serve admin key: wasted tokens from the engines' metrics"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--api",
        choices=["seed-serve", "openai"],
        default="seed-serve",
        help="seed-serve: task endpoints; openai: everything as /v1/completions prompts",
    )
    parser.add_argument(
        "--fim-template",
        default="none",
        help="with --api openai: render FIM prompts client-side with this template",
    )
    parser.add_argument(
        "--developers", default="4", help="comma list: one run per level (e.g. 1,2,4,8)"
    )
    parser.add_argument("--rate", type=float, default=0.5, help="arrivals per developer per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per level")
    parser.add_argument("--drain-s", type=float, default=120.0, help="wait for in-flight requests")
    parser.add_argument("--arrivals", choices=["poisson", "gamma"], default="poisson")
    parser.add_argument(
        "--gamma-shape", type=float, default=0.5, help="below 1: burstier than Poisson"
    )
    parser.add_argument(
        "--typing",
        type=float,
        default=0.5,
        help="chance that a completion is followed by 1-3 superseding keystrokes",
    )
    parser.add_argument("--mix", default="completion=0.8,repair=0.15,tests=0.05")
    parser.add_argument(
        "--prefix-chars",
        type=_range,
        default=(2000, 8000),
        help="prefix size range in characters (~0.5-2k tokens of code)",
    )
    parser.add_argument("--max-tokens", type=_range, default=(16, 64))
    parser.add_argument("--slo-ttft-ms", type=float, default=200.0)
    parser.add_argument(
        "--source", type=Path, default=None, help="source tree for prompts (default: stdlib)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.api not in ("seed-serve", "openai"):
        raise SystemExit("--api: seed-serve or openai")
    api: Api = args.api
    args.api = api
    corpus = load_corpus(args.source or default_source_tree(), seed=args.seed)
    levels = []
    for developers in (int(d) for d in args.developers.split(",")):
        settings = LoadSettings(
            developers=developers,
            rate_per_developer=args.rate,
            duration_s=args.duration,
            arrivals=args.arrivals,
            gamma_shape=args.gamma_shape,
            typing_probability=args.typing,
            slo_ttft_s=args.slo_ttft_ms / 1000,
            seed=args.seed,
        )
        levels.append(asyncio.run(run_level(args, settings, corpus)))
    folder = results_dir(args.out, "load")
    plots = plot(levels, folder)
    result = {
        "machine": machine_info(),
        "command": command_line(
            "benchmarks.load", argv, {args.key: "$KEY", args.admin_key: "$ADMIN_KEY"}
        ),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("key", "admin_key")
        },
        "levels": [{k: v for k, v in lvl.items() if k != "_samples"} for lvl in levels],
        "plots": [p.name for p in plots],
    }
    paths = write_report(folder, "load", result, markdown(levels, args.slo_ttft_ms))
    print(paths["markdown"].read_text())
    print(f"results: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
