"""Adapter folders for tests: a peft LoRA folder's files (config and weight
bytes), for the checks that read them. Real adapters (made with peft) are
in tests/e2e."""

from __future__ import annotations

import json
from pathlib import Path


def fake_adapter_folder(folder: Path, *, rank: int = 8, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "tiny",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder
