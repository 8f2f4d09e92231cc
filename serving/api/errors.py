"""Bad input in one clear sentence naming the field, from pydantic's errors.

The answers themselves (the envelope, its status and headers) are built in
``serving.api.responses``.
"""

from __future__ import annotations

from typing import Any

from serving.errors import BadRequestError

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "constrained-str"}
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    # Drop pydantic's union-branch names (e.g. 'str', 'list[int]') from the path.
    named = [
        p
        for p in loc
        if isinstance(p, int) or (not any(ch in str(p) for ch in "[]") and str(p) not in _TYPE_TAGS)
    ]
    text = ""
    for part in named:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or None


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """One clear sentence (and the field) from pydantic's error list (its
    locations relative to the request body)."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    param = _param_from_loc(loc)
    kind = first.get("type", "")
    if kind in _NOT_AN_OBJECT and param is None:
        return "The request body must be a JSON object.", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "string_unicode":
        return f"Invalid value for '{param}': must be valid UTF-8 text.", param
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}.", param


def invalid_body(errors: list[Any]) -> BadRequestError:
    message, param = validation_message(errors)
    return BadRequestError(message, param=param)
