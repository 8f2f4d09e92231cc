"""Post-processing of code completions: where a suggestion should end, and what
of it the suffix already has.

Rules, in order: stop strings; the mode's end (``line``: end of the first line
with content; ``block``: end of the current block, by indentation for Python
and by braces for C-like languages); a generated line that repeats the
suffix's first line ends the completion before it; a tail that repeats the
start of the suffix is removed; closing brackets the suffix already has are
removed; trailing whitespace goes. A completion that only echoes the suffix
becomes empty.

:class:`StreamingPostProcessor` applies the same rules to a stream, emitting
only text that no later token can take back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from serving.tasks.languages import BlockStyle, block_style

Mode = Literal["line", "block", "none"]  # none: no end-of-line/block rule (raw /v1/completions)
_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}
_OPENER_OF = {v: k for k, v in _CLOSER_OF.items()}
_MIN_OVERLAP = 3  # non-blank characters an overlap needs to count as one


@dataclass(frozen=True)
class InsertionPoint:
    """Where a suggestion is inserted: the text around the cursor, the
    language, how far the suggestion may reach (mode) and where it stops."""

    prefix: str
    suffix: str
    language: str | None
    mode: Mode
    stop: tuple[str, ...] = ()

    @property
    def style(self) -> BlockStyle:
        return block_style(self.language) if self.language else BlockStyle.BRACES

    @cached_property
    def prefix_brace_depth(self) -> int:
        """Braces open at the cursor (computed once per request)."""
        depth = 0
        for _, ch in code_chars(self.prefix, BlockStyle.BRACES):
            depth += (ch == "{") - (ch == "}")
        return depth


@dataclass(frozen=True)
class Processed:
    text: str
    done: bool  # a rule ended the completion: no need to generate more


def choose_mode(requested: str, prefix: str, suffix: str) -> Mode:
    """``auto``: mid-line (text after the cursor on its line) -> line, else block."""
    if requested in ("line", "block", "none"):
        return requested  # type: ignore[return-value]
    rest_of_line = suffix.split("\n", 1)[0]
    return "line" if rest_of_line.strip() else "block"


# --------------------------------------------------------------------------- scanning


def code_chars(text: str, style: BlockStyle) -> Iterator[tuple[int, str]]:
    """(index, char) of characters outside strings and comments."""
    i, n = 0, len(text)
    comment = "#" if style is BlockStyle.INDENT else "//"
    quotes = ("'", '"') if style is BlockStyle.INDENT else ("'", '"', "`")
    while i < n:
        ch = text[i]
        if text.startswith(comment, i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if style is BlockStyle.BRACES and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch in quotes:
            triple = style is BlockStyle.INDENT and text.startswith(ch * 3, i)
            delim = ch * 3 if triple else ch
            j = i + len(delim)
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(delim, j):
                    break
                if text[j] == "\n" and not triple and ch != "`":
                    break  # unterminated single-line string: stop at the line end
                j += 1
            i = j + len(delim)
            continue
        yield i, ch
        i += 1


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _strip_comment(line: str, style: BlockStyle) -> str:
    last = 0
    for index, _ in code_chars(line, style):
        last = index + 1
    return line[:last].rstrip()


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts += [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    return starts


# --------------------------------------------------------------------------- rules


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(cuts) if cuts else None


def _line_end(text: str) -> int | None:
    """End of the first line that has content (leading blank lines belong to it)."""
    seen_content = False
    for index, ch in enumerate(text):
        if ch == "\n" and seen_content:
            return index
        if not ch.isspace():
            seen_content = True
    return None


def _python_block_end(text: str, prefix: str) -> int | None:
    style = BlockStyle.INDENT
    current = prefix.rsplit("\n", 1)[-1]
    starts = _line_starts(text)
    lines = text.split("\n")
    head = current + lines[0]
    first = 1
    if not head.strip():  # cursor on an empty line that the model also leaves empty
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first >= len(lines):
            return None
        head = lines[first]
        first += 1
    anchor = _indent(head)
    # "def f():|" -- the cursor ends a header: the block is its body. On a
    # blank line the block is the one the cursor is in (until a dedent).
    opener = bool(current.strip()) and _strip_comment(head, style).endswith(":")
    depth = 0
    depth_at_line = [0] * len(lines)
    # Bracket depth at the start of every line, so continuation lines never end a block.
    line_of = 0
    for index, ch in code_chars(text, style):
        while line_of + 1 < len(starts) and starts[line_of + 1] <= index:
            line_of += 1
            depth_at_line[line_of] = depth
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    for rest in range(line_of + 1, len(lines)):
        depth_at_line[rest] = depth
    for number in range(first, len(lines)):
        line = lines[number]
        if not line.strip() or depth_at_line[number] > 0:
            continue
        if number == len(lines) - 1 and not line.strip(" \t"):
            continue
        indent = _indent(line)
        ends = indent <= anchor if opener else (indent < anchor or (anchor == 0 and indent == 0))
        if ends:
            return starts[number] - 1  # the newline before the line that ends the block
    return None


def _brace_block_end(text: str, point: InsertionPoint) -> int | None:
    """On a line with code ("for (...) |"): the block the completion opens. On a
    blank line inside a block: the rest of that block, up to its closing brace
    (which the suffix has). On a blank line at top level: one whole definition."""
    cursor_line_has_code = bool(point.prefix.rsplit("\n", 1)[-1].strip())
    one_block = cursor_line_has_code or point.prefix_brace_depth <= 0
    depth = 0
    opened = False
    for index, ch in code_chars(text, BlockStyle.BRACES):
        if ch == "{":
            depth += 1
            opened = True
        elif ch == "}":
            depth -= 1
            if depth < 0:  # closes a block the prefix opened: the suffix has that brace
                line_start = text.rfind("\n", 0, index)
                return max(line_start, 0)
            if depth == 0 and opened and one_block:
                end = text.find("\n", index)
                return end if end >= 0 else None
    return None


def _block_end(text: str, point: InsertionPoint) -> int | None:
    if point.style is BlockStyle.INDENT:
        return _python_block_end(text, point.prefix)
    return _brace_block_end(text, point)


def _significant(line: str) -> bool:
    return sum(ch.isalnum() for ch in line) >= 2


def _suffix_line_repeat(text: str, suffix: str) -> int | None:
    """Where a generated line repeats the suffix's first significant line."""
    target = next((ln.strip() for ln in suffix.split("\n") if ln.strip()), "")
    if not _significant(target):
        return None
    starts = _line_starts(text)
    for number, line in enumerate(text.split("\n")):
        if number == 0:
            continue  # the first line continues the cursor's line
        if (
            line.strip() == target
            and number < len(starts)
            and "\n" in text[starts[number] :] + "\n"
        ):
            return starts[number] - 1
    return None


def _drop_suffix_overlap(text: str, suffix: str) -> str:
    """Remove a tail of ``text`` that repeats the start of ``suffix``."""
    if not suffix.strip() or not text:
        return text
    rest_of_line = suffix.split("\n", 1)[0]  # what follows the cursor on its line
    for head_source in (suffix, suffix.lstrip()):
        longest = min(len(text), len(head_source), 4096)
        trimmed = text.rstrip() if head_source is not suffix else text
        for k in range(longest, 0, -1):
            head = head_source[:k]
            if not trimmed.endswith(head):
                continue
            # Short overlaps count only when they repeat the whole rest of the
            # cursor's line (e.g. ");"): a lone ")" may well be the model's own.
            if (
                len(head.strip()) >= _MIN_OVERLAP
                or k == len(head_source)
                or (head.rstrip("\n") == rest_of_line and rest_of_line.strip())
            ):
                return trimmed[: len(trimmed) - k]
    return text


def _balance_with_suffix(text: str, suffix: str, style: BlockStyle) -> str:
    """Drop trailing closers the completion did not open when the suffix starts with them."""
    rest = suffix.lstrip()
    while True:
        stripped = text.rstrip()
        if not stripped or stripped[-1] not in _OPENER_OF or not rest.startswith(stripped[-1]):
            return text
        closer = stripped[-1]
        opener = _OPENER_OF[closer]
        balance = 0
        for _, ch in code_chars(stripped, style):
            if ch == opener:
                balance += 1
            elif ch == closer:
                balance -= 1
        if balance >= 0:
            return text
        text = stripped[:-1]
        rest = rest[1:].lstrip()


def postprocess(text: str, point: InsertionPoint, *, final: bool = True) -> Processed:
    """Apply every rule to the generated ``text`` (all of it so far)."""
    done = False
    cut = _cut_at_stop(text, point.stop)
    if cut is not None:
        text, done = text[:cut], True
    if point.mode == "line":
        mode_end = _line_end(text)
    elif point.mode == "block":
        mode_end = _block_end(text, point)
    else:
        mode_end = None
    if mode_end is not None:
        text, done = text[:mode_end], True
    repeat = _suffix_line_repeat(text, point.suffix)
    if repeat is not None:
        text, done = text[:repeat], True
    if not (final or done):
        return Processed(text, False)
    text = _drop_suffix_overlap(text, point.suffix)
    text = _balance_with_suffix(text, point.suffix, point.style)
    text = text.rstrip()
    if not text.strip():
        text = ""
    return Processed(text, done)


class StreamingPostProcessor:
    """Feed generated deltas; get back text safe to show now (never retracted)."""

    def __init__(self, point: InsertionPoint) -> None:
        self.point = point
        self.generated = ""
        self.emitted = ""
        self.done = False

    def _emit_up_to(self, text: str) -> str:
        if not text.startswith(self.emitted) or len(text) <= len(self.emitted):
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta

    def feed(self, delta: str) -> str:
        if self.done:
            return ""
        self.generated += delta
        result = postprocess(self.generated, self.point, final=False)
        if result.done:
            self.done = True
            return self._emit_up_to(postprocess(self.generated, self.point, final=True).text)
        # Hold back the partial last line and the last complete one: later
        # tokens may still trim them (suffix overlap, brackets, stop strings).
        safe = result.text
        for _ in range(2):
            newline = safe.rfind("\n")
            safe = safe[: max(newline, 0)]
        return self._emit_up_to(safe.rstrip())

    def finish(self) -> str:
        """The rest, once generation has ended."""
        if self.done:
            return ""
        self.done = True
        return self._emit_up_to(postprocess(self.generated, self.point, final=True).text)

    @property
    def text(self) -> str:
        return self.emitted
