"""The Kubernetes path's cluster for tests/e2e/k8s: a real `ray start --head`
in its own temp dir and a `seed-serve gateway` outside it, joined through Ray
Client (what the Helm chart configures), whose controller starts one tiny
replica with LoRA on in the cluster.

It boots in a background thread (tests/conftest.py starts it once tiny/'s
stack is ready, while the unit tests still run), and is stopped, only it, by
tests/e2e/k8s/conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.stack import OTHER_ENGINE_CORES, SeedServeProcess, free_port, tiny_config

RAY = Path(sys.executable).with_name("ray")
WORKER_PORTS = (21000, 21999)


@dataclass(frozen=True)
class RayHead:
    client_address: str  # ray://host:port, what the gateway joins (as in Kubernetes)
    gcs_address: str  # host:port, what Ray jobs (adapter training) join


def _port_outside_workers() -> int:
    while True:
        port = free_port()
        if not WORKER_PORTS[0] <= port <= WORKER_PORTS[1]:
            return port


class K8sCluster:
    """The Ray head and the gateway joined to it, started in the background."""

    def __init__(
        self, model_dir: Path, workdir: Path, *, after: Callable[[], bool] | None = None
    ) -> None:
        """Starts booting at once, or once ``after()`` says so (polled each second)."""
        self._model_dir = model_dir
        self._after = after
        self._workdir = workdir
        self._temp_dir = Path("/tmp") / f"rh{os.getpid()}"  # Ray's socket paths must stay short
        self._client_port = _port_outside_workers()
        self._gcs_port = _port_outside_workers()
        self.head = RayHead(f"ray://127.0.0.1:{self._client_port}", f"127.0.0.1:{self._gcs_port}")
        self._engines_at_ready: list[psutil.Process] = []
        self._gateway: SeedServeProcess | None = None
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="k8s-cluster", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        while self._after is not None and not self._after():
            if self._stopped:
                return
            time.sleep(1)
        try:
            subprocess.run(
                [str(RAY), "start", "--head", f"--port={self._gcs_port}",
                 f"--ray-client-server-port={self._client_port}", "--num-cpus=2",
                 "--disable-usage-stats", "--include-dashboard=false",
                 f"--temp-dir={self._temp_dir}",
                 f"--min-worker-port={WORKER_PORTS[0]}", f"--max-worker-port={WORKER_PORTS[1]}",
                 f"--dashboard-agent-listen-port={_port_outside_workers()}",
                 f"--metrics-export-port={_port_outside_workers()}",
                 f"--runtime-env-agent-port={_port_outside_workers()}"],
                check=True,
                capture_output=True,
                timeout=180,
            )  # fmt: skip
            self._gateway = SeedServeProcess("gateway", self._gateway_config(), self._workdir)
        except BaseException as error:  # handed to whoever waits for the cluster
            self._error = error

    def _gateway_config(self) -> dict[str, object]:
        workdir = self._workdir
        config = tiny_config(self._model_dir, port=free_port(), replicas=1, name="k8s")
        config["ray"] = {"address": self.head.client_address, "namespace": "ray-client-test"}
        engine = config["replica_groups"][0]
        engine["engine"]["cpu_affinity"] = OTHER_ENGINE_CORES  # beside tiny/'s engines
        engine["lora"] = {"enabled": True, "max_loras": 2, "max_lora_rank": 8, "min_resident_s": 5}
        config["adapters"] = {
            "registry_file": str(workdir / "adapters" / "registry.yaml"),
            "roots": [str(workdir / "adapters")],
            "data_dir": str(workdir / "team-data"),
            "reload_interval_s": 0.5,
        }
        config["auth"] = {
            "keys_file": str(workdir / "keys.yaml"), "demo_key_file": None,
            "reload_interval_s": 0.5,
        }  # fmt: skip
        return config

    def serving(self) -> bool:
        """Whether the gateway serves now (never waits)."""
        return (
            not self._thread.is_alive() and self._gateway is not None and self._gateway.is_ready()
        )

    def gateway(self, timeout_s: float = 600) -> SeedServeProcess:
        """The gateway, once it serves (fails with its log or the start-up error)."""
        self._thread.join(timeout=300)
        if self._error is not None:
            raise AssertionError(f"the Ray head did not start: {self._error!r}")
        assert self._gateway is not None, "the Ray head is still starting after 300 s"
        self._gateway.wait_ready(timeout_s=timeout_s)
        # Its engine, while still a descendant of its replica actor: should that
        # die, the engine it leaves is no one's child (what stop() checks for).
        own = self._own_processes()
        self._engines_at_ready = [p for p in engine_processes() if p.pid in own]
        return self._gateway

    def _own_processes(self) -> dict[int, psutil.Process]:
        """This cluster's processes: those naming its temp dir or GCS port, and
        all their descendants (not the test session's Ray, nor other stacks')."""
        marks = (str(self._temp_dir), f":{self._gcs_port}")
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if any(m in part for part in (p.info["cmdline"] or []) for m in marks)]  # fmt: skip
        return {p.pid: p for root in roots for p in [root, *_descendants(root)]}

    def stop(self) -> None:
        """Stops the gateway (exit 0), then only this cluster's Ray processes,
        and checks every engine process it started went away by itself."""
        if self._stopped:
            return
        self._stopped = True
        self._thread.join(timeout=300)
        code = 0
        if self._gateway is not None:
            code = self._gateway.stop()
            self._gateway.kill_tree()
        # Only this cluster's processes (ray stop would also stop the test session's
        # Ray, and other stacks run beside it: tests/conftest.py, early_demo_stack)...
        everything = self._own_processes()
        # ...but not the engines: that they go away by themselves is what is tested.
        engines = [p for p in engine_processes() if p.pid in everything]
        engines += [p for p in self._engines_at_ready if p not in engines]
        engine_groups = {p.pid for p in engines if "supervisor" in " ".join(p.info["cmdline"])}
        mine = [p for pid, p in everything.items() if _group_of(pid) not in engine_groups]
        for process in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(mine, timeout=30)
        subprocess.run(["rm", "-rf", str(self._temp_dir)], check=False)
        # The cluster is gone: so must be every engine process it started.
        deadline = time.monotonic() + 60
        left = []
        while time.monotonic() < deadline:
            left = [p for p in engines if _alive(p)]
            if not left:
                break
            time.sleep(0.5)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        assert not left, f"orphaned engine processes: {[p.info['cmdline'][:3] for p in left]}"
        if self._gateway is not None:
            assert code == 0, self._gateway.log()[-3000:]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def engine_processes() -> list[psutil.Process]:
    marks = ("VLLM::", "vllm.entrypoints", "serving.cluster.supervisor")
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(process.info["cmdline"] or [])
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(m in line for m in marks):
            found.append(process)
    return found
