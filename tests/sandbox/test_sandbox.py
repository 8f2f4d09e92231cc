"""The sandbox contains what generated code might do (real processes, real limits)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serving.config import SandboxConfig
from serving.sandbox import Sandbox, SandboxResult, SandboxUnavailableError, run_pytest

LIMITS = SandboxConfig(timeout_s=6, cpu_seconds=4, memory_mb=512, max_processes=16, max_file_mb=4)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(LIMITS)
    assert box.available, box.note
    assert box.isolation is not None and box.isolation.kind == "bwrap", (
        f"CI installs bubblewrap; these containment tests need it ({box.note})"
    )
    return box


def run(sandbox: Sandbox, source: str) -> SandboxResult:
    return asyncio.run(sandbox.run_python({"main.py": source}, ["main.py"]))


def test_plain_code_runs(sandbox: Sandbox) -> None:
    result = run(sandbox, "print(sum(range(10)))")
    assert result.exit_code == 0
    assert result.stdout.strip() == "45"


def test_infinite_loop_is_killed(sandbox: Sandbox) -> None:
    result = run(sandbox, "while True:\n    pass\n")
    # CPU-time limit (SIGXCPU/SIGKILL) or the wall clock, whichever comes first.
    assert result.timed_out or (result.exit_code is not None and result.exit_code < 0)
    assert result.duration_s < LIMITS.timeout_s + 5


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    before = len(psutil.pids())
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = asyncio.run(sandbox.run_python({"forkbomb_7f3a.py": bomb}, ["forkbomb_7f3a.py"]))
    assert result.timed_out or result.exit_code != 0
    # Nothing it started outlives the run.
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "forkbomb_7f3a" in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    assert len(psutil.pids()) < before + 10


def test_memory_hog_fails(sandbox: Sandbox) -> None:
    result = run(sandbox, "block = bytearray(2 * 1024 ** 3)\nprint('allocated')\n")
    assert result.exit_code != 0
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_output_flood_is_capped(sandbox: Sandbox) -> None:
    result = run(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert len(result.stdout) <= LIMITS.max_output_bytes
    assert result.output_truncated


def test_huge_file_is_refused(sandbox: Sandbox) -> None:
    result = run(
        sandbox,
        "with open('big.bin', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)\nprint('wrote')\n",
    )
    assert result.exit_code != 0
    assert "wrote" not in result.stdout


def test_environment_is_empty(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEED_SERVE_TEST_SECRET", "hunter2")
    result = run(sandbox, "import os\nprint(sorted(os.environ.items()))\n")
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout
    assert "SEED_SERVE" not in result.stdout


def test_files_outside_the_work_dir_are_invisible(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    home_file = Path.home() / ".seed-serve-sandbox-probe"
    home_file.write_text("home secret")
    try:
        for path in (secret, home_file, Path("/etc/passwd")):
            result = run(sandbox, f"print(open({str(path)!r}).read())")
            assert result.exit_code != 0, path
            assert "secret" not in result.stdout
            assert "root:" not in result.stdout
    finally:
        home_file.unlink()
    # Its own work dir is readable and writable.
    ok = run(sandbox, "open('note.txt', 'w').write('hi')\nprint(open('note.txt').read())")
    assert ok.stdout.strip() == "hi"


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    server.close()
    assert accepted == [], "the sandbox reached a listener on the host's loopback"


def test_no_network(sandbox: Sandbox, listener: int) -> None:
    result = run(
        sandbox,
        f"import socket\ns = socket.create_connection(('127.0.0.1', {listener}), timeout=2)\nprint('connected')\n",
    )
    assert result.exit_code != 0
    assert "connected" not in result.stdout


def test_exit_zero_before_assertions_is_not_a_pass(sandbox: Sandbox) -> None:
    code = {"solution.py": "def add(a, b):\n    return a - b\n"}
    early_exit = "import sys\nfrom solution import add\nsys.exit(0)\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    report = asyncio.run(run_pytest(sandbox, code, "test_solution.py", early_exit))
    assert not report.ok
    hard_exit = "import os\nfrom solution import add\n\ndef test_add():\n    os._exit(0)\n    assert add(2, 3) == 5\n"
    report = asyncio.run(run_pytest(sandbox, code, "test_solution.py", hard_exit))
    assert not report.ok
    assert report.passed == 0


def test_pytest_report_is_honest(sandbox: Sandbox) -> None:
    code = {"solution.py": "def add(a, b):\n    return a + b\n"}
    tests = (
        "from solution import add\n\n"
        "def test_ok():\n    assert add(2, 3) == 5\n\n"
        "def test_wrong():\n    assert add(2, 2) == 5\n"
    )
    report = asyncio.run(run_pytest(sandbox, code, "test_solution.py", tests))
    assert (report.passed, report.failed) == (1, 1)
    assert not report.ok
    assert [f.name for f in report.failures] == ["test_wrong"]
    assert "assert 4 == 5" in report.failures[0].message


def test_unavailable_isolation_fails_closed() -> None:
    box = Sandbox(SandboxConfig(isolation="bwrap", bwrap="/nonexistent/bwrap"))
    assert not box.available
    with pytest.raises(SandboxUnavailableError) as caught:
        asyncio.run(box.run_python({"main.py": "print(1)"}, ["main.py"]))
    assert caught.value.status_code == 503
    assert "bwrap" in caught.value.message


def test_unisolated_needs_explicit_consent() -> None:
    with pytest.raises(ValueError, match="allow_unisolated"):
        SandboxConfig(isolation="none")
    assert os.environ.get("SEED_SERVE_SANDBOX__ISOLATION") != "none"
