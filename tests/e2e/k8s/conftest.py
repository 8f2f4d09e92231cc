"""The Kubernetes path's cluster for this folder: a real `ray start --head`
and a gateway joining it through Ray Client, shared by its modules."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.stack import SeedServeProcess, free_port, tiny_config

RAY = Path(sys.executable).with_name("ray")
WORKER_PORTS = (21000, 21999)


def _port_outside_workers() -> int:
    while True:
        port = free_port()
        if not WORKER_PORTS[0] <= port <= WORKER_PORTS[1]:
            return port


@dataclass(frozen=True)
class RayHead:
    client_address: str  # ray://host:port, what the gateway joins (as in Kubernetes)
    gcs_address: str  # host:port, what Ray jobs (adapter training) join


@pytest.fixture(scope="package")
def ray_head() -> Iterator[RayHead]:
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
        yield RayHead(f"ray://127.0.0.1:{client_port}", f"127.0.0.1:{gcs_port}")
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


@pytest.fixture(scope="package")
def k8s_gateway(
    ray_head: RayHead, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedServeProcess]:
    """`seed-serve gateway` outside the cluster, joined through Ray Client: it
    creates the controller there, which starts one replica (LoRA on)."""
    workdir = tmp_path_factory.mktemp("gateway")
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=1, name="k8s")
    config["ray"] = {"address": ray_head.client_address, "namespace": "ray-client-test"}
    config["replica_groups"][0]["lora"] = {
        "enabled": True, "max_loras": 2, "max_lora_rank": 8, "min_resident_s": 5,
    }  # fmt: skip
    config["adapters"] = {
        "registry_file": str(workdir / "adapters" / "registry.yaml"),
        "roots": [str(workdir / "adapters")],
        "data_dir": str(workdir / "team-data"),
        "reload_interval_s": 0.5,
    }
    config["auth"] = {
        "keys_file": str(workdir / "keys.yaml"), "demo_key_file": None, "reload_interval_s": 0.5,
    }  # fmt: skip
    gateway = SeedServeProcess("gateway", config, workdir)
    try:
        gateway.wait_ready(timeout_s=600)
        yield gateway
    finally:
        code = gateway.stop()
        gateway.kill_tree()
    assert code == 0, gateway.log()[-3000:]
