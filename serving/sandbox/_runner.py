"""Running untrusted code: a separate process group, resource limits, an empty
environment, a fresh work dir, no network; the whole group killed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from serving.config import SandboxConfig
from serving.errors import ServiceUnavailableError
from serving.sandbox._isolation import Isolation, PidsCgroup, detect_isolation

logger = logging.getLogger("seed_serve.sandbox")


class SandboxUnavailableError(ServiceUnavailableError):
    """Code would have to run without isolation, and the operator did not allow that."""


@dataclass
class SandboxResult:
    exit_code: int | None  # negative: killed by that signal; None: timed out
    timed_out: bool
    stdout: str
    stderr: str
    duration_s: float
    output_truncated: bool = False
    files: dict[str, str] = field(default_factory=dict)

    @property
    def signal(self) -> int | None:
        return -self.exit_code if self.exit_code is not None and self.exit_code < 0 else None

    @property
    def outcome(self) -> str:
        """ok, failed (non-zero exit), killed (by a signal, e.g. a limit) or timeout."""
        if self.timed_out:
            return "timeout"
        if self.exit_code == 0:
            return "ok"
        if self.exit_code is not None and self.exit_code < 0:
            return "killed"
        return "failed"


class Sandbox:
    def __init__(
        self,
        config: SandboxConfig,
        *,
        python: str | None = None,
        on_run: Callable[[SandboxResult], None] | None = None,
    ) -> None:
        self.config = config
        self.on_run = on_run  # told of every run (the gateway counts their outcomes)
        self.python = python or sys.executable
        self.isolation: Isolation | None
        self.isolation, self.note = detect_isolation(
            config.isolation, config.allow_unisolated, config.bwrap
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        if self.isolation is None:
            logger.error(
                "sandbox disabled: %s; code tasks that run code will answer 503", self.note
            )
        elif self.note:
            logger.warning("sandbox: %s", self.note)
        else:
            logger.info("sandbox: %s isolation", self.isolation.kind)

    @property
    def available(self) -> bool:
        return self.isolation is not None

    def require(self) -> Isolation:
        if self.isolation is None:
            raise SandboxUnavailableError(
                f"Code execution is unavailable: {self.note}. Install bubblewrap, or set "
                "sandbox.allow_unisolated (not recommended).",
                code="sandbox_unavailable",
            )
        return self.isolation

    async def run_python(
        self,
        files: dict[str, str],
        args: list[str],
        *,
        collect: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SandboxResult:
        """Write ``files`` into a fresh work dir and run ``python args...`` there
        (``env``: extra variables; the environment is otherwise empty)."""
        isolation = self.require()
        async with self._slots:
            result = await asyncio.to_thread(self._run, isolation, files, args, collect, env or {})
        if self.on_run is not None:
            self.on_run(result)
        return result

    # ------------------------------------------------------------------ internals

    def _limits(self, cgroup: PidsCgroup | None, nproc: int | None) -> None:
        """In the child, before exec (only simple system calls here)."""
        cfg = self.config
        if cgroup is not None:
            cgroup.join(os.getpid())
        mib = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (cfg.cpu_seconds, cfg.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_mb * mib, cfg.memory_mb * mib))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.max_file_mb * mib, cfg.max_file_mb * mib))
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg.max_open_files, cfg.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    def _run(
        self,
        isolation: Isolation,
        files: dict[str, str],
        args: list[str],
        collect: tuple[str, ...],
        extra_env: dict[str, str],
    ) -> SandboxResult:
        workdir = Path(tempfile.mkdtemp(prefix="seed-serve-sandbox-"))
        outdir = Path(tempfile.mkdtemp(prefix="seed-serve-sandbox-out-"))
        cgroup = PidsCgroup.create(self.config.max_processes)
        try:
            for name, content in files.items():
                target = workdir / _safe_relative(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")
            argv, cwd = isolation.wrap([self.python, "-B", *args], workdir)
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": isolation.inside_path(workdir),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONNOUSERSITE": "1",
                "PYTHONHASHSEED": "0",
                **extra_env,
            }
            if isolation.kind == "bwrap":
                argv = [
                    *argv[: argv.index("--clearenv") + 1],
                    *_setenv(env),
                    *argv[argv.index("--clearenv") + 1 :],
                ]
            # Root ignores RLIMIT_NPROC (the pids cgroup covers it); for other
            # users it counts all their tasks, so the limit is on top of today's.
            nproc = (
                None if os.getuid() == 0 else len(os.listdir("/proc")) + self.config.max_processes
            )
            started = time.monotonic()
            with open(outdir / "stdout", "wb") as out, open(outdir / "stderr", "wb") as err:
                process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=lambda: self._limits(cgroup, nproc),
                    close_fds=True,
                )
                timed_out = False
                try:
                    process.wait(timeout=self.config.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    # Whatever it left behind (children, daemons) goes too.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    if cgroup is not None:
                        cgroup.kill_all()
                    process.wait()
            duration = time.monotonic() - started
            stdout, cut_out = _read_capped(outdir / "stdout", self.config.max_output_bytes)
            stderr, cut_err = _read_capped(outdir / "stderr", self.config.max_output_bytes)
            collected = {}
            for name in collect:
                path = workdir / _safe_relative(name)
                if path.is_file() and not path.is_symlink():
                    collected[name], _ = _read_capped(path, 1024 * 1024)
            exit_code = process.returncode
            if isolation.kind != "none" and exit_code is not None and 128 < exit_code < 128 + 65:
                exit_code = 128 - exit_code  # the wrapper reports "killed by N" as 128+N
            return SandboxResult(
                exit_code=None if timed_out else exit_code,
                timed_out=timed_out,
                stdout=stdout,
                stderr=stderr,
                duration_s=duration,
                output_truncated=cut_out or cut_err,
                files=collected,
            )
        finally:
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(outdir, ignore_errors=True)


def _setenv(env: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"unsafe sandbox file name {name!r}")
    return path


def _read_capped(path: Path, limit: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return "", False
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit
