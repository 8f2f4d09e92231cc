"""Team adapters on real vLLM engines and real Ray, end to end: a tenant
that opted in accepts suggestions through the gateway; `seed-serve adapters
train` fine-tunes a LoRA on them as a Ray Train job on the stack's cluster and
evaluates it; the adapter serves that tenant's next completions (loaded at run
time into the engines, kept on the replica that holds it) and no one else's;
a corrupt adapter fails clearly while the replica goes on serving. (The lift
on a real model: benchmarks/adapters, README.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from serving.adapters import TeamDataStore, load_registry, remove_adapter
from serving.admission.keys import create_key, load_keys_file, update_tenant
from tests.support.stack import ROOT, TINY_MODEL, SeedServeProcess

ENTITIES = ("user", "order", "invoice", "account", "payment", "refund")


def cli(
    stack: SeedServeProcess, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", "adapters", "--config", str(stack.config_path), *args],
        cwd=ROOT,
        env={**os.environ, "SEED_SERVE_HOME": str(stack.home)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def post(stack: SeedServeProcess, secret: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.base_url + path, json=body, headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )  # fmt: skip


def test_a_tenants_adapter_from_accepted_suggestions_to_its_completions(
    early_scale_out_stack: SeedServeProcess | None, tmp_path: Path
) -> None:
    """On test_scale_out.py's stack (LoRA on, two replicas), which runs next."""
    assert early_scale_out_stack is not None
    stack = early_scale_out_stack
    stack.wait_ready(replicas=2)
    keys = stack.keys_file
    _, house = create_key(keys, tenant="house", name="dev")
    _, other = create_key(keys, tenant="other", name="dev")
    update_tenant(keys, "house", training_data="collect")
    wait_for(
        lambda: post(stack, house, "/v1/completions",
                     {"model": TINY_MODEL, "prompt": "x", "max_tokens": 1}).status_code == 200,
        "the new keys",
    )  # fmt: skip

    # Suggestions made and accepted through the gateway, by both tenants.
    for i in range(30):
        entity = ENTITIES[i % len(ENTITIES)]
        for secret in (house, other) if i < 5 else (house,):
            made = post(stack, secret, "/v1/code/completions", {
                "prefix": f"def fetch_{entity}({entity}_id):\n    ", "suffix": "\n",
                "language": "python", "path": f"svc/{entity}_{i}.py", "max_tokens": 8,
                "temperature": 0.8, "seed": i,
            })  # fmt: skip
            assert made.status_code == 200, made.text
            event = {"completion_id": made.json()["id"], "event": "accepted"}
            assert post(stack, secret, "/v1/code/events", event).status_code == 200
    store = TeamDataStore(stack.home / "team-data", retention_days=None)
    assert store.tenants() == ["house"] and store.count("house") == 30  # only the opted-in one

    # The fine-tune, a Ray Train job on the stack's own cluster.
    trained = cli(stack, "train", "--tenant", "house", "--name", "house-v1", "--steps", "20",
                  "--cpus-per-worker", "1")  # fmt: skip
    assert trained.returncode in (0, 3), trained.stdout[-3000:] + trained.stderr[-3000:]
    output = stack.home / "adapters" / "house" / "house-v1"
    record = json.loads((output / "run.json").read_text())
    assert record["examples"]["train"] + record["examples"]["held_out"] == 30
    assert record["steps"] == 20 and len(record["losses"]) == 20
    assert (output / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-00020"]
    assert "[train] step 20/20" in trained.stdout + trained.stderr  # progress shown
    scores = record["evaluation"]["scores"]
    better = (
        scores["house-v1"]["edit_similarity"] > scores["base"]["edit_similarity"]
        and scores["house-v1"]["exact_match"] >= scores["base"]["exact_match"]
    )
    assert record["published"] is better and (trained.returncode == 0) is better
    registered = load_registry(stack.home / "adapters" / "registry.yaml").get("house-v1")
    assert (registered is not None) is better
    if not better:  # a random model may not improve: register it by hand to serve it
        added = cli(stack, "add", "house-v1", "--base", TINY_MODEL, "--path",
                    str(output / "adapter"), "--tenant", "house", "--default")  # fmt: skip
        assert added.returncode == 0, added.stderr
    # Published (or set by `--default`) as the tenant's adapter in the registry.
    assert load_registry(stack.home / "adapters" / "registry.yaml").defaults == {
        "house": "house-v1"
    }
    assert load_keys_file(keys).tenants["house"].adapter is None  # no pin needed

    # That tenant's completions now come from its adapter, on one replica.
    def served(secret: str, model: str = TINY_MODEL, document: str = "a.py") -> httpx.Response:
        return httpx.post(
            stack.base_url + "/v1/completions",
            json={"model": model, "prompt": "def fetch_user(user_id):\n    ", "max_tokens": 4},
            headers={"Authorization": f"Bearer {secret}", "x-seed-serve-document": document},
            timeout=120,
        )

    wait_for(lambda: served(house).json().get("model") == "house-v1", "the adapter in use", 60)
    replicas = {
        served(house, document=f"d{i}.py").headers["x-seed-serve-replica"] for i in range(8)
    }
    assert len(replicas) == 1, replicas  # kept where it is loaded
    assert served(other).json()["model"] == TINY_MODEL
    foreign = served(other, f"{TINY_MODEL}:house-v1")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "model_not_found"
    models = httpx.get(stack.base_url + "/v1/models",
                       headers={"Authorization": f"Bearer {house}"}).json()  # fmt: skip
    assert f"{TINY_MODEL}:house-v1" in [card["id"] for card in models["data"]]

    # A corrupt adapter: a clear error, and the replica serves on.
    broken = stack.home / "adapters" / "house" / "broken"
    shutil.copytree(output / "adapter", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00not safetensors\x00" * 64)
    assert cli(stack, "add", "broken", "--base", TINY_MODEL, "--path", str(broken),
               "--tenant", "house").returncode == 0  # fmt: skip
    wait_for(
        lambda: served(house, f"{TINY_MODEL}:broken").status_code != 404, "the registry reload"
    )
    failed = served(house, f"{TINY_MODEL}:broken")
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["code"] == "adapter_load_failed"
    assert "broken" in failed.json()["error"]["message"]
    assert served(house, f"{TINY_MODEL}:house-v1").json()["model"] == "house-v1"
    assert served(other).status_code == 200
    assert httpx.get(stack.base_url + "/ready").status_code == 200

    # A folder outside the adapter roots is refused.
    outside = shutil.copytree(output / "adapter", tmp_path / "elsewhere")
    refused = cli(stack, "add", "stray", "--base", TINY_MODEL, "--path", str(outside),
                  "--tenant", "house")  # fmt: skip
    assert refused.returncode == 2 and "outside the configured adapter roots" in refused.stderr

    # Deleting the tenant's data leaves nothing.
    deleted = cli(stack, "data", "delete", "--tenant", "house")
    assert deleted.returncode == 0 and "30 examples deleted" in deleted.stdout
    assert store.count("house") == 0 and not (stack.home / "team-data" / "house").exists()

    # Leave the stack as it was for test_scale_out.py.
    for name in ("house-v1", "broken"):
        remove_adapter(stack.home / "adapters" / "registry.yaml", name)
    update_tenant(keys, "house", training_data=None)
