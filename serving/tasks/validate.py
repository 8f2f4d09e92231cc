"""Checking generated code before anyone sees it: does it parse, what did it change."""

from __future__ import annotations

import ast
import difflib
import warnings
from dataclasses import dataclass

from serving.tasks.languages import BlockStyle, block_style
from serving.tasks.postprocess import code_chars

_PAIRS = {")": "(", "]": "[", "}": "{"}


def syntax_ok(code: str, language: str) -> bool:
    """Python: it parses. Brace languages: brackets balance outside strings/comments."""
    if language == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not an error
                ast.parse(code)
        except (SyntaxError, ValueError):
            return False
        return True
    stack: list[str] = []
    for _, ch in code_chars(code, block_style(language)):
        if ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS:
            if not stack or stack.pop() != _PAIRS[ch]:
                return False
    return not stack


@dataclass(frozen=True)
class Change:
    diff: str
    start: int  # first line of the original touched (1-based)
    end: int  # last line touched (inclusive)
    changed_lines: int  # lines removed + added: the size of the edit


def describe_change(original: str, fixed: str, path: str = "code") -> Change | None:
    """The unified diff and the touched line range; None when nothing changed."""
    if original == fixed:
        return None
    before = original.splitlines(keepends=True)
    after = fixed.splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(before, after, fromfile=f"a/{path}", tofile=f"b/{path}"))
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    touched = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]
    if not touched:  # differs only in a trailing newline
        return Change(diff, len(before), len(before), 1)
    start = min(i1 for i1, _, _, _ in touched) + 1
    end = max(max(i2, i1 + 1) for i1, i2, _, _ in touched)
    size = sum((i2 - i1) + (j2 - j1) for i1, i2, j1, j2 in touched)
    return Change(diff, start, min(end, max(len(before), 1)), size)


def comment_prefix(language: str) -> str:
    return "#" if block_style(language) is BlockStyle.INDENT else "//"
