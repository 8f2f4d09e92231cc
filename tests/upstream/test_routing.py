"""Routing policies (a tagged union in the config), in process."""

from __future__ import annotations

import collections

import pytest

from serving.config import (
    LeastLoadedRouting,
    PrefixAffinityRouting,
    ServingConfig,
    SessionRouting,
    load_config,
)
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.errors import ConfigError
from serving.upstream.routing import (
    LeastLoadedRouter,
    PrefixAffinityRouter,
    RoundRobinRouter,
    RouteRequest,
    SessionRouter,
    build_router,
)

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
