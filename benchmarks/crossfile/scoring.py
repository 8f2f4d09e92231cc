"""Scoring a completion against the rest of the line, and the with/without comparison.

* exact match: the completion's first line, trailing blanks cut, is the target;
* edit similarity: 1 - Levenshtein distance / the longer length (characters,
  our own Levenshtein below, not difflib's ratio);
* identifier match: the called name, the first argument's name and every
  keyword name of the target's call appear as whole words in the first line.

The comparison pairs the two answers of each case (both must have come back):
means without and with context, the lift, how many cases got better or worse,
a two-sided sign test on those counts, and a seeded bootstrap 95% interval of
the lift.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

from benchmarks.common.stats import percentile
from serving.training.evaluate import levenshtein

METRICS = ("exact_match", "edit_similarity", "identifier_match")
ARMS = ("without", "with")
_TIE = 1e-9


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def exact_match(completion: str, target: str) -> bool:
    return first_line(completion) == target.rstrip()


def edit_similarity(completion: str, target: str) -> float:
    a, b = first_line(completion), target.rstrip()
    longest = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / longest if longest else 1.0


def identifier_match(completion: str, identifiers: Sequence[str]) -> bool:
    line = first_line(completion)
    return all(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line) for name in identifiers)


def score(completion: str, target: str, identifiers: Sequence[str]) -> dict[str, float]:
    return {
        "exact_match": float(exact_match(completion, target)),
        "edit_similarity": round(edit_similarity(completion, target), 4),
        "identifier_match": float(identifier_match(completion, identifiers)),
    }


# --------------------------------------------------------------------------- comparison


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test: how likely so lopsided a split is by chance."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(better, worse) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(
    differences: Sequence[float], seed: int, resamples: int = 2000
) -> tuple[float, float] | None:
    """95% interval of the mean of ``differences`` (percentile bootstrap)."""
    if not differences:
        return None
    rng = random.Random(seed)
    n = len(differences)
    means = [sum(rng.choices(differences, k=n)) / n for _ in range(resamples)]
    low, high = percentile(means, 2.5), percentile(means, 97.5)
    assert low is not None and high is not None
    return round(low, 4), round(high, 4)


def compare(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The report of a run: ``records`` hold per case ``without`` and ``with``,
    each either scores (``METRICS``) or an ``error``."""
    errors = {arm: sum("error" in r[arm] for r in records) for arm in ARMS}
    paired = [r for r in records if not any("error" in r[arm] for arm in ARMS)]
    metrics: dict[str, Any] = {}
    for metric in METRICS:
        without = [r["without"][metric] for r in paired]
        with_ = [r["with"][metric] for r in paired]
        differences = [b - a for a, b in zip(without, with_, strict=True)]
        better = sum(d > _TIE for d in differences)
        worse = sum(d < -_TIE for d in differences)
        mean_without, mean_with = _mean(without), _mean(with_)
        metrics[metric] = {
            "without": mean_without,
            "with": mean_with,
            "lift": round(mean_with - mean_without, 4)
            if mean_with is not None and mean_without is not None
            else None,
            "better": better,
            "worse": worse,
            "same": len(differences) - better - worse,
            "sign_test_p": float(f"{sign_test(better, worse):.3g}"),
            "lift_ci95": bootstrap_ci(differences, seed),
        }
    return {"cases": len(records), "paired": len(paired), "errors": errors, "metrics": metrics}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
