"""Routing policies, placement plans and the autoscaling rule, in process."""

from __future__ import annotations

import collections

import pytest

from serving.config import (
    LeastLoadedRouting,
    PrefixAffinityRouting,
    ReplicaGroupConfig,
    ServingConfig,
    SessionRouting,
    load_config,
)
from serving.engines.controller import ReplicaController
from serving.engines.placement import placement_plan, unplaceable_message
from serving.engines.router import (
    LeastLoadedRouter,
    PrefixAffinityRouter,
    RoundRobinRouter,
    RouteRequest,
    SessionRouter,
    build_router,
)
from serving.engines.types import ReplicaInfo, ReplicaState
from serving.errors import ConfigError

REPLICAS = [ReplicaInfo(f"r-{i}", "g", "m", ReplicaState.READY) for i in range(4)]


def _no_load(_: ReplicaInfo) -> float:
    return 0.0


def test_prefix_affinity_is_sticky_and_spreads() -> None:
    router = PrefixAffinityRouter(PrefixAffinityRouting(policy="prefix_affinity"))
    first = router.pick(RouteRequest("m", affinity="src/app.py"), REPLICAS, REPLICAS, _no_load)
    for _ in range(20):
        again = router.pick(RouteRequest("m", affinity="src/app.py"), REPLICAS, REPLICAS, _no_load)
        assert again.replica_id == first.replica_id
    spread = collections.Counter(
        router.pick(
            RouteRequest("m", affinity=f"file_{i}.py"), REPLICAS, REPLICAS, _no_load
        ).replica_id
        for i in range(400)
    )
    assert set(spread) == {r.replica_id for r in REPLICAS}
    assert min(spread.values()) > 40  # roughly even


def test_prefix_affinity_spills_a_hot_key_past_the_load_bound() -> None:
    router = PrefixAffinityRouter(PrefixAffinityRouting(policy="prefix_affinity", load_bound=1.25))
    home = router.pick(RouteRequest("m", affinity="hot"), REPLICAS, REPLICAS, _no_load)
    loads = {r.replica_id: 0.0 for r in REPLICAS}
    loads[home.replica_id] = 6.0  # way above the average
    spilled = router.pick(
        RouteRequest("m", affinity="hot"), REPLICAS, REPLICAS, lambda r: loads[r.replica_id]
    )
    assert spilled.replica_id != home.replica_id
    # Only the free replicas are candidates.
    free = [r for r in REPLICAS if r.replica_id != home.replica_id]
    assert (
        router.pick(RouteRequest("m", affinity="hot"), free, REPLICAS, _no_load).replica_id
        != home.replica_id
    )


def test_least_loaded_and_round_robin() -> None:
    loads = {"r-0": 5.0, "r-1": 1.0, "r-2": 3.0, "r-3": 2.0}
    least = LeastLoadedRouter(LeastLoadedRouting(policy="least_loaded"))
    assert (
        least.pick(RouteRequest("m"), REPLICAS, REPLICAS, lambda r: loads[r.replica_id]).replica_id
        == "r-1"
    )
    rr = RoundRobinRouter()
    picked = [rr.pick(RouteRequest("m"), REPLICAS, REPLICAS, _no_load).replica_id for _ in range(8)]
    assert picked == ["r-0", "r-1", "r-2", "r-3"] * 2


def test_session_routing_by_header_or_key() -> None:
    router = SessionRouter(SessionRouting(policy="session"))
    picks = {
        router.pick(RouteRequest("m", session="alice"), REPLICAS, REPLICAS, _no_load).replica_id
        for _ in range(10)
    }
    assert len(picks) == 1


def test_routing_config_is_a_tagged_union() -> None:
    config = ServingConfig.model_validate({"routing": {"policy": "least_loaded", "kv_weight": 2}})
    assert isinstance(build_router(config.routing), LeastLoadedRouter)
    assert isinstance(build_router(load_config(None).routing), PrefixAffinityRouter)  # the default
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides=[("routing.policy", "random")])
    assert caught.value.field.startswith("routing")
    with pytest.raises(ConfigError):  # a field of another policy
        load_config(None, overrides=[("routing", "{policy: round_robin, load_bound: 2}")])


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


def test_autoscaler_targets_queue_per_replica() -> None:
    config = ServingConfig.model_validate(
        {
            "replica_groups": [
                {
                    "name": "g",
                    "replicas": 1,
                    "autoscaling": {
                        "enabled": True,
                        "min_replicas": 1,
                        "max_replicas": 4,
                        "target_queue_per_replica": 4,
                    },
                }
            ]
        }
    )
    controller = ReplicaController(config.model_dump(mode="json"), local_ray=True)
    group = controller.groups["g"]
    assert controller.desired_replicas(group) == 1  # idle: the minimum
    controller._gateway_queues["gw"] = (__import__("time").monotonic(), {"smollm2-135m-demo": 10})
    assert controller.desired_replicas(group) == 3  # ceil(10 / 4)
    controller._gateway_queues["gw"] = (__import__("time").monotonic(), {"smollm2-135m-demo": 100})
    assert controller.desired_replicas(group) == 4  # capped
