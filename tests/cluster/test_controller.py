"""The controller's autoscaling rule, in process (no Ray)."""

from __future__ import annotations

import time

from serving.cluster.controller import ReplicaController
from serving.config import ServingConfig


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
    controller._gateway_queues["gw"] = (time.monotonic(), {"smollm2-135m-demo": 10})
    assert controller.desired_replicas(group) == 3  # ceil(10 / 4)
    controller._gateway_queues["gw"] = (time.monotonic(), {"smollm2-135m-demo": 100})
    assert controller.desired_replicas(group) == 4  # capped
