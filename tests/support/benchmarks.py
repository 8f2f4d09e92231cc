"""Running a benchmark as users run it (``python -m benchmarks...``) and
checking the report it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.stack import ROOT


def run_benchmark(
    module: str, args: list[str], home: Path | None = None, timeout: int = 600
) -> str:
    env = {**os.environ}
    if home is not None:
        env["SEED_SERVE_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def report(folder: Path, name: str) -> dict[str, Any]:
    data = json.loads((folder / f"{name}.json").read_text())
    assert data["machine"]["cpu_cores"] and "python -m benchmarks" in data["command"]
    markdown = (folder / f"{name}.md").read_text()
    assert "- machine: " in markdown and "- command: `python -m benchmarks" in markdown
    return dict(data)
