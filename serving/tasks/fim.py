"""Fill-in-the-middle token budgets: prefix and suffix trimmed at line
boundaries to fit the model's context (the templates themselves are a leaf,
``serving.fim_templates``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Trimmed:
    prefix: str
    suffix: str
    prefix_tokens: int
    suffix_tokens: int
    trimmed: bool


def _keep_tail_lines(text: str, budget: int, count: CountTokens) -> str:
    """The longest run of whole lines from the end of ``text`` within ``budget`` tokens."""
    if budget <= 0:
        return ""
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = count(line)
        if used + cost > budget:
            if not kept:  # one huge line: keep its end, character-wise
                return _cut_chars(line, budget, count, from_end=True)
            break
        kept.append(line)
        used += cost
    return "".join(reversed(kept))


def _keep_head_lines(text: str, budget: int, count: CountTokens) -> str:
    """The longest run of whole lines from the start of ``text`` within ``budget`` tokens."""
    if budget <= 0:
        return ""
    kept: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        cost = count(line)
        if used + cost > budget:
            if not kept:
                return _cut_chars(line, budget, count, from_end=False)
            break
        kept.append(line)
        used += cost
    return "".join(kept)


def _cut_chars(line: str, budget: int, count: CountTokens, *, from_end: bool) -> str:
    low, high = 0, len(line)  # binary search on the number of characters kept
    while low < high:
        mid = (low + high + 1) // 2
        piece = line[len(line) - mid :] if from_end else line[:mid]
        if count(piece) <= budget:
            low = mid
        else:
            high = mid - 1
    return line[len(line) - low :] if from_end else line[:low]


def fit_to_budget(
    prefix: str,
    suffix: str,
    *,
    budget: int,
    count: CountTokens,
    prefix_share: float = 0.7,
) -> Trimmed:
    """Trim prefix (from the left) and suffix (from the right) at line boundaries
    so that together they take at most ``budget`` tokens. A side shorter than
    its share leaves the rest to the other side."""
    prefix_tokens = count(prefix)
    suffix_tokens = count(suffix) if suffix else 0
    if prefix_tokens + suffix_tokens <= budget:
        return Trimmed(prefix, suffix, prefix_tokens, suffix_tokens, trimmed=False)
    budget = max(budget, 0)
    prefix_budget = int(budget * prefix_share)
    suffix_budget = budget - prefix_budget
    if suffix_tokens < suffix_budget:
        prefix_budget = budget - suffix_tokens
    elif prefix_tokens < prefix_budget:
        suffix_budget = budget - prefix_tokens
    new_prefix = (
        prefix if prefix_tokens <= prefix_budget else _keep_tail_lines(prefix, prefix_budget, count)
    )
    new_suffix = (
        suffix if suffix_tokens <= suffix_budget else _keep_head_lines(suffix, suffix_budget, count)
    )
    return Trimmed(
        new_prefix,
        new_suffix,
        count(new_prefix),
        count(new_suffix) if new_suffix else 0,
        trimmed=True,
    )
