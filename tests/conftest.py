"""Fixtures every test folder may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.paths import seed_serve_home
from serving.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Llama with Seed-Coder's FIM tokens (built once, cached)."""
    return build_tiny_model(seed_serve_home() / "test-models" / "tiny-llama")
