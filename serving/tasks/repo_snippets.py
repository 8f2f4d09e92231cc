"""Repository context for a completion: snippets of other files, rendered in
the model family's repository format (``serving.fim_templates.RepoFormat``)
and fitted to the tokens left once the cursor's prefix and suffix are in.

Priority: declarations, then snippets, each kind by the client's order
(``rank``: lower = more relevant / more recent). A snippet that does not fit
whole keeps whole lines from its start. In the prompt the order is reversed:
least relevant first, most relevant last, next to the file being edited (see
the header of ``serving/data/fim_templates.yaml`` for the sources).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from serving.fim_templates import RepoFormat

CountTokens = Callable[[str], int]
_KIND_ORDER = {"declaration": 0, "snippet": 1}


@dataclass(frozen=True)
class Snippet:
    path: str
    text: str
    kind: Literal["declaration", "snippet"]  # declarations rank above snippets
    rank: int = 0  # within a kind: lower = more recent / more relevant (the client's order)


@dataclass(frozen=True)
class FittedContext:
    text: str  # the repo part (header + files + current-file separator); "" when none fits
    kept: int  # snippets kept (whole or trimmed)
    dropped: int  # snippets dropped (duplicates of the current file, over budget, empty)
    tokens: int  # tokens of `text` and `prefix_head`, by `count`
    # Goes at the start of the FIM prefix (StarCoder2: the current file's path); "" mostly.
    prefix_head: str = ""


@dataclass(frozen=True)
class _Candidate:
    path: str
    text: str


def normalise_path(path: str) -> str:
    """``./src\\a.py`` -> ``src/a.py``: how the client's paths are compared and shown."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _candidates(
    snippets: Sequence[Snippet], current_path: str | None, current_text: str
) -> list[_Candidate]:
    """The snippets worth sending, most important first."""
    order = sorted(
        range(len(snippets)),
        key=lambda i: (_KIND_ORDER[snippets[i].kind], snippets[i].rank, i),
    )
    current = normalise_path(current_path) if current_path else None
    seen: set[tuple[str, str]] = set()
    kept: list[_Candidate] = []
    for i in order:
        snippet = snippets[i]
        path, body = normalise_path(snippet.path), snippet.text.strip()
        if not body:
            continue  # empty
        if current is not None and path == current:
            continue  # the file being edited: its prefix and suffix are there already
        if body in current_text:
            continue  # already in the prompt
        if (path, snippet.text) in seen:
            continue  # sent twice
        seen.add((path, snippet.text))
        kept.append(_Candidate(path, snippet.text))
    return kept


def _lines(text: str) -> list[str]:
    """``text`` as lines that keep their "\n" (only "\n" ends a line here)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _trim(
    fmt: RepoFormat, candidate: _Candidate, room: int, count: CountTokens
) -> tuple[str, int] | None:
    """The most whole lines from the start of the candidate whose rendering takes
    at most ``room`` tokens (and its tokens), or None if not even one line fits.
    Binary search over the number of lines: O(log lines) calls of ``count``."""
    lines = _lines(candidate.text)

    def render(n: int) -> str:
        return fmt.render_file(candidate.path, "".join(lines[:n]))

    def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
        """The largest n in [low, high] that fits, given that ``low`` fits."""
        while low < high:
            mid = (low + high + 1) // 2
            if fits(mid):
                low = mid
            else:
                high = mid - 1
        return low

    high = len(lines) - 1  # all of them did not fit
    if high < 1:
        return None
    # UTF-8 bytes bound the tokens from above: this many lines fit for sure.
    low = largest(lambda n: n == 0 or len(render(n).encode()) <= room, 0, high)
    counted: dict[int, int] = {}

    def fits(n: int) -> bool:
        counted[n] = count(render(n))
        return counted[n] <= room

    if low == 0:
        if not fits(1):
            return None
        low = 1
    best = largest(fits, low, high)
    text = render(best)
    return text, counted[best] if best in counted else count(text)


def fit_snippets(
    snippets: Sequence[Snippet],
    *,
    fmt: RepoFormat,
    current_path: str | None,
    current_text: str,
    repo: str | None,
    budget: int,
    count: CountTokens,
) -> FittedContext:
    """The repository context to put before the FIM prompt, at most ``budget``
    tokens by ``count`` (header and separators included).

    Dropped: empty snippets, the current file's own (same path after
    normalising ``./`` and backslashes, or text already in ``current_text``),
    repeats of a (path, text), and what does not fit. ``count`` is called
    O(len(snippets) + log lines) times: once per snippet considered, a binary
    search for the one snippet that is trimmed, and once for the result (at
    most twice per snippet when snippets cannot keep even their first line)."""
    candidates = _candidates(snippets, current_path, current_text)
    nothing = FittedContext(text="", kept=0, dropped=len(snippets), tokens=0)
    if not candidates or budget <= 0:
        return nothing
    current_path = normalise_path(current_path) if current_path else None
    header = fmt.render_header(repo)
    current = fmt.render_current(current_path)
    head = fmt.render_current_prefix(current_path)
    rendered = [fmt.render_file(c.path, c.text) for c in candidates]

    def assemble(parts: list[str]) -> str:
        return header + "".join(reversed(parts)) + current  # most important last

    head_tokens = count(head) if head else 0
    everything = assemble(rendered)
    if len(everything.encode()) + len(head.encode()) <= budget:  # fits for sure
        tokens = count(everything) + head_tokens
        if tokens <= budget:  # (unless a counter gives more tokens than bytes)
            return FittedContext(
                text=everything,
                kept=len(candidates),
                dropped=len(snippets) - len(candidates),
                tokens=tokens,
                prefix_head=head,
            )

    room = budget - head_tokens - (count(header + current) if header or current else 0)
    kept: list[str] = []  # rendered files, most important first
    trimmed = False
    for candidate, whole in zip(candidates, rendered, strict=True):
        if room <= 0:
            break
        tokens = count(whole)
        if tokens <= room:
            kept.append(whole)
            room -= tokens
        elif not trimmed:  # one binary search at most: count stays O(n + log lines)
            fitted = _trim(fmt, candidate, room, count)
            if fitted is not None:
                kept.append(fitted[0])
                room -= fitted[1]
                trimmed = True

    # Counted apart, the pieces may tokenize a little differently than joined:
    # check the whole, and drop the least important piece while it is over.
    while kept:
        text = assemble(kept)
        tokens = count(text) + head_tokens
        if tokens <= budget:
            return FittedContext(
                text=text,
                kept=len(kept),
                dropped=len(snippets) - len(kept),
                tokens=tokens,
                prefix_head=head,
            )
        kept.pop()
    return nothing
