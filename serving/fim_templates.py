"""Fill-in-the-middle prompt formats, per model family (data in
``serving/data/fim_templates.yaml``), and how one is rendered.

A leaf: the config validates ``engine.fim_template`` against these names, the
replica actor checks the template's tokens against its model's tokenizer at
start-up, and the tasks render prompts with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

_PLACEHOLDER = re.compile(r"\{(prefix|suffix)\}")
NO_FIM = "none"  # the model has no FIM format: prefix-only generation + suffix-aware trimming


@dataclass(frozen=True)
class FimTemplate:
    name: str
    description: str
    template: str
    tokens: tuple[str, ...]
    stop: tuple[str, ...]

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
        )
        for name, entry in raw.items()
    }


def fim_template(name: str) -> FimTemplate | None:
    """The template called ``name``; None for ``none`` (no FIM)."""
    if name == NO_FIM:
        return None
    return fim_templates()[name]


def template_names() -> list[str]:
    return [NO_FIM, *fim_templates()]
