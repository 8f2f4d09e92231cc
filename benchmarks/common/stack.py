"""A benchmark's own `seed-serve up`: started from a config in a home of its
own (its process group, so that stopping it stops its engines too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


class BenchStack:
    """`seed-serve up --config <home>/config.yaml` with SEED_SERVE_HOME=home."""

    def __init__(self, home: Path, config: dict[str, Any]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.config_path = home / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.base = f"http://127.0.0.1:{config['gateway']['port']}"
        self.log_path = home / "up.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "up", "--config", str(self.config_path)],
            cwd=ROOT,
            env={**os.environ, "SEED_SERVE_HOME": str(home)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, replicas: int = 1, timeout_s: float = 900) -> float:
        """Seconds until ``replicas`` replicas are ready (SystemExit with the
        log's end when the stack exits or times out)."""
        began = time.monotonic()
        deadline = began + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"seed-serve up exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                states = httpx.get(self.base + "/ready", timeout=2).json().get("replicas", {})
                if list(states.values()).count("ready") >= replicas:
                    return time.monotonic() - began
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        raise SystemExit(f"the stack did not get ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def demo_key(self) -> str:
        return (self.home / "demo-key").read_text().strip()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()
