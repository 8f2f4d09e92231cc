"""The Kubernetes path: a gateway outside the Ray cluster joins it through Ray
Client (ray://head:10001, what the Helm chart configures), creates the
controller there, which starts a real engine replica in the cluster, and
serves completions. The cluster is a real `ray start --head` in its own temp
dir, stopped (only it) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from serving.admission.keys import create_key
from tests.support.stack import TINY_MODEL, SeedServeProcess, free_port, tiny_config

RAY = Path(sys.executable).with_name("ray")
WORKER_PORTS = (21000, 21999)


def _port_outside_workers() -> int:
    while True:
        port = free_port()
        if not WORKER_PORTS[0] <= port <= WORKER_PORTS[1]:
            return port


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    temp_dir = Path("/tmp") / f"rh{os.getpid()}"  # Ray's socket paths must stay short
    engines_before = {p.pid for p in _engine_processes()}
    client_port = _port_outside_workers()
    gcs_port = _port_outside_workers()
    subprocess.run(
        [str(RAY), "start", "--head", f"--port={gcs_port}",
         f"--ray-client-server-port={client_port}", "--num-cpus=2", "--disable-usage-stats",
         "--include-dashboard=false", f"--temp-dir={temp_dir}",
         f"--min-worker-port={WORKER_PORTS[0]}", f"--max-worker-port={WORKER_PORTS[1]}",
         f"--dashboard-agent-listen-port={_port_outside_workers()}",
         f"--metrics-export-port={_port_outside_workers()}",
         f"--runtime-env-agent-port={_port_outside_workers()}"],
        check=True,
        capture_output=True,
        timeout=180,
    )  # fmt: skip
    try:
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        # Only this cluster's processes (ray stop would also stop the test session's
        # Ray): those naming its temp dir or GCS port, and all their descendants.
        marks = (str(temp_dir), f":{gcs_port}")
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if any(m in part for part in (p.info["cmdline"] or []) for m in marks)]  # fmt: skip
        everything = {p.pid: p for root in roots for p in [root, *_descendants(root)]}
        # ...but not the engines: that they go away by themselves is what is tested.
        engine_groups = {
            p.pid for p in _engine_processes() if "supervisor" in " ".join(p.cmdline())
        }
        mine = [p for pid, p in everything.items() if _group_of(pid) not in engine_groups]
        for process in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(mine, timeout=30)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
        # The cluster is gone: so must be every engine process it started.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = [p for p in _engine_processes() if p.pid not in engines_before]
            if not left:
                break
            time.sleep(0.5)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        assert not left, f"orphaned engine processes: {[p.info['cmdline'][:3] for p in left]}"


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _engine_processes() -> list[psutil.Process]:
    marks = ("VLLM::", "vllm.entrypoints", "serving.cluster.supervisor")
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(process.info["cmdline"] or [])
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(m in line for m in marks):
            found.append(process)
    return found


def test_gateway_serves_through_ray_client(
    ray_head: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=1, name="k8s")
    config["ray"] = {"address": ray_head, "namespace": "ray-client-test"}
    workdir = tmp_path / "gateway"
    workdir.mkdir()
    _, key = create_key(workdir / "keys.yaml", tenant="team", name="dev")
    config["auth"] = {"keys_file": str(workdir / "keys.yaml"), "demo_key_file": None}
    gateway = SeedServeProcess("gateway", config, workdir)
    try:
        gateway.wait_ready(timeout_s=600)
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
        answer = client.completions.create(model=TINY_MODEL, prompt="def f(x):", max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens == 4
        streamed = list(
            client.completions.create(model=TINY_MODEL, prompt="x = ", max_tokens=3, stream=True)
        )
        # The gateway runs no engine itself: the tokens came from the cluster's replica.
        assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].text) >= 1
        assert not [p for p in gateway.descendants() if "vllm" in " ".join(p.cmdline())]
    finally:
        code = gateway.stop()
        gateway.kill_tree()
    assert code == 0, gateway.log()[-3000:]
