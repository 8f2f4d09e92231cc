"""Nothing of an engine outlives its replica: the supervisor takes the whole
process group down when its parent (the replica actor) dies, when it is asked
to stop, and when the server exits by itself leaving children behind (what
vLLM's engine core does when its API server dies). Real processes; the
"engine" here is a Python program that starts a grandchild, like vLLM's
server starts its engine core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from serving.cluster.supervisor import group_members

ROOT = Path(__file__).resolve().parents[2]

# A server that starts a long-lived child (the "engine core") and then either
# serves forever or exits at once, leaving its child behind.
FAKE_SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[1], "w").write(str(core.pid))
    if sys.argv[2] == "crash":
        sys.exit(3)
    time.sleep(600)
    """
)

# The replica actor's stand-in: spawns the engine the way the replica does,
# prints the supervisor's pid, then lives until killed.
FAKE_ACTOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from serving.cluster.engine_process import spawn_engine
    workdir = Path(sys.argv[1])
    process = spawn_engine(
        [sys.executable, str(workdir / "server.py"), str(workdir / "core.pid"), sys.argv[2]],
        {"PATH": "/usr/bin:/bin", "PYTHONPATH": sys.argv[3]},
        workdir / "engine.log",
        grace_s=2.0,
    )
    print(process.pid, flush=True)
    if sys.argv[2] == "crash":
        print(process.wait(), flush=True)
    time.sleep(600)
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return
        time.sleep(0.1)
    alive = [pid for pid in pids if not _gone(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"still running: {alive}")


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int, int]:
    (tmp_path / "server.py").write_text(FAKE_SERVER)
    (tmp_path / "actor.py").write_text(FAKE_ACTOR)
    actor = subprocess.Popen(
        [sys.executable, str(tmp_path / "actor.py"), str(tmp_path), mode, str(ROOT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert actor.stdout is not None
    supervisor = int(actor.stdout.readline())
    deadline = time.monotonic() + 20
    core_file = tmp_path / "core.pid"
    while not (core_file.exists() and core_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return actor, supervisor, int(core_file.read_text())


def test_killing_the_replica_takes_the_whole_engine_down(tmp_path: Path) -> None:
    actor, supervisor, core = _start(tmp_path, "serve")
    engine = [p for p in group_members(supervisor) if p != supervisor]
    assert core in engine and len(engine) >= 2  # server + its core
    actor.send_signal(signal.SIGKILL)  # Ray kills a replica actor like this
    actor.wait()
    _wait_gone([supervisor, core, *engine])


def test_a_server_that_dies_leaves_no_children(tmp_path: Path) -> None:
    actor, supervisor, core = _start(tmp_path, "crash")
    assert actor.stdout is not None
    # The supervisor reports the server's exit code, after cleaning up its child.
    assert int(actor.stdout.readline()) == 3
    _wait_gone([supervisor, core])
    actor.kill()
    actor.wait()


def test_stop_engine_stops_everything(tmp_path: Path) -> None:
    from serving.cluster.engine_process import stop_engine

    (tmp_path / "server.py").write_text(FAKE_SERVER)
    from serving.cluster.engine_process import spawn_engine

    process = spawn_engine(
        [sys.executable, str(tmp_path / "server.py"), str(tmp_path / "core.pid"), "serve"],
        {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        tmp_path / "engine.log",
        grace_s=2.0,
    )
    deadline = time.monotonic() + 20
    while not (tmp_path / "core.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    core = int((tmp_path / "core.pid").read_text() or 0)
    stop_engine(process, grace_s=5.0)
    assert process.returncode is not None
    _wait_gone([process.pid, core])


@pytest.mark.parametrize("argv", [[], ["--"]])
def test_supervisor_needs_a_command(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.cluster.supervisor", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "nothing to run" in result.stderr
