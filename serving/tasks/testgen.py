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
import contextlib
import warnings
from dataclasses import dataclass

from serving.request_context import RequestContext
from serving.sandbox import PytestReport, Sandbox, run_pytest
from serving.tasks.completion import CodeCompleter
from serving.upstream.registry import ModelStatus

MODULE = "solution.py"
TEST_FILE = "test_solution.py"
MAX_TESTS = {"light": 5, "thorough": 12}

# A worked example first: a base model continues a pattern far better than
# it follows an instruction. The thorough example shows more boundary kinds.
_EXAMPLES = {
    "light": """# example.py
def add(a, b):
    return a + b


# test_example.py
import pytest

from example import add


def test_add_small_numbers():
    assert add(2, 3) == 5


def test_add_zero():
    assert add(0, 7) == 7


def test_add_negative_numbers():
    assert add(-2, -3) == -5


""",
    "thorough": """# example.py
def average(values):
    if not values:
        raise ValueError("no values")
    return sum(values) / len(values)


# test_example.py
import pytest

from example import average


def test_average_of_several():
    assert average([1, 2, 3]) == 2


def test_average_single_value():
    assert average([5]) == 5


def test_average_empty_raises():
    with pytest.raises(ValueError):
        average([])


def test_average_zero_and_negative():
    assert average([0, -4]) == -2


def test_average_large_values():
    assert average([10**18, 10**18]) == 10**18


def test_average_none_is_a_type_error():
    with pytest.raises(TypeError):
        average(None)


def test_average_wrong_element_type():
    with pytest.raises(TypeError):
        average(["a", 1])


""",
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


def public_names(code: str) -> list[str]:
    """Top-level functions and classes the tests can import (in order)."""
    tree = _parses(code)
    if tree is None:
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n.name for n in tree.body if isinstance(n, kinds) and not n.name.startswith("_")]


def test_header(code: str) -> str:
    names = public_names(code)
    imports = f"from solution import {', '.join(names)}" if names else "from solution import *"
    first = names[0].lower() if names else "solution"
    return f"import pytest\n\n{imports}\n\n\ndef test_{first}_"


def prompt_for(code: str, strength: str) -> str:
    return f"{_EXAMPLES[strength]}# solution.py\n{code.rstrip()}\n\n\n# test_solution.py\n{test_header(code)}"


def _parses(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _asserts(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Assert):
            return True
        if isinstance(child, ast.Attribute) and child.attr in ("raises", "approx", "warns"):
            return True
    return False


def extract_tests(header: str, generated: str, max_tests: int) -> TestCandidate | None:
    """Header + generated text, cut back to complete statements that parse;
    test functions that assert nothing are dropped (they cannot fail), and
    at most ``max_tests`` are kept. None when no test survives."""
    lines = (header + generated).split("\n")
    starts = [
        i
        for i, line in enumerate(lines)
        if line and not line[0].isspace() and not line.startswith("#")
    ]
    for cut in [len(lines), *reversed(starts)]:
        tree = _parses("\n".join(lines[:cut]))
        if tree is None:
            continue
        kept: list[str] = []
        tests = 0
        for node in tree.body:
            decorators = getattr(node, "decorator_list", None)
            start = (decorators[0].lineno if decorators else node.lineno) - 1
            segment = "\n".join(lines[start : node.end_lineno])
            is_test = isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            if is_test:
                if not _asserts(node) or tests >= max_tests:
                    continue
                tests += 1
            kept.append(segment)
        if tests == 0:
            return None
        source = ""
        for segment in kept:
            gap = (
                "\n\n\n" if segment.lstrip().startswith(("def ", "class ", "@", "async ")) else "\n"
            )
            source += (gap if source else "") + segment
        return TestCandidate(source.rstrip() + "\n", tests)
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
        ctx: RequestContext | None = None,
    ) -> TestsResult:
        if strength == "thorough":
            max_tokens *= 2
        prompt = prompt_for(code, strength)
        header = test_header(code)
        counter = self.completer.registry.token_counter(status.name)
        context = status.max_model_len or 2048
        max_tokens = min(max_tokens, max(32, context - counter.count(prompt) - 8))
        prepared = self.completer.prepare(
            status,
            prefix=prompt,
            suffix="",
            language="python",
            mode="none",
            max_tokens=max_tokens,
            stop=["\n# ", "\nif __name__", "```"],
        )
        cap = MAX_TESTS[strength]
        result = TestsResult(best=None, tried=0)
        candidates: list[TestCandidate] = []
        for round_number in range(regenerations + 1):
            # The first answer greedy (the model's best guess), the others sampled.
            greedy = round_number == 0 and n_candidates == 1
            sampling: dict[str, object] = {"temperature": 0.0 if greedy else temperature}
            if seed is not None:
                sampling["seed"] = seed + round_number
            run = await self.completer.start(prepared, sampling, n=n_candidates, ctx=ctx)
            async with contextlib.aclosing(run.deltas()) as deltas:
                async for _ in deltas:
                    # Enough complete tests in every answer: stop generating.
                    if all(t.count("\ndef test_") > cap for t in run.texts.values()):
                        break
            result.prompt_tokens += run.prompt_tokens
            result.completion_tokens += run.completion_tokens
            result.tried += n_candidates
            for index in range(n_candidates):
                candidate = extract_tests(header, run.texts.get(index, ""), cap)
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
