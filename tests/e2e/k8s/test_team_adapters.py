"""Team adapters on a real vLLM engine and real Ray, end to end, on the
Kubernetes path (a gateway joined through Ray Client, conftest.py): a tenant
that opted in accepts suggestions through the gateway; `seed-serve adapters
train` fine-tunes a LoRA on them as a Ray Train job on the cluster and
evaluates it; the adapter serves that tenant's next completions (loaded at
run time into the engine) and no one else's; a corrupt adapter fails clearly
while the replica goes on serving. Routing among replicas by resident
adapter: tests/admission/test_adapters.py (the replicas' own adapter logic
behind scripted engines). The lift on a real model: benchmarks/adapters."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.adapters import TeamDataStore, load_registry
from serving.admission.keys import create_key, load_keys_file, update_tenant
from serving.cli import main as seed_serve
from tests.support.k8s_cluster import RayHead
from tests.support.stack import ROOT, TINY_MODEL, SeedServeProcess

ENTITIES = ("user", "order", "invoice", "account", "payment", "refund")


def cli_config(gateway: SeedServeProcess, head: RayHead) -> Path:
    """The gateway's config, joining the cluster as a Ray job does (its GCS)."""
    config = yaml.safe_load(gateway.config_path.read_text())
    config["ray"]["address"] = head.gcs_address
    path = gateway.workdir / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`seed-serve adapters train` (its own process: it drives a Ray job)."""
    return subprocess.run(
        [sys.executable, "-m", "serving", "adapters", "--config", str(config), "train", *args],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """`seed-serve adapters ...` in this process (no Ray): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = seed_serve(["adapters", "--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


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
    k8s_gateway: SeedServeProcess, ray_head: RayHead, tmp_path: Path
) -> None:
    stack = k8s_gateway
    config = cli_config(stack, ray_head)
    home = stack.workdir
    keys = stack.keys_file
    # House's key is written last: once it works, the gateway has read every
    # change before it (other's key, house opting in).
    _, other = create_key(keys, tenant="other", name="dev")
    update_tenant(keys, "house", training_data="collect")
    _, house = create_key(keys, tenant="house", name="dev")
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
    store = TeamDataStore(home / "team-data", retention_days=None)
    assert store.tenants() == ["house"] and store.count("house") == 30  # only the opted-in one

    # The fine-tune, a Ray Train job on the stack's own cluster.
    trained = train(config, "--tenant", "house", "--name", "house-v1", "--steps", "20",
                    "--cpus-per-worker", "1")  # fmt: skip
    assert trained.returncode in (0, 3), trained.stdout[-3000:] + trained.stderr[-3000:]
    output = home / "adapters" / "house" / "house-v1"
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
    registry = home / "adapters" / "registry.yaml"
    registered = load_registry(registry).get("house-v1")
    assert (registered is not None) is better
    if not better:  # a random model may not improve: register it by hand to serve it
        code, _, err = cli(config, "add", "house-v1", "--base", TINY_MODEL, "--path",
                           str(output / "adapter"), "--tenant", "house", "--default")  # fmt: skip
        assert code == 0, err
    # Published (or set by `--default`) as the tenant's adapter in the registry.
    assert load_registry(registry).defaults == {"house": "house-v1"}
    assert load_keys_file(keys).tenants["house"].adapter is None  # no pin needed

    # That tenant's completions now come from its adapter (loaded at run time).
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
    broken = home / "adapters" / "house" / "broken"
    shutil.copytree(output / "adapter", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00not safetensors\x00" * 64)
    code, _, err = cli(config, "add", "broken", "--base", TINY_MODEL, "--path", str(broken),
                       "--tenant", "house")  # fmt: skip
    assert code == 0, err
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
    code, _, err = cli(config, "add", "stray", "--base", TINY_MODEL, "--path", str(outside),
                       "--tenant", "house")  # fmt: skip
    assert code == 2 and "outside the configured adapter roots" in err

    # Deleting the tenant's data leaves nothing.
    code, out, _ = cli(config, "data", "delete", "--tenant", "house")
    assert code == 0 and "30 examples deleted" in out
    assert store.count("house") == 0 and not (home / "team-data" / "house").exists()
