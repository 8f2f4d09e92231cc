"""Seeded bugs in correct code: the repair inputs and the test-generation mutants.

Each operator changes exactly one expression on one line of the function body
(positions from the AST, so the rest of the file is untouched byte for byte):
off-by-one, wrong operator, wrong variable, missing return, wrong boundary.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass

OPERATORS = ("off_by_one", "wrong_operator", "wrong_variable", "missing_return", "wrong_boundary")

_SWAP_BINOP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Div: ast.Mult,
}
_SWAP_BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
_SWAP_COMPARE = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, **_SWAP_BOUNDARY}


@dataclass(frozen=True)
class Bug:
    operator: str
    line: int  # 1-based line of the change in the full source
    source: str  # the whole program with the bug


def _single_line(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno  # type: ignore[attr-defined]


def _replace(source: str, node: ast.AST, text: str) -> str:
    lines = source.splitlines(keepends=True)
    index = node.lineno - 1  # type: ignore[attr-defined]
    line = lines[index]
    encoded = line.encode()
    start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
    lines[index] = (encoded[:start] + text.encode() + encoded[end:]).decode()
    return "".join(lines)


def _candidates(tree: ast.AST, operator: str, first_line: int) -> list[tuple[ast.AST, str]]:
    """(node, replacement text) for every place ``operator`` can change."""
    found: list[tuple[ast.AST, str]] = []
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
    for node in ast.walk(tree):
        if not _single_line(node) or node.lineno < first_line:  # type: ignore[attr-defined]
            continue
        if operator == "off_by_one" and isinstance(node, ast.Constant) and type(node.value) is int:
            found.append((node, str(node.value + 1)))
        elif (
            operator == "wrong_operator"
            and isinstance(node, ast.BinOp)
            and type(node.op) in _SWAP_BINOP
        ):
            swapped = ast.BinOp(node.left, _SWAP_BINOP[type(node.op)](), node.right)
            found.append((node, ast.unparse(swapped)))
        elif (
            operator == "wrong_variable"
            and isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
        ):
            others = [
                n
                for n in names
                if n != node.id and not n[0].isupper() and n not in dir(__builtins__)
            ]
            for other in others[:3]:
                found.append((node, other))
        elif (
            operator == "missing_return" and isinstance(node, ast.Return) and node.value is not None
        ):
            found.append((node, ast.unparse(node.value)))
        elif operator == "wrong_boundary" and isinstance(node, ast.Compare) and len(node.ops) == 1:
            table = _SWAP_BOUNDARY if type(node.ops[0]) in _SWAP_BOUNDARY else _SWAP_COMPARE
            if type(node.ops[0]) in table:
                swapped_cmp = ast.Compare(node.left, [table[type(node.ops[0])]()], node.comparators)
                found.append((node, ast.unparse(swapped_cmp)))
    return found


def inject(source: str, operator: str, rng: random.Random, first_line: int = 1) -> Bug | None:
    """One ``operator`` bug at a random place at or after ``first_line``; None if none fits."""
    tree = ast.parse(source)
    candidates = _candidates(tree, operator, first_line)
    rng.shuffle(candidates)
    for node, text in candidates:
        mutated = _replace(source, node, text)
        if mutated == source:
            continue
        try:
            ast.parse(mutated)
        except SyntaxError:
            continue
        return Bug(operator=operator, line=node.lineno, source=mutated)  # type: ignore[attr-defined]
    return None


def mutants(source: str, rng: random.Random, first_line: int, per_operator: int = 1) -> list[Bug]:
    """Up to ``per_operator`` distinct bugs per operator."""
    result: list[Bug] = []
    seen: set[str] = set()
    for operator in OPERATORS:
        for _ in range(per_operator * 3):
            bug = inject(source, operator, rng, first_line)
            if bug is None:
                break
            if bug.source not in seen:
                seen.add(bug.source)
                result.append(bug)
            if sum(b.operator == operator for b in result) >= per_operator:
                break
    return result
