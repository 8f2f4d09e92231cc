"""The package stack is one-way: every module's imports (read with ``ast``,
those inside functions too) against the rules below. A failure names the file,
the import and the rule it breaks.

    api -> tasks -> admission -> upstream      (each may import what is below it)
    cluster                                    (the Ray side: no gateway package)
    training                                   (a Ray job: no gateway package; nothing
                                                serving imports it, only the command line)
    sandbox, observability                     (beside the layers: none of them)
    leaves: config, errors, paths, request_context, tokens, fim_templates,
            background, engine_link, adapters  (nothing above them)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[1] / "serving"

GATEWAY = {"api", "tasks", "admission", "upstream"}
LEAVES = {
    "config",
    "errors",
    "paths",
    "request_context",
    "tokens",
    "fim_templates",
    "background",
    "engine_link",
    "adapters",
}
ABOVE_THE_LEAVES = GATEWAY | {"cluster", "sandbox", "observability", "training"}
# part -> (parts it must never import, why)
RULES: dict[str, tuple[set[str], str]] = {
    "api": (
        {"cluster", "training"},
        "the gateway reaches the cluster only through upstream's replica source",
    ),
    "tasks": ({"api", "cluster", "training"}, "tasks know no HTTP"),
    "admission": (
        {"api", "tasks", "cluster", "training"},
        "admission knows no HTTP and no prompts",
    ),
    "upstream": (
        {"api", "tasks", "admission", "cluster", "training"},
        "the engine side knows no tenants or prompts",
    ),
    "cluster": (GATEWAY | {"training"}, "Ray actors carry no gateway code"),
    "sandbox": (GATEWAY | {"observability", "cluster"}, "the sandbox is a leaf beside the layers"),
    "observability": (GATEWAY | {"cluster", "sandbox"}, "metrics and logs are a leaf"),
    "training": (
        GATEWAY | {"cluster", "sandbox", "observability"},
        "training runs as a Ray job beside the serving path",
    ),
    **{leaf: (ABOVE_THE_LEAVES, "a leaf imports nothing above it") for leaf in LEAVES},
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.imported}: {self.rule}"


def part_of(module: str) -> str | None:
    """``serving.api.app`` -> ``api``; ``serving.errors`` -> ``errors``."""
    parts = module.split(".")
    if parts[0] != "serving" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "serving":  # `from serving import api` imports the subpackage
                found += [(node.lineno, f"serving.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def violations(root: Path) -> list[Violation]:
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        module = ".".join(relative.with_suffix("").parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        own = part_of(module.removesuffix(".__init__"))
        if own not in RULES:
            continue  # the face (cli, runtime, ...) may import anything
        forbidden, why = RULES[own]
        for line, imported in imports_of(path, package):
            target = part_of(imported)
            if target is not None and target != own and target in forbidden:
                found.append(Violation(str(relative), line, imported, f"{own} -> {target}: {why}"))
    return found


def test_no_import_breaks_the_layers() -> None:
    broken = violations(SERVING)
    assert not broken, "imports against the package stack:\n" + "\n".join(map(str, broken))


def test_every_package_is_under_a_rule() -> None:
    """A new package must be placed in the stack (or be part of the face)."""
    face = {
        "cli",
        "cli_adapters",
        "runtime",
        "ray_cluster",
        "demo_model",
        "tiny_model",
        "config_docs",
        "__main__",
    }
    parts = {p.stem if p.is_file() else p.name for p in SERVING.iterdir()}
    parts = {p for p in parts if not p.startswith(("_", ".")) and p not in {"data", "py"}}
    unplaced = parts - set(RULES) - face
    assert not unplaced, f"place these in tests/test_layers.py: {sorted(unplaced)}"


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("from serving.api.app import build_app\n", "upstream/bad.py", "upstream -> api"),
        ("def f():\n    import serving.tasks.fim\n", "cluster/bad.py", "cluster -> tasks"),
        ("from ..admission import quotas\n", "upstream/bad.py", "upstream -> admission"),
        ("from serving import api\n", "errors.py", "errors -> api"),
        ("from serving.observability.metrics import M\n", "sandbox/bad.py", "sandbox -> obs"),
    ],
)
def test_the_check_catches_upward_imports(
    tmp_path: Path, source: str, where: str, expected: str
) -> None:
    root = tmp_path / "serving"
    target = root / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    [violation] = violations(root)
    assert violation.rule.startswith(expected.replace("obs", "observability"))
    assert violation.file == f"serving/{where}"


def test_the_check_allows_downward_imports(tmp_path: Path) -> None:
    root = tmp_path / "serving"
    (root / "api").mkdir(parents=True)
    (root / "api" / "ok.py").write_text(
        "from serving.tasks import x\nfrom serving.upstream import y\nfrom serving.errors import z\n"
    )
    (root / "engine_link").mkdir()
    (root / "engine_link" / "ok.py").write_text("from serving.errors import z\n")
    assert violations(root) == []
