"""Choosing the replica that serves a request."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence

from serving.engines.types import ReplicaInfo


class RoundRobinRouter:
    """Each model's ready replicas in turn."""

    def __init__(self) -> None:
        self._turns: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)

    def pick(self, model: str, candidates: Sequence[ReplicaInfo]) -> ReplicaInfo:
        if not candidates:
            raise ValueError("no candidates")
        ordered = sorted(candidates, key=lambda r: r.replica_id)
        return ordered[next(self._turns[model]) % len(ordered)]
