"""Percentiles and summaries (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(
    values: Sequence[float], qs: Sequence[float] = (50, 90, 99)
) -> dict[str, float | None]:
    return {f"p{q:g}": percentile(values, q) for q in qs}


def summarize(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p90/p99 and mean, scaled (default: seconds to ms), rounded."""
    result: dict[str, float | None] = {}
    for key, value in percentiles(values).items():
        result[key] = round(value * scale, 3) if value is not None else None
    result["mean"] = round(sum(values) / len(values) * scale, 3) if values else None
    result["n"] = len(values)
    return result
