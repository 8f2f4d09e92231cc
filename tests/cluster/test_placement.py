"""What a replica asks of the Ray cluster, by engine shape."""

from __future__ import annotations

from serving.cluster.placement import placement_plan, unplaceable_message
from serving.config import ReplicaGroupConfig, ServingConfig


def _group(**engine: object) -> ReplicaGroupConfig:
    return ReplicaGroupConfig.model_validate({"name": "g", "engine": engine, "num_cpus": 1})


def test_placement_plans_by_shape() -> None:
    cpu = placement_plan(_group())
    assert cpu.bundles == [{"CPU": 1.0}] and cpu.keep_reserved
    one_gpu = placement_plan(_group(device="cuda"))
    assert one_gpu.bundles == [{"CPU": 1.0, "GPU": 1.0}]
    assert one_gpu.actor_options["num_gpus"] == 1
    tp2 = placement_plan(_group(device="cuda", tensor_parallel_size=2))
    assert tp2.strategy == "STRICT_PACK"  # tensor parallelism stays on one node
    assert tp2.totals() == {"CPU": 1.0, "GPU": 2.0}
    assert not tp2.keep_reserved and tp2.actor_options["num_gpus"] == 0
    pp = placement_plan(_group(device="cuda", tensor_parallel_size=2, pipeline_parallel_size=2))
    assert pp.strategy == "PACK" and pp.totals()["GPU"] == 4


def test_several_shapes_from_one_config() -> None:
    config = ServingConfig.model_validate(
        {
            "replica_groups": [
                {
                    "name": "tp2",
                    "replicas": 4,
                    "engine": {"device": "cuda", "tensor_parallel_size": 2},
                },
                {
                    "name": "small",
                    "replicas": 2,
                    "engine": {"device": "cuda", "served_model_name": "other"},
                },
            ]
        }
    )
    gpus = sum(g.replicas * placement_plan(g).totals().get("GPU", 0) for g in config.replica_groups)
    assert gpus == 10
    assert config.models() == ["smollm2-135m-demo", "other"]


def test_unplaceable_message_names_the_missing_resources() -> None:
    plan = placement_plan(_group(device="cuda", tensor_parallel_size=2))
    message = unplaceable_message("g-0", plan, 5, {"CPU": 2.0}, {"CPU": 2.0})
    assert "g-0 could not be placed within 5s" in message
    assert "missing GPU (needs 2, the cluster has 0)" in message
