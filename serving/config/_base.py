"""Shared pieces of the config models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"


class Strict(BaseModel):
    """Base: unknown keys are errors (a renamed key must never be ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)
