"""Training examples in the model's own FIM format, and the held-out split."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from serving.adapters import TrainingExample
from serving.fim_templates import FimTemplate

# Files a repository checkout contributes (source code the gateway completes).
SOURCE_SUFFIXES = frozenset(
    {".py", ".js", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java", ".kt", ".c", ".h", ".cc",
     ".cpp", ".hpp", ".cs", ".rb", ".php", ".scala", ".swift", ".sh", ".sql"}
)  # fmt: skip
_SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", "build", "dist"}
)
_MAX_FILE_BYTES = 200_000
_PREFIX_CHARS = 1500
_SUFFIX_CHARS = 400


@dataclass(frozen=True)
class FimExample:
    prefix: str
    suffix: str
    middle: str  # what the model should write at the cursor
    context: str = ""  # other files, as the gateway showed them
    source: str = "accepted"  # accepted (a suggestion a developer kept) or repo
    key: str = ""  # stable identity (the held-out split hashes it)


def from_team_data(examples: Iterable[TrainingExample]) -> list[FimExample]:
    """Accepted suggestions: the kept part of the suggestion is the target,
    after the indentation the gateway held back from the prompt (the model
    writes that first, as at serving time)."""
    found = []
    for example in examples:
        if example.accepted.strip():
            found.append(
                FimExample(
                    prefix=example.prefix,
                    suffix=example.suffix,
                    middle=example.healed + example.accepted,
                    context=example.context,
                    key=example.completion_id,
                )
            )
    return found


def from_repository(
    root: Path, *, per_file: int = 4, max_files: int = 500, seed: int = 0
) -> list[FimExample]:
    """FIM examples cut from a checkout's source files: at random line
    boundaries, one to three lines as the middle (what completions write)."""
    rng = random.Random(seed)
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix in SOURCE_SUFFIXES and not path.is_symlink():
                files.append(path)
    rng.shuffle(files)
    found = []
    for path in files[:max_files]:
        try:
            if path.stat().st_size > _MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.splitlines(keepends=True)
        code_lines = [i for i, line in enumerate(lines) if line.strip()]
        if len(code_lines) < 4:
            continue
        relative = path.relative_to(root).as_posix()
        for n in range(per_file):
            start = rng.choice(code_lines[1:])
            end = min(len(lines), start + rng.randint(1, 3))
            prefix = "".join(lines[:start])[-_PREFIX_CHARS:]
            middle = "".join(lines[start:end])
            suffix = "".join(lines[end:])[:_SUFFIX_CHARS]
            if middle.strip():
                key = f"repo:{relative}:{start}:{n}"
                found.append(FimExample(prefix, suffix, middle, source="repo", key=key))
    return found


def _rank(example: FimExample) -> int:
    digest = hashlib.blake2b(example.key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 10_000


def _picked(rank: int, share: float) -> bool:
    return rank < share * 10_000


def held_out(example: FimExample, share: float) -> bool:
    """Whether an accepted example is always held out for evaluation: its key
    ranks under ``share`` (the same in every run, however the data grows)."""
    return example.source == "accepted" and _picked(_rank(example), share)


def split(
    examples: list[FimExample], share: float = 0.2
) -> tuple[list[FimExample], list[FimExample]]:
    """(training, held-out) examples; repository examples always train.

    Accepted examples are held out in the order of their keys' rank: all that
    ``held_out`` picks, then more until ``share`` of them (rounded down) are.
    The rank alone is a coin toss per example: with 30 accepted suggestions it
    held out fewer than 3 about one time in 23, refusing a tenant at random.
    Those ``held_out`` picks stay held out as the data grows; the ones added
    to make up the share may move into training when new examples rank lower."""
    ranks = {id(e): _rank(e) for e in examples if e.source == "accepted"}
    picked = sum(_picked(rank, share) for rank in ranks.values())
    ordered = sorted(ranks, key=ranks.__getitem__)
    wanted = math.floor(share * len(ranks) + 1e-9)  # the slack keeps 0.29 * 100 at 29
    chosen = set(ordered[: max(picked, wanted)])
    train = [e for e in examples if id(e) not in chosen]
    return train, [e for e in examples if id(e) in chosen]


def render(example: FimExample, template: FimTemplate | None) -> str:
    """The prompt the gateway would send for this cursor: repository context,
    then the family's FIM prompt (or the prefix alone for a model without FIM)."""
    code = template.render(example.prefix, example.suffix) if template else example.prefix
    return example.context + code
