"""Where Seed Serve keeps what it builds and writes on a machine.

Everything lives under one home folder (``~/.cache/seed-serve`` unless
``SEED_SERVE_HOME`` says otherwise) so that nothing generated lands in git.
"""

from __future__ import annotations

import os
from pathlib import Path

DEMO_MODEL_DIRNAME = "smollm2-135m-instruct"


def seed_serve_home() -> Path:
    """The folder for models, logs and run state."""
    override = os.environ.get("SEED_SERVE_HOME")
    if override:
        return Path(override).expanduser()
    return Path("~/.cache/seed-serve").expanduser()


def models_dir() -> Path:
    return seed_serve_home() / "models"


def demo_model_dir() -> Path:
    return models_dir() / DEMO_MODEL_DIRNAME


def logs_dir() -> Path:
    return seed_serve_home() / "logs"


def run_state_file() -> Path:
    """Written by ``seed-serve up`` so that other commands find the running default."""
    return seed_serve_home() / "run" / "up.json"


# Written last into a built model folder; a folder without it is never served.
COMPLETE_MARKER = ".seed-serve-complete"
