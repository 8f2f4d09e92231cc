"""The engine's supervisor: nothing of a vLLM engine outlives its replica.

vLLM's OpenAI server starts its engine core (and workers) as child processes.
If the server dies first (crash, SIGKILL, or SIGTERM while still starting),
those children are orphaned and keep their memory and CPUs. The replica actor
therefore starts ``python -m serving.cluster.supervisor -- <vllm argv>``, in a
process group of its own, with a parent-death signal: the supervisor runs vLLM
in its group and, whenever it stops (asked to, its actor died, or vLLM exited
by itself), terminates every other process of the group, then exits with
vLLM's exit code.

    python -m serving.cluster.supervisor --grace 15 -- python -m vllm... args
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1


def group_members(pgid: int, *, exclude: int | None = None) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc), except ``exclude``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def terminate_group(pgid: int, grace_s: float) -> None:
    """SIGTERM every other member of the group, SIGKILL what is left after ``grace_s``."""
    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        members = group_members(pgid, exclude=me)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_members(pgid, exclude=me):
            _reap()
            time.sleep(0.1)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def supervise(argv: list[str], grace_s: float) -> int:
    stop_requested = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    pgid = os.getpgrp()
    # Same process group (the group is the engine). Should this supervisor be
    # killed outright (Ray SIGKILLs a dead worker's children), the server still
    # hears of it and shuts its engine core down itself.
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    code: int | None = None
    while code is None and not stop_requested:
        try:
            code = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    if code is None:
        # Asked to stop (or the actor died): let vLLM shut down in order first.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            code = -signal.SIGKILL
    terminate_group(pgid, grace_s=min(grace_s, 5.0))
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    return code if code >= 0 else 128 - code


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.cluster.supervisor")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds vLLM gets to stop")
    parser.add_argument("--parent", type=int, default=None, help="exit if this pid is gone")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parsed = parser.parse_args(sys.argv[1:] if args is None else args)
    argv = parsed.argv[1:] if parsed.argv[:1] == ["--"] else parsed.argv
    if not argv:
        parser.error("nothing to run")
    # The parent-death signal is set before exec; if the parent died before
    # that, it never comes: check once by hand.
    if parsed.parent is not None and os.getppid() != parsed.parent:
        return 1
    return supervise(argv, parsed.grace)


if __name__ == "__main__":
    sys.exit(main())
