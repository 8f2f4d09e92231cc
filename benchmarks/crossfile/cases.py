"""Cross-file completion cases cut from real code (default: the standard library).

A case is a line of module A of a package that calls a function or class
defined in another module B of the same top-level package, imported by name
(``from .b import f``, ``from pkg.b import f``, ``from . import b`` then
``b.f(``). The cursor is put where the call starts: the target is the rest of
the line, the prefix A's text before it (last 60 lines), the suffix the lines
after it (next 30), and the context B's definition of the called name (its
``def``/``class`` block, at most 60 lines).

Kept only if the call has arguments and none is a string literal (so the
definition can tell the model something: argument order, keyword names; a
message's words are in no definition), the call fits on its line (at most 120
characters, no comment after it), B defines the name at its top level (not
re-exported, not conditionally), and A binds neither the called name nor the
module it is read from by anything else (a definition, an assignment, a
parameter, another import). One case per line (its first such call). Test
folders (test/, tests/, idle_test/) and files over 200 KB are left out.
Files and calls are taken in sorted order, then drawn with one seeded RNG:
the same seed and the same Python version give the same cases.
"""

from __future__ import annotations

import ast
import gc
import os
import random
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX_LINES = 60
SUFFIX_LINES = 30
CONTEXT_LINES = 60
MAX_LINE_CHARS = 120
MAX_FILE_BYTES = 200_000
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
_DEFINITION = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class Case:
    path: str  # A, relative to the source root (posix)
    line: int  # 1-based line of the call in A
    called: str  # the name the call uses in A (``f``, or ``f`` of ``b.f(``)
    target: str  # the rest of the line from the call's start (trailing blanks cut)
    prefix: str
    suffix: str
    context_path: str  # B, relative to the source root
    context: str  # B's definition of the called name
    identifiers: tuple[str, ...]  # the called name, the first argument's name, keyword names
    keywords: tuple[str, ...] = ()  # the call's keyword argument names

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def default_source_tree() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class _Module:
    name: str  # dotted, relative to the root
    path: Path
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def package_modules(root: Path) -> dict[str, _Module]:
    """Modules of the packages under ``root`` (directories with ``__init__.py``
    all the way up), by dotted name; test directories and big files left out."""
    modules: dict[str, _Module] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        rel = here.relative_to(root)
        # Names with "-" (lib-dynload, config-3.11-...) are no packages.
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and "-" not in d)
        if not rel.parts:
            continue  # the root's own modules belong to no package
        if "__init__.py" not in files:
            dirs[:] = []  # not a package: nothing below it is one
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = here / name
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
            except OSError:
                continue
            stem = name[:-3]
            is_package = stem == "__init__"
            dotted = ".".join(rel.parts if is_package else (*rel.parts, stem))
            modules[dotted] = _Module(dotted, path, is_package)
    return modules


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class _Binding:
    module: str  # B's dotted name
    name: str | None  # the imported name (None: the module itself is bound)


def _absolute(module: _Module, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    parts = module.package.split(".") if module.package else []
    if node.level - 1 >= len(parts):
        return None  # above the top-level package
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base) or None


def _bindings(
    module: _Module, imports: list[ast.Import | ast.ImportFrom], modules: dict[str, _Module]
) -> dict[str, _Binding]:
    """Names ``module`` binds by ``from ... import`` to other modules of its
    top-level package; a name bound twice (to different things) is dropped."""
    top = module.name.split(".")[0]
    found: dict[str, _Binding | None] = {}
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:  # `import x.y` binds x: not a by-name import
                found[(alias.asname or alias.name).split(".")[0]] = None
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        source = _absolute(module, node)
        for alias in node.names:
            if alias.name == "*":
                continue
            bound = alias.asname or alias.name
            binding: _Binding | None = None
            if source is not None and source.split(".")[0] == top:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    binding = _Binding(submodule, None)
                elif source in modules:
                    binding = _Binding(source, alias.name)
            if binding is not None and binding.module == module.name:
                binding = None
            found[bound] = binding if found.get(bound, binding) == binding else None
    return {name: b for name, b in found.items() if b is not None}


@dataclass
class _Scan:
    """What one walk over A finds: its imports, the names it binds itself
    (definitions, assignments, parameters, loop variables), its calls."""

    imports: list[ast.Import | ast.ImportFrom]
    local: set[str]
    calls: list[ast.Call]


# Fields that never hold a node we look at: names (strings), contexts (Load,
# Store: the Name's own class tells), import aliases (read from the import).
_NOT_WALKED = frozenset({"ctx", "id", "attr", "name", "arg", "module", "level", "names"})
_WALKED: dict[type, tuple[str, ...]] = {}


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes :func:`_scan` needs, like ``ast.walk`` (in another order) but
    without the fields above and constants' insides: 2.5x as fast."""
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, ast.AST):
            continue  # None in lists (`**` in dicts, missing defaults), strings
        yield node
        cls = node.__class__
        fields = _WALKED.get(cls)
        if fields is None:
            fields = (
                () if cls is ast.Constant else tuple(f for f in cls._fields if f not in _NOT_WALKED)
            )
            _WALKED[cls] = fields
        for field in fields:
            value = getattr(node, field, None)
            if value.__class__ is list:
                stack.extend(value)
            elif value is not None:
                stack.append(value)


def _scan(tree: ast.Module) -> _Scan:
    scan = _Scan([], set(), [])
    for node in _nodes(tree):
        if isinstance(node, ast.Call):
            scan.calls.append(node)
        elif isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                scan.local.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            scan.imports.append(node)
        elif isinstance(node, _DEFINITION):
            scan.local.add(node.name)
        elif isinstance(node, ast.arg):
            scan.local.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scan.local.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            scan.local.update(node.names)
    scan.calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return scan


# --------------------------------------------------------------------------- definitions


def definitions(lines: list[str], tree: ast.Module) -> dict[str, str]:
    """The snippet of each top-level ``def``/``class`` of a module by name (the
    last one wins, as in Python; conditional ones are not counted)."""
    return {node.name: snippet(lines, node) for node in tree.body if isinstance(node, _DEFINITION)}


def _start(node: ast.stmt) -> int:
    """0-based index of a definition's first line (its first decorator's)."""
    decorators = node.decorator_list if isinstance(node, _DEFINITION) else []
    return min([node.lineno, *(d.lineno for d in decorators)]) - 1


def snippet(lines: list[str], node: ast.stmt, limit: int = CONTEXT_LINES) -> str:
    """The source of a definition (decorators included), at most ``limit`` lines.
    A class longer than that is cut to what a call of it needs: its header,
    docstring (at most 15 lines) and ``__init__`` (or ``__new__``)."""
    start, end = _start(node), node.end_lineno or node.lineno
    block = lines[start:end]
    inits = [
        n
        for n in (node.body if isinstance(node, ast.ClassDef) else [])
        if isinstance(n, ast.FunctionDef) and n.name in ("__init__", "__new__")
    ]
    if len(block) > limit and inits and isinstance(node, ast.ClassDef):
        init, first = inits[0], node.body[0]
        head_end = first.lineno - 1
        if first is not init and isinstance(first, ast.Expr):
            if isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                head_end = min(first.end_lineno or head_end, head_end + 15)
        init_start = _start(init)
        block = lines[start:head_end]
        if init_start > head_end:
            block.append(" " * init.col_offset + "...\n")
        block += lines[init_start : init.end_lineno]
    text = "".join(block[:limit])
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------- calls


def _called(
    call: ast.Call, bindings: dict[str, _Binding], local: set[str]
) -> tuple[str, _Binding] | None:
    """(the called name, where it is defined) for ``f(...)`` and ``b.f(...)``,
    unless A binds one of the names itself (then the call may not be B's)."""
    func = call.func
    if isinstance(func, ast.Name):
        binding = bindings.get(func.id)
        if binding is not None and binding.name is not None:
            if not {func.id, binding.name} & local:
                return func.id, binding
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        binding = bindings.get(func.value.id)
        if binding is not None and binding.name is None:
            if not {func.value.id, func.attr} & local:
                return func.attr, _Binding(binding.module, func.attr)
    return None


def _informative(call: ast.Call) -> bool:
    """A call whose arguments a definition can tell something about: it has
    some, and none is a string literal (a message's words are in no definition)."""
    values = [*call.args, *(kw.value for kw in call.keywords)]
    return bool(values) and not any(
        isinstance(v, ast.JoinedStr) or (isinstance(v, ast.Constant) and isinstance(v.value, str))
        for v in values
    )


def _identifiers(called: str, call: ast.Call) -> tuple[str, ...]:
    names = [called]
    if call.args:
        first = call.args[0]
        if isinstance(first, ast.Name):
            names.append(first.id)
        elif isinstance(first, ast.Attribute):
            names.append(first.attr)
    names += [kw.arg for kw in call.keywords if kw.arg]
    return tuple(dict.fromkeys(names))


def _column(line: str, byte_offset: int) -> int:
    """ast columns count UTF-8 bytes; strings count characters."""
    return len(line.encode()[:byte_offset].decode(errors="ignore"))


class _Sources:
    """Modules read and parsed once each. Of a module only its definitions'
    snippets are kept, except the tree of a module parsed as some A's B that
    is yet to be scanned as an A itself (until then)."""

    def __init__(self, root: Path, modules: dict[str, _Module], scanned: set[str]) -> None:
        self.root = root
        self.modules = modules
        self.scanned = scanned  # the modules to be scanned as A
        self._definitions: dict[str, dict[str, str]] = {}
        self._kept: dict[str, tuple[list[str], ast.Module] | None] = {}

    def parse(self, name: str) -> tuple[list[str], ast.Module] | None:
        if name in self._kept:
            return self._kept.pop(name)
        try:
            text = self.modules[name].path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            self._definitions[name] = {}
            return None
        lines = text.splitlines(keepends=True)
        self._definitions[name] = definitions(lines, tree)
        return lines, tree

    def definition(self, module: str, name: str) -> str | None:
        if module not in self._definitions:
            parsed = self.parse(module)
            if module in self.scanned:
                self._kept[module] = parsed
        return self._definitions[module].get(name)

    def relative(self, module: str) -> str:
        return self.modules[module].path.relative_to(self.root).as_posix()


def module_cases(name: str, sources: _Sources) -> list[Case]:
    """Every case of one module A (one per line: the line's first qualifying call)."""
    got = sources.parse(name)
    if got is None:
        return []
    lines, tree = got
    scan = _scan(tree)
    bindings = _bindings(sources.modules[name], scan.imports, sources.modules)
    if not bindings:
        return []
    by_line: dict[int, Case] = {}
    for call in scan.calls:
        if call.lineno in by_line or call.end_lineno != call.lineno:
            continue
        if not _informative(call):
            continue
        found = _called(call, bindings, scan.local)
        if found is None:
            continue
        called, binding = found
        assert binding.name is not None
        context = sources.definition(binding.module, binding.name)
        if context is None:
            continue  # re-exported, or defined conditionally: no single definition
        text = lines[call.lineno - 1]
        row = text.rstrip()
        if len(row) > MAX_LINE_CHARS:
            continue
        start = _column(text, call.col_offset)
        end = _column(text, call.end_col_offset or len(text.encode()))
        if "#" in row[end:]:
            continue  # a comment after the call: not code to complete
        index = call.lineno - 1
        following = "".join(lines[index + 1 : index + 1 + SUFFIX_LINES])
        by_line[call.lineno] = Case(
            path=sources.relative(name),
            line=call.lineno,
            called=called,
            target=row[start:],
            prefix="".join(lines[max(0, index - PREFIX_LINES) : index]) + text[:start],
            suffix="\n" + following if text.endswith("\n") else "",
            context_path=sources.relative(binding.module),
            context=context,
            identifiers=_identifiers(called, call),
            keywords=tuple(kw.arg for kw in call.keywords if kw.arg),
        )
    return [by_line[line] for line in sorted(by_line)]


def _worth_parsing(path: Path, top: str) -> bool:
    """Only modules with a relative or same-package import can hold a case."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return "from ." in text or f"from {top}" in text


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Parsing makes millions of objects, none in reference cycles: with the
    cyclic garbage collector running (and walking them again and again)
    extraction of the standard library's cases took three times as long."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def all_cases(root: Path) -> list[Case]:
    """Every case under ``root``, in path and line order."""
    modules = package_modules(root)
    scanned = {n for n in modules if _worth_parsing(modules[n].path, n.split(".")[0])}
    sources = _Sources(root, modules, scanned)
    cases: list[Case] = []
    with _collector_paused():
        for name in sorted(scanned):
            cases += module_cases(name, sources)
    return cases


def draw(cases: list[Case], count: int, seed: int) -> list[Case]:
    """``count`` cases, seeded: first one per (A, called definition) so that no
    single hot function fills the set, then the others if more are asked."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    seen: set[tuple[str, str, str]] = set()
    first: list[Case] = []
    rest: list[Case] = []
    for case in order:
        key = (case.path, case.context_path, case.called)
        (rest if key in seen else first).append(case)
        seen.add(key)
    return (first + rest)[:count]
