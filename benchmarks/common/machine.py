"""What a result was measured on: printed with every benchmark's figures."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


_NOISE_PROBE = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.perf_counter() + float(sys.argv[2])
last, gaps = time.perf_counter(), []
while last < end:
    now = time.perf_counter()
    if now - last > 0.002:
        gaps.append(now - last)
    last = now
print(len(gaps), max(gaps, default=0.0), sum(gaps))
"""


def core_noise(cpus: list[int], seconds: float = 3.0) -> dict[int, dict[str, float]]:
    """How often each CPU is taken away from a busy process (interrupts, the
    hypervisor): a spinning probe per CPU, all at once, counts its gaps over
    2 ms. On small VMs one vCPU can be far noisier than another, and a
    latency figure measured there says more about the VM than the code."""
    import sys

    probes = {
        cpu: subprocess.Popen(
            [sys.executable, "-c", _NOISE_PROBE, str(cpu), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for cpu in cpus
    }
    noise: dict[int, dict[str, float]] = {}
    for cpu, probe in probes.items():
        out, _ = probe.communicate(timeout=seconds + 30)
        count, longest, total = out.split()
        noise[cpu] = {
            "gaps_over_2ms": int(count),
            "longest_gap_ms": round(float(longest) * 1000, 1),
            "lost_ms_per_s": round(float(total) * 1000 / seconds, 2),
        }
    return noise


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quietest_cpu(noise: dict[int, dict[str, float]]) -> int:
    return min(noise, key=lambda cpu: (noise[cpu]["lost_ms_per_s"], noise[cpu]["longest_gap_ms"]))


def machine_info() -> dict[str, Any]:
    from serving import __version__

    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "seed_serve": __version__,
        "commit": _commit(),
    }


def describe(info: dict[str, Any]) -> str:
    gpus = ", ".join(info["gpus"]) or "no GPU"
    return (
        f"{info['cpu']} ({info['cpu_cores_usable']}/{info['cpu_cores']} cores), "
        f"{info['memory_gib']} GiB, {gpus}; Python {info['python']}; "
        f"seed-serve {info['seed_serve']} @ {info['commit']}"
    )
