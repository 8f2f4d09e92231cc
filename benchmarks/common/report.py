"""JSON + Markdown (+ PNG plots by each benchmark) into one results folder."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from benchmarks.common.machine import describe


def results_dir(base: str | Path | None, name: str) -> Path:
    folder = Path(base) if base else Path("benchmarks") / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_report(folder: Path, name: str, result: dict[str, Any], markdown: str) -> dict[str, Path]:
    """``result`` must carry ``machine`` and ``command``; the Markdown gets a header with both."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    json_path = folder / f"{name}.json"
    md_path = folder / f"{name}.md"
    result = {"benchmark": name, "time": stamp, **result}
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    header = (
        f"# {name}\n\n"
        f"- when: {stamp}\n"
        f"- machine: {describe(result['machine'])}\n"
        f"- command: `{result['command']}`\n\n"
    )
    md_path.write_text(header + markdown.rstrip() + "\n")
    return {"json": json_path, "markdown": md_path}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line(module: str, argv: list[str], secrets: dict[str | None, str]) -> str:
    """The command that produced a result, keys replaced by placeholders (results are shared)."""
    return f"python -m {module} " + shlex.join(secrets.get(arg, arg) for arg in argv)


def publish(
    module: str,
    name: str,
    argv: list[str],
    secrets: dict[str | None, str],
    out: Path | None,
    result: dict[str, Any],
    markdown: str,
    machine: dict[str, Any] | None = None,
) -> Path:
    """Write ``result`` with the machine and the (key-masked) command, print the
    Markdown, and return the results folder."""
    from benchmarks.common.machine import machine_info

    folder = results_dir(out, name.split("-")[0])
    record = {"machine": machine or machine_info(), "command": command_line(module, argv, secrets)}
    paths = write_report(folder, name, {**record, **result}, markdown)
    print(paths["markdown"].read_text())
    return folder


def save_figure(figure: Any, path: Path) -> Path:
    """Lay out, write as PNG and free a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
