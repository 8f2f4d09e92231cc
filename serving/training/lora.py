"""The LoRA fine-tune: one Ray Train worker loop (``train_loop_per_worker``).

Each worker loads the base model, wraps it with a peft LoRA, and trains on
(prompt, middle) pairs with the loss on the middle only (the model learns to
write what developers accepted, not to repeat their code). Progress lines go to
the driver's console (Ray forwards worker output); checkpoints are reported to
Ray Train; rank 0 writes the final adapter and the loss curve to the output
folder (the shared adapter volume in production).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

IGNORE = -100  # label of tokens without loss (the prompt, padding)


def encode(tokenizer: Any, prompt: str, middle: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: the prompt's tail that fits, then
    the middle and the end-of-sequence token (the only tokens with a loss)."""
    target = tokenizer(middle, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target = [*target, tokenizer.eos_token_id]
    target = target[: max_len // 2]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[-(max_len - len(target)) :] if max_len > len(target) else []
    return prompt_ids + target, [IGNORE] * len(prompt_ids) + target


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    seed = int(config["seed"])
    random.seed(seed + rank)
    torch.manual_seed(seed)
    device = ray.train.torch.get_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    model: Any = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype)
    lora = LoraConfig(
        r=int(config["rank"]),
        lora_alpha=int(config["alpha"]),
        lora_dropout=float(config["dropout"]),
        target_modules=list(config["target_modules"]),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model = ray.train.torch.prepare_model(model)  # DDP across workers (GPUs) when several
    examples = [
        encode(tokenizer, prompt, middle, int(config["max_len"]))
        for prompt, middle in config["pairs"]
    ]
    examples = examples[rank::world] or examples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["learning_rate"]), weight_decay=0.0)
    steps, batch_size = int(config["steps"]), int(config["batch_size"])
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    order: list[int] = []
    losses: list[float] = []
    began = time.monotonic()
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            random.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        output = model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        )
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(output.loss.detach()))
        done = step + 1
        logging_step = done % int(config["log_every"]) == 0 or done == steps
        if rank == 0 and logging_step:
            rate = done / max(1e-9, time.monotonic() - began)
            recent = sum(losses[-10:]) / len(losses[-10:])
            print(
                f"[train] step {done}/{steps}  loss {recent:.4f}  ({rate:.2f} steps/s)", flush=True
            )
        checkpoint = None
        if done % int(config["checkpoint_every"]) == 0 or done == steps:
            folder = Path(config["output_dir"]) / "checkpoints" / f"step-{done:05d}"
            if rank == 0:
                _unwrap(model).save_pretrained(folder)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        # Reporting is a round trip to the trainer (measured: ~1.5 s per call
        # on the 2-core machine, more than a tiny model's step): not every step.
        if logging_step or checkpoint is not None:
            ray.train.report({"step": done, "loss": losses[-1]}, checkpoint=checkpoint)
    if rank == 0:
        output_dir = Path(config["output_dir"])
        _unwrap(model).save_pretrained(output_dir / "adapter")
        tokenizer.save_pretrained(output_dir / "adapter")
        (output_dir / "losses.json").write_text(json.dumps(losses))
        os.sync()


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP wraps the peft model
