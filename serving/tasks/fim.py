"""Fill-in-the-middle: templates (data, per model family), rendering, token budgets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

_PLACEHOLDER = re.compile(r"\{(prefix|suffix)\}")
NO_FIM = "none"  # the model has no FIM format: prefix-only generation + suffix-aware trimming


@dataclass(frozen=True)
class FimTemplate:
    name: str
    description: str
    template: str
    tokens: tuple[str, ...]
    stop: tuple[str, ...]

    def render(self, prefix: str, suffix: str) -> str:
        # Not str.format (code is full of braces), and one pass over the
        # template only: "{suffix}" inside the user's code must stay as it is.
        parts = {"prefix": prefix, "suffix": suffix}
        return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], self.template)

    @property
    def overhead_text(self) -> str:
        """The template without prefix and suffix (what the budget must also hold)."""
        return self.render("", "")


@cache
def fim_templates() -> dict[str, FimTemplate]:
    """Every known template, by family name."""
    text = resources.files("serving.tasks").joinpath("data/fim_templates.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    return {
        name: FimTemplate(
            name=name,
            description=str(entry["description"]),
            template=str(entry["template"]),
            tokens=tuple(entry["tokens"]),
            stop=tuple(entry["stop"]),
        )
        for name, entry in raw.items()
    }


def fim_template(name: str) -> FimTemplate | None:
    """The template called ``name``; None for ``none`` (no FIM)."""
    if name == NO_FIM:
        return None
    return fim_templates()[name]


def template_names() -> list[str]:
    return [NO_FIM, *fim_templates()]


# --------------------------------------------------------------------------- budgets

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
