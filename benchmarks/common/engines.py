"""A running Seed Serve stack's engine replicas (URL and secret), asked of its
Ray controller, so that a benchmark can also call one engine directly."""

from __future__ import annotations

import json
from typing import Any

from serving.paths import run_state_file


def running_replicas() -> list[dict[str, Any]]:
    """Replicas of the stack `seed-serve up` started on this machine (its run-state file)."""
    path = run_state_file()
    if not path.exists():
        raise SystemExit(f"no running `seed-serve up` found ({path} is missing)")
    state = json.loads(path.read_text())
    from serving.ray_cluster import init_ray

    init_ray(address=state["ray_address"], namespace=state["namespace"], log_to_driver=False)
    import ray

    try:
        controller = ray.get_actor(state["controller_name"])
        replicas: list[dict[str, Any]] = list(ray.get(controller.list_replicas.remote()))
    finally:
        ray.shutdown()
    return [r for r in replicas if r["state"] == "ready"]
