"""Real code as prompts, and what simulated developers ask for.

Prompts come from a source tree (default: the Python standard library of the
running interpreter), so prefixes and suffixes are real code. Everything is
drawn from one seeded RNG: the same seed gives the same workload.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Task = Literal["completion", "repair", "tests"]
TASKS: tuple[Task, ...] = ("completion", "repair", "tests")


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    functions: tuple[str, ...]  # top-level function sources (repair and test inputs)


def default_source_tree() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_of(lines: list[str], node: ast.stmt) -> str:
    """What ``ast.get_source_segment`` gives for ``node``, from the file's lines
    split once (that function splits the whole file again for every node: it
    was 19 of the 20 s this corpus took to load)."""
    end_line = node.end_lineno or node.lineno
    end_col = node.end_col_offset if node.end_col_offset is not None else len(lines[end_line - 1])
    first, last = node.lineno - 1, end_line - 1
    if first == last:
        return lines[first].encode()[node.col_offset : end_col].decode()
    head = lines[first].encode()[node.col_offset :].decode()
    tail = lines[last].encode()[:end_col].decode()
    return head + "".join(lines[first + 1 : last]) + tail


def load_corpus(root: Path, *, max_files: int = 400, seed: int = 0) -> list[SourceFile]:
    """Python files of ``root`` that parse, with their small top-level functions."""
    skip = {"test", "tests", "idle_test", "site-packages"}
    candidates = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    random.Random(seed).shuffle(candidates)
    corpus: list[SourceFile] = []
    for path in candidates:
        if len(corpus) >= max_files:
            break
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        if len(text) < 3000:
            continue
        lines = text.splitlines(keepends=True)
        functions = tuple(
            source
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
            and 5 <= (source := _source_of(lines, node)).count("\n") <= 40
        )
        corpus.append(SourceFile(str(path.relative_to(root)), text, functions))
    if not corpus:
        raise SystemExit(f"no usable Python files under {root}")
    return corpus


@dataclass(frozen=True)
class FimPrompt:
    document: str
    prefix: str
    suffix: str
    max_tokens: int


@dataclass(frozen=True)
class RepairPrompt:
    code: str
    error: str


@dataclass(frozen=True)
class Mix:
    completion: float = 0.80
    repair: float = 0.15
    tests: float = 0.05

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``completion=0.8,repair=0.15,tests=0.05``."""
        shares = {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
        unknown = set(shares) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) in --mix: {', '.join(sorted(unknown))}")
        mix = cls(**shares)
        if abs(mix.completion + mix.repair + mix.tests - 1.0) > 1e-6:
            raise ValueError("--mix shares must add up to 1")
        return mix

    def pick(self, rng: random.Random) -> Task:
        roll = rng.random()
        if roll < self.completion:
            return "completion"
        if roll < self.completion + self.repair:
            return "repair"
        return "tests"


class PromptFactory:
    def __init__(
        self,
        corpus: list[SourceFile],
        rng: random.Random,
        *,
        prefix_chars: tuple[int, int] = (2000, 8000),
        suffix_chars: int = 1500,
        max_tokens: tuple[int, int] = (16, 64),
    ) -> None:
        self.corpus = corpus
        self.rng = rng
        self.prefix_chars = prefix_chars
        self.suffix_chars = suffix_chars
        self.max_tokens = max_tokens
        self.with_functions = [f for f in corpus if f.functions] or corpus

    def document(self) -> SourceFile:
        return self.rng.choice(self.corpus)

    def fim(self, source: SourceFile, cursor: int | None = None) -> FimPrompt:
        """A cursor in ``source`` (at a line start), real code before and after it."""
        text = source.text
        if cursor is None:
            low = min(self.prefix_chars[0], len(text) // 2)
            cursor = self.rng.randint(low, max(low, len(text) - 200))
        cursor = text.rfind("\n", 0, cursor) + 1
        size = self.rng.randint(*self.prefix_chars)
        prefix = text[max(0, cursor - size) : cursor]
        line_end = text.find("\n", cursor)
        # The developer is mid-line: half of the line is typed.
        typed = text[cursor : cursor + max(0, (line_end - cursor) // 2)] if line_end > 0 else ""
        return FimPrompt(
            document=source.path,
            prefix=prefix + typed,
            suffix=text[cursor + len(typed) : cursor + len(typed) + self.suffix_chars],
            max_tokens=self.rng.randint(*self.max_tokens),
        )

    def keystroke(self, prompt: FimPrompt, source: SourceFile) -> FimPrompt:
        """The same document a few characters later (the developer kept typing)."""
        start = source.text.find(prompt.suffix[:200]) if prompt.suffix else -1
        typed = prompt.suffix[: self.rng.randint(1, 4)] if start >= 0 else ""
        return FimPrompt(
            document=prompt.document,
            prefix=prompt.prefix + typed,
            suffix=prompt.suffix[len(typed) :],
            max_tokens=prompt.max_tokens,
        )

    def function(self) -> str:
        source = self.rng.choice(self.with_functions)
        return self.rng.choice(source.functions) if source.functions else source.text[:1500]

    def repair(self) -> RepairPrompt:
        code = self.function()
        names = sorted({n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)})
        if names:
            victim = self.rng.choice(names)
            broken = code.replace(victim, victim + "_", 1) if code.count(victim) > 1 else code
        else:
            victim, broken = "value", code
        error = (
            "Traceback (most recent call last):\n"
            '  File "module.py", line 3, in <module>\n'
            f"NameError: name '{victim}_' is not defined"
        )
        return RepairPrompt(code=broken, error=error)
