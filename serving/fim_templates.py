"""Fill-in-the-middle prompt formats, per model family (data in
``serving/data/fim_templates.yaml``), and how one is rendered: the FIM prompt
of the file being edited, and the repository context (other files) before it.

A leaf: the config validates ``engine.fim_template`` against these names, the
replica actor checks the template's tokens against its model's tokenizer at
start-up, and the tasks render prompts with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import yaml

_PLACEHOLDER = re.compile(r"\{(prefix|suffix)\}")
_REPO_PLACEHOLDER = re.compile(r"\{(repo|path|text|comment)\}")
NO_FIM = "none"  # the model has no FIM format: prefix-only generation + suffix-aware trimming

# Line-comment marker of a file, by its extension (the plain repository format
# writes each file's path as a comment in that file's own language).
DEFAULT_LINE_COMMENT = "#"
LINE_COMMENTS: dict[str, str] = {
    **dict.fromkeys(
        (
            ".js .mjs .cjs .jsx .ts .tsx .mts .cts .go .rs .java .kt .kts .scala .swift "
            ".c .h .cc .cpp .cxx .hpp .hh .hxx .cs .fs .php .dart .groovy .gradle .zig "
            ".sol .proto .scss .less .m .mm .v .sv"
        ).split(),
        "//",
    ),
    **dict.fromkeys(".sql .lua .hs .elm .ada .adb .ads".split(), "--"),
    **dict.fromkeys(".clj .cljs .el .lisp .scm .rkt .asm .s .ini".split(), ";"),
    **dict.fromkeys(".tex .sty .erl .hrl".split(), "%"),
    **dict.fromkeys(".vim".split(), '"'),
    # Everything else (Python, shell, Ruby, R, Perl, YAML, TOML, Julia,
    # Elixir, Nim, Makefile, Dockerfile, ...) comments with "#".
}


def line_comment(path: str | None) -> str:
    """The line-comment marker for ``path`` (by extension; ``#`` when unknown)."""
    if not path:
        return DEFAULT_LINE_COMMENT
    suffix = PurePosixPath(path.replace("\\", "/")).suffix.lower()
    return LINE_COMMENTS.get(suffix, DEFAULT_LINE_COMMENT)


def _one_line(value: str) -> str:
    """A path or repository name as one line: it must not start lines of its own."""
    return " ".join(value.splitlines()).strip()


def _without_path_line(template: str, tokens: tuple[str, ...]) -> str:
    """``template`` for a file whose path is unknown: the line holding ``{path}``
    is left out, except the special tokens on it (``<|file_sep|>{path}\\n{text}``
    becomes ``<|file_sep|>{text}``, ``{comment} path: {path}\\n`` becomes "")."""
    at = template.find("{path}")
    if at < 0:
        return template
    start = template.rfind("\n", 0, at) + 1
    end = template.find("\n", at)
    end = len(template) if end < 0 else end + 1
    line = template[start:end]
    kept = sorted((line.find(token), token) for token in tokens if token in line)
    return template[:start] + "".join(token for _, token in kept) + template[end:]


@dataclass(frozen=True)
class RepoFormat:
    """How a family's prompt shows other files of the repository (see the
    header of ``fim_templates.yaml`` for the fields and their placeholders).

    The rendered parts go before the FIM prompt (``render_header``, then
    ``render_file`` per file, then ``render_current``); ``render_current_prefix``
    goes at the start of the FIM prefix itself (StarCoder2 puts the current
    file's path there). Unknown repository name: no header; unknown path: the
    line holding ``{path}`` is left out (its special tokens stay)."""

    file: str
    header: str = ""
    current: str = ""
    current_prefix: str = ""
    tokens: tuple[str, ...] = ()
    _unnamed: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{text}" not in self.file:
            raise ValueError(f"repo.file must hold {{text}}: {self.file!r}")
        for token in self.tokens:
            if not any(token in part for part in self._parts()):
                raise ValueError(f"repo token {token!r} is in none of the repo formats")
        unnamed = {
            name: _without_path_line(getattr(self, name), self.tokens)
            for name in ("file", "current", "current_prefix")
        }
        object.__setattr__(self, "_unnamed", unnamed)

    def _parts(self) -> tuple[str, str, str, str]:
        return (self.header, self.file, self.current, self.current_prefix)

    @property
    def plain(self) -> bool:
        """Without special tokens: paths as comments in plain text."""
        return not self.tokens

    def _render(self, name: str, path: str | None, **values: str) -> str:
        path = _one_line(path) if path else ""
        template = getattr(self, name) if path else self._unnamed[name]
        parts = {"path": path, "comment": line_comment(path), **values}
        # One pass, not str.format: code is full of braces, and "{path}" in a
        # snippet's text must stay as it is.
        return _REPO_PLACEHOLDER.sub(lambda m: parts.get(m.group(1), m.group(0)), template)

    def render_header(self, repo: str | None) -> str:
        """Once, before the files ("" when the repository name is unknown)."""
        repo = _one_line(repo) if repo else ""
        if not self.header or not repo:
            return ""
        return _REPO_PLACEHOLDER.sub(
            lambda m: repo if m.group(1) == "repo" else m.group(0), self.header
        )

    def render_file(self, path: str, text: str) -> str:
        """One file (or snippet of one); ``{text}`` always ends with a newline."""
        if not text.endswith("\n"):
            text += "\n"
        return self._render("file", path, text=text)

    def render_current(self, path: str | None) -> str:
        """After the files, right before the FIM prompt of the file being edited."""
        return self._render("current", path)

    def render_current_prefix(self, path: str | None) -> str:
        """At the start of the FIM prefix of the file being edited (StarCoder2)."""
        return self._render("current_prefix", path)


# Families without repository tokens, and models without FIM (``none``): each
# file is its text after a comment line with its path, in its own language.
PLAIN_REPO_FORMAT = RepoFormat(
    file="{comment} path: {path}\n{text}\n",
    current="{comment} path: {path}\n",
)
_REPO_KEYS = {"header", "file", "current", "current_prefix", "tokens"}


def _repo_format(raw: Any, family: str) -> RepoFormat:
    if raw is None or raw == "plain":
        return PLAIN_REPO_FORMAT
    if not isinstance(raw, dict) or "file" not in raw or set(raw) - _REPO_KEYS:
        raise ValueError(
            f"fim_templates.yaml: {family}.repo must be `plain` or a mapping with `file` "
            f"and optionally {sorted(_REPO_KEYS - {'file'})}, not {raw!r}"
        )
    return RepoFormat(
        file=str(raw["file"]),
        header=str(raw.get("header", "")),
        current=str(raw.get("current", "")),
        current_prefix=str(raw.get("current_prefix", "")),
        tokens=tuple(str(token) for token in raw.get("tokens", ())),
    )


@dataclass(frozen=True)
class FimTemplate:
    name: str
    description: str
    template: str
    tokens: tuple[str, ...]
    stop: tuple[str, ...]
    repo: RepoFormat = PLAIN_REPO_FORMAT

    def render(self, prefix: str, suffix: str) -> str:
        # Not str.format (code is full of braces), and one pass over the
        # template only: "{suffix}" inside the user's code must stay as it is.
        parts = {"prefix": prefix, "suffix": suffix}
        return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], self.template)

    @property
    def overhead_text(self) -> str:
        """The template without prefix and suffix (what the budget must also hold)."""
        return self.render("", "")


@cache
def fim_templates() -> dict[str, FimTemplate]:
    """Every known template, by family name."""
    text = resources.files("serving").joinpath("data/fim_templates.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    return {
        name: FimTemplate(
            name=name,
            description=str(entry["description"]),
            template=str(entry["template"]),
            tokens=tuple(entry["tokens"]),
            stop=tuple(entry["stop"]),
            repo=_repo_format(entry.get("repo"), name),
        )
        for name, entry in raw.items()
    }


def fim_template(name: str) -> FimTemplate | None:
    """The template called ``name``; None for ``none`` (no FIM)."""
    if name == NO_FIM:
        return None
    return fim_templates()[name]


def repo_format(template_name: str) -> RepoFormat:
    """How the family ``template_name`` shows other files (``none``: the plain format)."""
    template = fim_template(template_name)
    return template.repo if template is not None else PLAIN_REPO_FORMAT


def template_names() -> list[str]:
    return [NO_FIM, *fim_templates()]
