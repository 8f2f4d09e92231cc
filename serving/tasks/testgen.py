"""Unit-test generation with a base model: a test file the model continues,
candidates parsed, collected and run against the given code in the sandbox.

The prompt puts the code first and opens a pytest file after it whose header
comment lists the boundary cases to cover (more of them in ``thorough``
mode). Each candidate is cut back to the longest run of complete top-level
statements that parses; candidates without a test are discarded and the round
is regenerated (bounded). The answer reports what really happened when the
tests ran against the code.
"""

from __future__ import annotations

import ast
import asyncio
import warnings
from dataclasses import dataclass

from serving.engines.registry import ModelStatus
from serving.sandbox import PytestReport, Sandbox, run_pytest
from serving.tasks.completion import CodeCompleter

MODULE = "solution.py"
TEST_FILE = "test_solution.py"
HEADER = "import pytest\n\nfrom solution import *\n\n\ndef test_"

_GUIDANCE = {
    "light": "Cover the normal use and a few edge cases: empty input, zero, negative numbers.",
    "thorough": (
        "Cover the normal use and every boundary: empty input, zero, one, negative numbers, "
        "very large values, None, wrong types (expect TypeError or ValueError with "
        "pytest.raises), duplicates and unsorted input. One assertion idea per test."
    ),
}


@dataclass
class TestCandidate:
    source: str
    test_count: int
    report: PytestReport | None = None

    def score(self) -> tuple[int, int, int]:
        report = self.report
        passed = report.passed if report else 0
        failing = (report.failed + report.errors) if report else 10**6
        return (passed, -failing, self.test_count)


@dataclass
class TestsResult:
    best: TestCandidate | None
    tried: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


def prompt_for(code: str, strength: str) -> str:
    return (
        f"# solution.py\n{code.rstrip()}\n\n\n"
        f"# test_solution.py -- pytest unit tests for solution.py.\n"
        f"# {_GUIDANCE[strength]}\n"
        f"{HEADER}"
    )


def _parses(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def extract_tests(generated: str) -> TestCandidate | None:
    """The header + generated text, cut back to complete statements that parse.

    None when no test function survives.
    """
    source = HEADER + generated
    lines = source.split("\n")
    # Top-level statement starts: cut points, tried from the longest down.
    starts = [
        i
        for i, line in enumerate(lines)
        if line and not line[0].isspace() and not line.startswith("#")
    ]
    for cut in [len(lines), *reversed(starts)]:
        candidate = "\n".join(lines[:cut]).rstrip() + "\n"
        tree = _parses(candidate)
        if tree is None:
            continue
        tests = [
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
        if tests:
            return TestCandidate(candidate, len(tests))
        return None
    return None


class TestWriter:
    def __init__(self, completer: CodeCompleter, sandbox: Sandbox) -> None:
        self.completer = completer
        self.sandbox = sandbox

    async def write(
        self,
        status: ModelStatus,
        *,
        code: str,
        strength: str,
        n_candidates: int,
        temperature: float,
        seed: int | None,
        max_tokens: int,
        regenerations: int,
    ) -> TestsResult:
        if strength == "thorough":
            max_tokens *= 2
        prompt = prompt_for(code, strength)
        context = status.max_model_len or 2048
        max_tokens = min(
            max_tokens,
            max(32, context - self.completer.registry.token_counter(status.name).count(prompt) - 8),
        )
        prepared = self.completer.prepare(
            status,
            prefix=prompt,
            suffix="",
            language="python",
            mode="none",
            max_tokens=max_tokens,
            stop=["\nif __name__", "\n# solution.py", "\n# test_solution.py"],
        )
        result = TestsResult(best=None, tried=0)
        candidates: list[TestCandidate] = []
        for round_number in range(regenerations + 1):
            sampling: dict[str, object] = {
                "temperature": temperature if round_number or n_candidates > 1 else 0.0
            }
            if seed is not None:
                sampling["seed"] = seed + round_number
            run = await self.completer.complete(prepared, sampling, n=n_candidates)
            result.prompt_tokens += run.prompt_tokens
            result.completion_tokens += run.completion_tokens
            result.tried += n_candidates
            for index in range(n_candidates):
                candidate = extract_tests(run.texts.get(index, ""))
                if candidate is not None and all(c.source != candidate.source for c in candidates):
                    candidates.append(candidate)
            if candidates:
                break
        reports = await asyncio.gather(
            *(run_pytest(self.sandbox, {MODULE: code}, TEST_FILE, c.source) for c in candidates)
        )
        for candidate, report in zip(candidates, reports, strict=True):
            candidate.report = report
        if candidates:
            result.best = max(candidates, key=TestCandidate.score)
        return result
