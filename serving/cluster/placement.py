"""What a replica asks of the Ray cluster, and a clear message when it cannot have it.

* CPU engine: one bundle of ``num_cpus`` CPUs, kept reserved for the actor.
* GPU engine, one GPU: one bundle of CPUs + 1 GPU, kept reserved (Ray then
  sets ``CUDA_VISIBLE_DEVICES`` for the actor and its engine).
* GPU engine over several GPUs (tensor/pipeline parallel): the actor's CPU
  bundle plus one bundle per GPU, packed on one node for tensor parallelism
  (STRICT_PACK) or packed as far as possible across nodes for pipeline
  parallelism (PACK). vLLM's Ray executor creates its own placement group
  for its workers, so ours only proves the cluster can hold the replica
  (and makes a Ray autoscaler add nodes) before the engine starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from serving.config import ReplicaGroupConfig


@dataclass(frozen=True)
class PlacementPlan:
    bundles: list[dict[str, float]]
    strategy: str
    actor_options: dict[str, Any] = field(default_factory=dict)
    keep_reserved: bool = True

    def totals(self) -> dict[str, float]:
        total: Counter[str] = Counter()
        for bundle in self.bundles:
            total.update(bundle)
        return dict(total)

    def describe(self) -> str:
        shown = ", ".join(_fmt(b) for b in self.bundles)
        return f"[{shown}] ({self.strategy})"


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def placement_plan(group: ReplicaGroupConfig) -> PlacementPlan:
    engine = group.engine
    cpus = max(group.num_cpus, 0.001)  # bundles cannot be empty
    world = engine.tensor_parallel_size * engine.pipeline_parallel_size
    if engine.device == "cpu":
        return PlacementPlan(
            bundles=[{"CPU": cpus}],
            strategy="PACK",
            actor_options={"num_cpus": group.num_cpus, "num_gpus": 0},
        )
    if world == 1:
        return PlacementPlan(
            bundles=[{"CPU": cpus, "GPU": 1.0}],
            strategy="PACK",
            actor_options={"num_cpus": group.num_cpus, "num_gpus": 1},
        )
    strategy = "STRICT_PACK" if engine.pipeline_parallel_size == 1 else "PACK"
    return PlacementPlan(
        bundles=[{"CPU": cpus}] + [{"GPU": 1.0} for _ in range(world)],
        strategy=strategy,
        actor_options={"num_cpus": group.num_cpus, "num_gpus": 0},
        keep_reserved=False,
    )


def unplaceable_message(
    replica_id: str,
    plan: PlacementPlan,
    timeout_s: float,
    cluster: dict[str, float],
    available: dict[str, float],
) -> str:
    """Why a replica could not be placed, naming the missing resources."""
    missing = [
        f"{name} (needs {need:g}, the cluster has {cluster.get(name, 0):g})"
        for name, need in sorted(plan.totals().items())
        if cluster.get(name, 0) < need
    ]
    where = (
        "; missing " + ", ".join(missing)
        if missing
        else (
            "; the cluster has them in all but not free"
            + (" on one node" if plan.strategy == "STRICT_PACK" else "")
            + f" (free now: {_fmt({k: v for k, v in available.items() if not k.startswith('node:')})})"
        )
    )
    return (
        f"replica {replica_id} could not be placed within {timeout_s:g}s: it needs "
        f"{plan.describe()}{where}"
    )
