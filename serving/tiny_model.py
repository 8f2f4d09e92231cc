"""A tiny random-weight Llama for tests and benchmarks.

It has Seed-Coder's special tokens (including the fill-in-the-middle ones) so
that prompt rendering can be checked at token level, and head_dim 64 because
vLLM's CPU attention kernels reject smaller heads.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from serving.paths import COMPLETE_MARKER

BOS_TOKEN = "<[begin▁of▁sentence]>"
EOS_TOKEN = "<[end▁of▁sentence]>"
PAD_TOKEN = "<[pad▁token]>"
FIM_PREFIX = "<[fim-prefix]>"
FIM_SUFFIX = "<[fim-suffix]>"
FIM_MIDDLE = "<[fim-middle]>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]


def _training_corpus(max_bytes: int) -> list[str]:
    """Real Python source from the standard library: deterministic and offline."""
    stdlib = Path(os.__file__).parent
    texts: list[str] = []
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return texts


def build_tiny_model(target: Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Build the tiny model into ``target`` (idempotent) and return it."""
    target = Path(target)
    if (target / COMPLETE_MARKER).exists():
        return target

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(2_000_000), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE],
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).float()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(staging, safe_serialization=True)
    fast.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(json.dumps({"kind": "tiny-llama"}))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    return target


if __name__ == "__main__":
    print(build_tiny_model(Path(sys.argv[1])))
