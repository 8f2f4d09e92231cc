"""Seed Serve's configuration: one YAML file < ``SEED_SERVE_*`` env < CLI flags.

Every field has a description and a validator; unknown (renamed, misspelled)
keys fail loudly with a suggestion. The pydantic defaults *are* the embedded
default (``deploy/config/cpu-demo.yaml`` spells them out).

Environment overrides name a dotted path with ``__`` between the parts, e.g.
``SEED_SERVE_GATEWAY__PORT=9000`` or ``SEED_SERVE_REPLICA_GROUPS__0__REPLICAS=2``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from serving.config._model import ServingConfig
from serving.errors import ConfigError

ENV_PREFIX = "SEED_SERVE_"


# --------------------------------------------------------------------------- loading


def _parse_value(raw: str) -> Any:
    """Env/CLI values are strings; lists and maps may be given as YAML."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("", f"cannot parse {raw!r} as YAML: {exc}") from exc
    if text.lower() in ("null", "none", "~"):
        return None
    return raw


def _split_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for part in re.split(r"\.|\[|\]", dotted):
        if part == "":
            continue
        parts.append(int(part) if part.isdigit() else part)
    return parts


def _format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, str) and "[" in part:
            continue  # which member of a union pydantic tried (``list[int]``): not a key
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _set_path(target: dict[str, Any], path: list[str | int], value: Any, source: str) -> None:
    defaults = ServingConfig().model_dump(mode="json")
    node: Any = target
    default_node: Any = defaults
    for index, part in enumerate(path[:-1]):
        next_part = path[index + 1]
        default_child = _child(default_node, part)
        if isinstance(node, dict):
            if not isinstance(node.get(part), dict | list):
                node[part] = _seed(default_child, next_part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise ConfigError(
                    _format_loc(path[: index + 1]),
                    f"index {part} is out of range (from {source}); the list has {len(node)}",
                )
            node = node[part]
        else:
            raise ConfigError(_format_loc(path[: index + 1]), f"is not a section (from {source})")
        default_node = default_child
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(_format_loc(path), f"index out of range (from {source})")
        node[last] = value
    else:
        if last == "policy" and node == default_node and node.get(last) != value:
            # Switching a tagged union's variant (routing.policy=round_robin): the
            # defaults of the old variant do not belong to the new one.
            node.clear()
        node[last] = value


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _seed(default_child: Any, next_part: str | int) -> Any:
    if isinstance(default_child, list | dict):
        import copy

        return copy.deepcopy(default_child)
    return [] if isinstance(next_part, int) else {}


def _suggest(loc: tuple[str | int, ...]) -> str:
    """'did you mean' for an unknown key, from the fields of its parent model."""
    model: type[BaseModel] | None = ServingConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return ""
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidate = inner[0] if inner else annotation
        model = (
            candidate if isinstance(candidate, type) and issubclass(candidate, BaseModel) else None
        )
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field = _format_loc(loc)
    if first["type"] == "extra_forbidden":
        problem = "unknown key (renamed or misspelled?)" + _suggest(loc)
    else:
        problem = first["msg"]
        if "input" in first and not isinstance(first["input"], dict | list):
            problem += f" (got {first['input']!r})"
    source = next(
        (src for path, src in sources.items() if field == path or field.startswith(path + ".")),
        None,
    )
    if source:
        problem += f" [from {source}]"
    more = len(exc.errors()) - 1
    if more:
        problem += f" (+{more} more problem{'s' if more > 1 else ''})"
    return ConfigError(field, problem)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
) -> ServingConfig:
    """Build the config: file < ``SEED_SERVE_*`` variables in ``env`` < ``overrides``.

    ``overrides`` are (dotted path, value) pairs from CLI flags. Raises
    :class:`ConfigError` naming the first bad field.
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        file_path = Path(path).expanduser()
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {file_path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{file_path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{file_path} must hold a mapping at the top level")
        raw = loaded

    # A variant's discriminator first, so that its own fields land on the right variant.
    def policy_first(item: tuple[str, Any]) -> tuple[bool, str]:
        return (not item[0].lower().endswith("policy"), item[0])

    for name, value in sorted((env or {}).items(), key=policy_first):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue  # not a config variable (e.g. SEED_SERVE_HOME)
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        parts = _split_path(dotted)
        _set_path(raw, parts, _parse_value(value), f"env {name}")
        sources[_format_loc(parts)] = f"env {name}"

    for dotted, value in sorted(overrides, key=lambda item: not item[0].endswith(".policy")):
        parts = _split_path(dotted)
        parsed = _parse_value(value) if isinstance(value, str) else value
        _set_path(raw, parts, parsed, f"flag {dotted}")
        sources[_format_loc(parts)] = "command line"

    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, sources) from None


def dump_config(config: ServingConfig) -> str:
    """The config as YAML (what a file with the same effect would say)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
