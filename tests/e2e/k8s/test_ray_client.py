"""The Kubernetes path: a gateway outside the Ray cluster joins it through Ray
Client (ray://head:10001, what the Helm chart configures), creates the
controller there, which starts a real engine replica in the cluster, and
serves completions. The cluster is a real `ray start --head` in its own temp
dir, stopped (only it) at the end. Its replica serves team adapters
(tests/e2e/k8s/test_team_adapters.py runs on this cluster next: LoRA makes every
engine step slower, so it stays off the token-heavy tests' engines)."""

from __future__ import annotations

import time

import openai

from serving.admission.keys import create_key
from tests.support.stack import TINY_MODEL, SeedServeProcess


def test_gateway_serves_through_ray_client(k8s_gateway: SeedServeProcess) -> None:
    gateway = k8s_gateway
    _, key = create_key(gateway.keys_file, tenant="team", name="dev")
    deadline = time.monotonic() + 20  # the gateway reloads its keys file
    while time.monotonic() < deadline:
        probe = gateway.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        if probe.status_code == 200:
            break
        time.sleep(0.2)
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    answer = client.completions.create(model=TINY_MODEL, prompt="def f(x):", max_tokens=4)
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    streamed = list(
        client.completions.create(model=TINY_MODEL, prompt="x = ", max_tokens=3, stream=True)
    )
    # The gateway runs no engine itself: the tokens came from the cluster's replica.
    assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].text) >= 1
    assert not [p for p in gateway.descendants() if "vllm" in " ".join(p.cmdline())]
