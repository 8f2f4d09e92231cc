"""Error repair with a base model: completion-style prompts, candidates checked.

A base model follows no instructions, so each strategy is a document the model
naturally continues:

* **line**: the code up to the line the error points at (FIM: with the code
  after it as suffix); the model writes that line anew.
* **function**: the code up to the enclosing function's header; the model
  writes the body anew (block mode).
* **file**: a "buggy version / error / fixed version" document; the model
  writes the whole file anew.

Every candidate is parsed (Python) or bracket-checked; with a test it runs
against the test in the sandbox. The answer is the verified candidate with the
smallest diff ("surgical" fixes), else the smallest parsing one; a candidate
that does not parse is returned only if none parses.
"""

from __future__ import annotations

import ast
import asyncio
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from serving.request_context import RequestContext
from serving.sandbox import PytestReport, Sandbox, run_pytest
from serving.tasks.completion import CodeCompleter
from serving.tasks.validate import Change, comment_prefix, describe_change, syntax_ok
from serving.upstream.registry import ModelStatus

_LINE_IN_TRACE = re.compile(r'(?:File "([^"]*)", line (\d+))|(?:\bline (\d+)\b)')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Candidate:
    code: str
    strategy: str
    syntax_ok: bool = False
    change: Change | None = None
    report: PytestReport | None = None

    @property
    def verified(self) -> bool:
        return self.report is not None and self.report.ok


@dataclass
class RepairResult:
    best: Candidate
    tried: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    candidates: list[Candidate] = field(default_factory=list)


def error_line(error: str, code: str, path: str | None) -> int | None:
    """The line of ``code`` the error points at (last matching frame wins)."""
    total = code.count("\n") + 1
    wanted = {PurePosixPath(path).name} if path else set()
    found: int | None = None
    for match in _LINE_IN_TRACE.finditer(error):
        file_name, file_line, bare_line = match.groups()
        number = int(file_line or bare_line)
        if file_name is not None:
            name = PurePosixPath(file_name).name
            is_ours = not wanted or name in wanted or file_name in ("<string>", "<stdin>")
            if not is_ours or "site-packages" in file_name or name.startswith("test_"):
                continue
        if 1 <= number <= total:
            found = number
    return found


def _functions(code: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def suspect_functions(
    code: str, error: str, test: str | None, line: int | None
) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions to rewrite: the one holding the error line, then those the error or test name."""
    functions = _functions(code)
    chosen = []
    if line is not None:
        holding = [f for f in functions if f.lineno <= line <= (f.end_lineno or f.lineno)]
        chosen += sorted(holding, key=lambda f: f.lineno, reverse=True)[:1]
    mentioned = set(_NAME.findall(error + "\n" + (test or "")))
    chosen += [f for f in functions if f.name in mentioned and f not in chosen]
    return chosen


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


class Repairer:
    def __init__(self, completer: CodeCompleter, sandbox: Sandbox) -> None:
        self.completer = completer
        self.sandbox = sandbox

    async def repair(
        self,
        status: ModelStatus,
        *,
        code: str,
        error: str,
        language: str,
        path: str | None,
        test: str | None,
        n_candidates: int,
        temperature: float,
        seed: int | None,
        max_tokens: int,
        ctx: RequestContext | None = None,
    ) -> RepairResult:
        lines = code.split("\n")
        line = error_line(error, code, path)
        plans: list[tuple[str, str, str, str, str]] = []  # (strategy, prefix, suffix, mode, head)
        if line is not None:
            before = "\n".join(lines[: line - 1]) + ("\n" if line > 1 else "")
            after = "\n" + "\n".join(lines[line:]) if line < len(lines) else ""
            indent = _indent_of(lines[line - 1])
            plans.append(("line", before + indent, after, "line", before + indent))
        if language == "python":
            for function in suspect_functions(code, error, test, line)[:2]:
                header_end = function.body[0].lineno - 1 if function.body else function.lineno
                end = function.end_lineno or function.lineno
                head = "\n".join(lines[:header_end]) + "\n"
                rest = "\n" + "\n".join(lines[end:]) if lines[end:] else ""
                plans.append(("function", head, rest, "block", head))
        plans.append(("file", *self._file_prompt(code, error, language, path), "none", ""))

        sem_n = max(n_candidates, 1)
        per_plan = [1] * min(len(plans), sem_n)
        for extra in range(sem_n - len(per_plan)):
            per_plan[extra % len(per_plan)] += 1
        results = await asyncio.gather(
            *(
                self._generate(
                    status, plan, count, temperature, seed, max_tokens, language, code, ctx
                )
                for plan, count in zip(plans, per_plan, strict=False)
            )
        )
        result = RepairResult(best=Candidate(code, "original"), tried=0)
        candidates: list[Candidate] = []
        seen = {code}
        for generated, prompt_tokens, completion_tokens in results:
            result.prompt_tokens += prompt_tokens
            result.completion_tokens += completion_tokens
            for candidate in generated:
                if candidate.code in seen:
                    continue
                seen.add(candidate.code)
                candidate.syntax_ok = syntax_ok(candidate.code, language)
                candidate.change = describe_change(code, candidate.code, path or "code")
                candidates.append(candidate)
        result.tried = len(candidates)
        if test and language == "python":
            module = _module_file(path)
            parsing = [c for c in candidates if c.syntax_ok]
            reports = await asyncio.gather(
                *(
                    run_pytest(self.sandbox, {module: c.code}, "test_repair.py", test)
                    for c in parsing
                )
            )
            for candidate, report in zip(parsing, reports, strict=True):
                candidate.report = report
        result.candidates = candidates
        if candidates:
            result.best = min(candidates, key=_rank)
        return result

    @staticmethod
    def _file_prompt(code: str, error: str, language: str, path: str | None) -> tuple[str, str]:
        mark = comment_prefix(language)
        name = path or f"the {language} file"
        error_lines = "\n".join(f"{mark} {ln}" for ln in error.strip().splitlines()[-12:])
        prefix = (
            f"{mark} Buggy version of {name}:\n{code.rstrip()}\n\n"
            f"{mark} Running it fails with:\n{error_lines}\n\n"
            f"{mark} Fixed version of {name} (the same code with the bug fixed, nothing else changed):\n"
        )
        return prefix, ""

    async def _generate(
        self,
        status: ModelStatus,
        plan: tuple[str, str, str, str, str],
        count: int,
        temperature: float,
        seed: int | None,
        max_tokens: int,
        language: str,
        code: str,
        ctx: RequestContext | None,
    ) -> tuple[list[Candidate], int, int]:
        strategy, prefix, suffix, mode, head = plan
        if strategy == "file":
            max_tokens = max(
                max_tokens, self.completer.registry.token_counter(status.name).count(code) + 32
            )
        prepared = self.completer.prepare(
            status,
            prefix=prefix,
            suffix=suffix,
            language=language,
            mode=mode,  # type: ignore[arg-type]
            max_tokens=min(max_tokens, max(16, (status.max_model_len or 2048) // 2)),
            stop=[
                f"{comment_prefix(language)} Buggy version",
                f"{comment_prefix(language)} Running it",
                f"{comment_prefix(language)} Fixed version",
            ]
            if strategy == "file"
            else None,
        )
        candidates: list[Candidate] = []
        # One greedy answer first (the model's best guess), the rest sampled.
        runs = (
            [(0.0, 1)] if count == 1 or temperature == 0 else [(0.0, 1), (temperature, count - 1)]
        )
        prompt_tokens = completion_tokens = 0
        for run_temperature, n in runs:
            sampling: dict[str, object] = {"temperature": run_temperature}
            if seed is not None:
                sampling["seed"] = seed
            run = await self.completer.complete(prepared, sampling, n=n, ctx=ctx)
            prompt_tokens += run.prompt_tokens
            completion_tokens += run.completion_tokens
            for index in range(n):
                text = run.texts.get(index, "")
                if strategy == "file":
                    fixed = text.strip("\n") + ("\n" if code.endswith("\n") else "")
                elif mode == "block":  # a body under the header: no blank line first
                    fixed = head + text.lstrip("\n") + suffix
                else:
                    fixed = head + text + suffix
                candidates.append(Candidate(fixed, strategy))
        return candidates, prompt_tokens, completion_tokens


def _module_file(path: str | None) -> str:
    name = PurePosixPath(path).name if path else ""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", name):
        return name
    return "solution.py"


def _rank(candidate: Candidate) -> tuple[int, int, int, int]:
    """Lower is better: verified, parses, changes something, smallest edit."""
    size = candidate.change.changed_lines if candidate.change else 10**9
    return (
        0 if candidate.verified else 1,
        0 if candidate.syntax_ok else 1,
        0 if candidate.change else 1,
        size,
    )
