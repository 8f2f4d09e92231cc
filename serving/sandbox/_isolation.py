"""How a sandboxed process is isolated: bubblewrap, unshare, or (only with
consent) nothing; plus a pids cgroup so a fork bomb hits a wall even as root."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

SANDBOX_DIR = "/sandbox"  # where the work dir appears inside bubblewrap


@dataclass(frozen=True)
class Isolation:
    """The command prefix that isolates ``python`` and runs it in ``workdir``."""

    kind: str  # "bwrap" | "unshare" | "none"
    bwrap: str = "bwrap"

    def wrap(self, argv: list[str], workdir: Path) -> tuple[list[str], Path]:
        """(full argv, cwd for Popen)."""
        if self.kind == "bwrap":
            return [self.bwrap, *_bwrap_prefix(workdir)[1:], *argv], workdir
        if self.kind == "unshare":
            return [*_UNSHARE_PREFIX, *argv], workdir
        return argv, workdir

    def inside_path(self, workdir: Path) -> str:
        return SANDBOX_DIR if self.kind == "bwrap" else str(workdir)


_UNSHARE_PREFIX = [
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--ipc",
    "--uts",
    "--mount",
    "--mount-proc",
]


def _python_roots() -> list[str]:
    """Folders the interpreter needs: the venv and the Python it was made from."""
    roots = {
        sys.prefix,
        sys.base_prefix,
        str(Path(sys.executable).resolve().parent.parent),
    }
    return sorted(r for r in roots if r and not r.startswith("/usr/") and r != "/usr")


def _bwrap_prefix(workdir: Path) -> list[str]:
    args = [
        "bwrap",
        "--unshare-all",  # network, pid, ipc, uts, cgroup
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # A private /tmp first: the Python installation may live under /tmp too
    # (a CI checkout), and a later bind must not be hidden by it.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for root in _python_roots():
        args += ["--ro-bind", root, root]
    args += [
        "--bind",
        str(workdir),
        SANDBOX_DIR,
        "--chdir",
        SANDBOX_DIR,
        "--hostname",
        "sandbox",
    ]
    return args


def _probe(kind: str, bwrap: str) -> str:
    """'' if this isolation works here, else why not."""
    isolation = Isolation(kind, bwrap)
    probe_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"seed-serve-probe-{uuid.uuid4().hex}"
    probe_dir.mkdir(mode=0o700)
    try:
        argv, cwd = isolation.wrap([sys.executable, "-c", "print('ok')"], probe_dir)
        if shutil.which(argv[0]) is None:
            return f"{argv[0]} is not installed"
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0 or result.stdout.strip() != "ok":
            return f"{kind} failed: {result.stderr.strip()[-300:]}"
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{kind} failed: {exc}"
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def detect_isolation(
    requested: str, allow_unisolated: bool, bwrap: str = "bwrap"
) -> tuple[Isolation | None, str]:
    """(isolation, note). None means code must not run: the note says why."""
    if requested == "none":
        return Isolation("none"), "running code WITHOUT isolation (allow_unisolated)"
    order = ["bwrap", "unshare"] if requested == "auto" else [requested]
    reasons = []
    for kind in order:
        problem = _probe(kind, bwrap)
        if not problem:
            note = "" if kind == "bwrap" else "unshare isolates network/pids but not files"
            return Isolation(kind, bwrap), note
        reasons.append(problem)
    if allow_unisolated:
        return Isolation("none"), "no isolation available; running unisolated: " + "; ".join(
            reasons
        )
    return None, "no sandbox isolation is available (" + "; ".join(reasons) + ")"


# --------------------------------------------------------------------------- pids cgroup


class PidsCgroup:
    """A throw-away pids cgroup (v2 or v1) capping processes of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> PidsCgroup | None:
        for base in _pids_cgroup_bases():
            path = base / f"seed-serve-sandbox-{uuid.uuid4().hex[:12]}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_pids))
                return cls(path)
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
        return None

    def join(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def kill_all(self) -> None:
        with contextlib.suppress(OSError):
            for line in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(line), 9)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                import time

                time.sleep(0.05)
                self.kill_all()


def _pids_cgroup_bases() -> list[Path]:
    bases = []
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "pids" in controllers.read_text().split():
        bases.append(v2)
    for v1 in (Path("/sys/fs/cgroup/pids"),):
        if (v1 / "pids.max").exists() or (v1 / "cgroup.procs").exists():
            bases.append(v1)
    return [b for b in bases if os.access(b, os.W_OK)]
