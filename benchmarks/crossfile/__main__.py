"""Cross-file completion: does another file's definition in the prompt help?

    python -m benchmarks.crossfile --gateway http://127.0.0.1:8000 --key $KEY \\
        --model seed-coder-8b-base --cases 100

Cases come from the Python standard library of the running interpreter (or
`--source`): a line of module A of a package calling a function or class that
module B of the same package defines, imported by name (`from .b import f`,
`from . import b` then `b.f(`). The cursor is put where the call starts; the
target is the rest of the line (see benchmarks/crossfile/cases.py).

Each case is asked twice on /v1/code/completions (mode line, temperature 0,
48 tokens, the cases' arms in a seeded random order, `--concurrency` in
flight): without `context`, and with `context` = B's definition of the called
name. Reports exact match, edit similarity and identifier match per arm, the
lift, the cases that got better and worse (sign test) and a bootstrap 95%
interval of the lift. A gateway that answers 400 naming `context` predates
the field: the run stops there (exit 2).

`--dry-run` only draws and prints the cases (no gateway needed).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress
from benchmarks.common.report import md_table, publish, save_figure
from benchmarks.crossfile.cases import (
    CONTEXT_LINES,
    PREFIX_LINES,
    SUFFIX_LINES,
    Case,
    all_cases,
    default_source_tree,
    draw,
)
from benchmarks.crossfile.client import MAX_TOKENS, ContextRejected, Gateway, RequestFailed
from benchmarks.crossfile.scoring import ARMS, METRICS, compare, first_line, score

LABELS = {
    "exact_match": "exact match",
    "edit_similarity": "edit similarity (Levenshtein)",
    "identifier_match": "identifier match",
}


def record_of(case: Case) -> dict[str, Any]:
    return {
        "case": case.id,
        "context_path": case.context_path,
        "context_lines": case.context.count("\n"),
        "called": case.called,
        "target": case.target,
        "identifiers": list(case.identifiers),
        "without": {},
        "with": {},
    }


async def ask(
    cases: list[Case], gateway: Gateway, concurrency: int, seed: int
) -> list[dict[str, Any]]:
    """Both arms of every case; request failures are recorded in the case's
    arm, a rejected ``context`` field raises :class:`ContextRejected`."""
    records = [record_of(case) for case in cases]
    rng = random.Random(seed)
    jobs: deque[tuple[int, str]] = deque()
    for index in range(len(cases)):
        jobs.extend((index, arm) for arm in rng.sample(ARMS, 2))
    progress = Progress(len(jobs), "crossfile")
    state = {"done": 0, "errors": 0}

    async def one(index: int, arm: str) -> None:
        case = cases[index]
        try:
            text = await gateway.complete(case, with_context=arm == "with")
            records[index][arm] = {"text": text, **score(text, case.target, case.identifiers)}
        except RequestFailed as exc:
            records[index][arm] = {"error": str(exc)}
            state["errors"] += 1
        state["done"] += 1
        progress.update(state["done"], f"{state['errors']} errors")

    async def worker() -> None:
        while jobs:
            await one(*jobs.popleft())

    if cases:
        # The first case's `with` arm alone: an older gateway is found at once.
        first = (0, "with")
        jobs.remove(first)
        await one(*first)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
        except* ContextRejected as rejected:
            raise rejected.exceptions[0] from None
    progress.close()
    return records


async def run(args: argparse.Namespace, cases: list[Case]) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        gateway = Gateway(session, args.gateway, args.key, args.model)
        return await ask(cases, gateway, args.concurrency, args.seed)


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    where = (
        f"the standard library of Python {result['python']}"
        if result["stdlib"]
        else f"`{result['source']}` (Python {result['python']})"
    )
    head = (
        f"Model `{result['model']}` at {result['gateway']}: {summary['cases']} cases drawn "
        f"(seed {result['seed']}) from {result['candidates']} in {where}, each asked without "
        f"and with the called definition as `context` (mode line, temperature 0, "
        f"{MAX_TOKENS} tokens). {summary['paired']} cases answered in both arms; the "
        "figures are theirs.\n\n"
    )
    rows = []
    for metric in METRICS:
        m = summary["metrics"][metric]
        ci = m["lift_ci95"]
        rows.append(
            [
                LABELS[metric],
                m["without"],
                m["with"],
                _signed(m["lift"]),
                m["better"],
                m["worse"],
                m["sign_test_p"],
                f"[{_signed(ci[0])}, {_signed(ci[1])}]" if ci else None,
            ]
        )
    table = md_table(
        [
            "metric",
            "without context",
            "with context",
            "lift",
            "better",
            "worse",
            "sign test p",
            "lift 95% CI (bootstrap)",
        ],
        rows,
    )
    errors = summary["errors"]
    tail = f"\nRequest errors: {errors['without']} without context, {errors['with']} with.\n"
    return head + table + tail + _examples(result["records"])


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3g}"


def _examples(records: list[dict[str, Any]], count: int = 3) -> str:
    """A few cases context turned into exact matches (what the lift looks like)."""
    gained = [
        r
        for r in records
        if r["with"].get("exact_match") == 1.0 and r["without"].get("exact_match") == 0.0
    ][:count]
    if not gained:
        return ""
    lines = ["", "Cases the context made right:", "", "```text"]
    for r in gained:
        lines += [
            f"{r['case']} (context: {r['context_path']})",
            f"  target:  {r['target']}",
            f"  without: {first_line(r['without']['text'])}",
            f"  with:    {first_line(r['with']['text'])}",
        ]
    return "\n".join([*lines, "```", ""])


def plot(result: dict[str, Any], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["summary"]["metrics"]
    fig, axis = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, arm in ((-width / 2, "without"), (width / 2, "with")):
        values = [metrics[m][arm] or 0.0 for m in METRICS]
        positions = [i + offset for i in range(len(METRICS))]
        bars = axis.bar(positions, values, width, label=f"{arm} context")
        axis.bar_label(bars, fmt="%.2f", fontsize=8)
    axis.set_xticks(range(len(METRICS)), [LABELS[m].split(" (")[0] for m in METRICS])
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("mean over cases")
    where = "stdlib" if result["stdlib"] else Path(result["source"]).name
    axis.set_title(
        f"{result['model']}: {result['summary']['paired']} cross-file cases "
        f"(Python {result['python']} {where})",
        fontsize=10,
    )
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(loc="upper left")
    return save_figure(fig, folder / "crossfile.png")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.crossfile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gateway", help="gateway root URL (http://127.0.0.1:8000)")
    parser.add_argument("--key", help="API key (Bearer)")
    parser.add_argument("--model")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a source tree to cut cases from (default: this interpreter's standard library)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument("--dry-run", action="store_true", help="print the cases, ask nothing")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.dry_run:
        missing = [f"--{n}" for n in ("gateway", "key", "model") if not getattr(args, n)]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --dry-run)")
    if args.cases < 1 or args.concurrency < 1:
        parser.error("--cases and --concurrency must be at least 1")
    return args


def show(cases: list[Case], count: int = 3) -> str:
    parts = []
    for case in cases[:count]:
        parts.append(
            f"--- {case.id} calls {case.called} of {case.context_path}\n"
            f"target:  {case.target!r}\n"
            f"identifiers: {', '.join(case.identifiers)}\n"
            f"prefix (last 3 lines):\n{''.join(case.prefix.splitlines(True)[-3:])}\n"
            f"suffix (next 2 lines):{''.join(case.suffix.splitlines(True)[:3])}"
            f"context ({case.context.count(chr(10))} lines):\n{case.context}"
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    root = args.source or default_source_tree()
    started = time.perf_counter()
    candidates = all_cases(root)
    extraction_s = round(time.perf_counter() - started, 2)
    cases = draw(candidates, args.cases, args.seed)
    print(
        f"crossfile: {len(candidates)} candidate cases in {root} "
        f"(Python {platform.python_version()}), found in {extraction_s}s; {len(cases)} drawn",
        file=sys.stderr,
    )
    if args.dry_run:
        print(show(cases))
        return 0
    if not cases:
        print(f"crossfile: no cases found under {root}", file=sys.stderr)
        return 1
    try:
        records = asyncio.run(run(args, cases))
    except ContextRejected as exc:
        print(
            f"crossfile: the gateway at {args.gateway} rejects the `context` field of "
            f"/v1/code/completions ({exc}): it predates cross-file context. Upgrade it, "
            "or point --gateway at one that has the field.",
            file=sys.stderr,
        )
        return 2
    result = {
        "gateway": args.gateway,
        "model": args.model,
        "python": platform.python_version(),
        "source": str(root),
        "stdlib": root.resolve() == default_source_tree().resolve(),
        "seed": args.seed,
        "candidates": len(candidates),
        "extraction_s": extraction_s,
        "case_set": {
            "packages": dict(Counter(c.path.split("/")[0] for c in cases).most_common()),
            "with_keyword_arguments": sum(bool(c.keywords) for c in cases),
        },
        "settings": {
            "mode": "line",
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
            "concurrency": args.concurrency,
            "prefix_lines": PREFIX_LINES,
            "suffix_lines": SUFFIX_LINES,
            "context_lines_max": CONTEXT_LINES,
        },
        "summary": compare(records, args.seed),
        "records": records,
    }
    folder = publish(
        "benchmarks.crossfile",
        "crossfile",
        argv,
        {args.key: "$KEY"},
        args.out,
        result,
        markdown(result),
    )
    print(f"plot: {plot(result, folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
