"""`seed-serve gateway` joining the running stack's Ray cluster, and engines
that refuse anyone but a gateway."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from serving.ray_cluster import init_ray
from tests.support.stack import TINY_MODEL, SeedServeProcess, free_port


def test_gateway_joins_an_existing_ray_cluster(
    tiny_stack: SeedServeProcess, tmp_path: Path
) -> None:
    """`seed-serve gateway --ray-address` finds the replicas through Ray, not URLs."""
    state = tiny_stack.run_state()
    port = free_port()
    config = {
        "gateway": {"host": "127.0.0.1", "port": port},
        "ray": {"namespace": state["namespace"]},
        # The gateway uses the running controller's replicas, whatever it lists here.
        "replica_groups": [{"name": "other", "engine": {"model": "unused/model"}}],
        "auth": {"keys_file": str(tiny_stack.keys_file), "demo_key_file": None},
    }
    gateway = SeedServeProcess(
        "gateway", config, tmp_path, extra_args=["--ray-address", state["ray_address"]]
    )
    try:
        gateway.wait_ready(replicas=2, timeout_s=180)
        client = openai.OpenAI(
            base_url=gateway.base_url + "/v1", api_key=tiny_stack.api_key, max_retries=0
        )
        raw = client.completions.with_raw_response.create(
            model=TINY_MODEL, prompt="x", max_tokens=2
        )
        assert raw.headers["x-seed-serve-replica"] in {"tiny-0", "tiny-1"}
        assert raw.parse().choices[0].text
        assert gateway.stop() == 0
    finally:
        gateway.kill_tree()
    # The shared stack is untouched by the gateway leaving.
    assert tiny_stack.http.get(tiny_stack.base_url + "/ready").status_code == 200


def test_engines_refuse_anyone_but_the_gateway(tiny_stack: SeedServeProcess) -> None:
    """Every engine route, including vLLM's unguarded ones, needs the replica secret."""
    state = tiny_stack.run_state()
    init_ray(address=state["ray_address"], namespace=state["namespace"], log_to_driver=False)
    import ray  # after init_ray: joining needs Ray's auth mode set before import

    try:
        controller = ray.get_actor(state["controller_name"])
        replicas = ray.get(controller.list_replicas.remote())
    finally:
        ray.shutdown()
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["url"].startswith("http://127.0.0.1:")  # loopback only
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/invocations"),
            ("POST", "/tokenize"),
            ("GET", "/metrics"),
            ("GET", "/health"),
        ]:
            anonymous = httpx.request(method, replica["url"] + path, json={}, timeout=10)
            assert anonymous.status_code == 401, (path, anonymous.text)
            wrong = httpx.request(
                method, replica["url"] + path, json={}, headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
        allowed = httpx.get(
            replica["url"] + "/v1/models", headers={"Authorization": f"Bearer {replica['token']}"}
        )
        assert allowed.status_code == 200
