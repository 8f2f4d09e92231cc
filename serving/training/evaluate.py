"""Base vs adapter on held-out accepted suggestions: exact match and edit
similarity of what each writes at the cursor against what the developer kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions turning ``a`` into ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length (1.0: identical)."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def flat_scores(scores: dict[str, dict[str, float]], adapter: str) -> dict[str, float]:
    """Base and adapter scores as the registry keeps them (base_exact_match, ...)."""
    return {
        f"{who}_{metric}": value
        for who, key in (("base", "base"), ("adapter", adapter))
        for metric, value in scores[key].items()
    }


def as_suggestion(generated: str, target: str, stops: Sequence[str] = ()) -> str:
    """What the gateway would show of a generation compared with ``target``:
    cut at a stop string, and to as many lines as the target has."""
    for stop in stops:
        if stop and stop in generated:
            generated = generated[: generated.index(stop)]
    lines = target.count("\n") + (0 if target.endswith("\n") else 1)
    kept = generated.splitlines(keepends=True)[:lines]
    text = "".join(kept)
    return text if target.endswith("\n") else text.rstrip("\n")


def score(suggestions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    pairs = list(zip(suggestions, targets, strict=True))
    if not pairs:
        return {"exact_match": 0.0, "edit_similarity": 0.0}
    exact = sum(s.strip() == t.strip() for s, t in pairs) / len(pairs)
    similar = sum(edit_similarity(s.strip(), t.strip()) for s, t in pairs) / len(pairs)
    return {"exact_match": round(exact, 4), "edit_similarity": round(similar, 4)}


def evaluate(config: dict[str, Any]) -> dict[str, Any]:
    """Greedy suggestions of the base model and of each adapter in
    ``config["adapters"]`` ({name: folder}) for every held-out (prompt,
    target): their scores, and a few examples side by side."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and config.get("gpu") else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    base: Any = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype)
    base = base.to(device)
    adapters: dict[str, str] = dict(config["adapters"])
    model: Any = base
    for index, (name, folder) in enumerate(adapters.items()):
        if index == 0:
            model = PeftModel.from_pretrained(base, folder, adapter_name=name)
        else:
            model.load_adapter(folder, adapter_name=name)
    model.eval()
    stops = list(config.get("stops", ()))
    pairs: list[tuple[str, str]] = list(config["pairs"])
    max_len = int(config["max_len"])
    outputs: dict[str, list[str]] = {"base": [], **{name: [] for name in adapters}}
    for number, (prompt, target) in enumerate(pairs, 1):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -max_len:].to(device)
        new_tokens = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 8
        for name in outputs:
            with torch.no_grad():
                if name == "base" and adapters:
                    with model.disable_adapter():
                        out = model.generate(
                            ids, max_new_tokens=new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                        )  # fmt: skip
                else:
                    if name != "base":
                        model.set_adapter(name)
                    out = model.generate(
                        ids, max_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    )  # fmt: skip
            text = str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
            outputs[name].append(as_suggestion(text, target, stops))
        if number % 10 == 0 or number == len(pairs):
            print(f"[evaluate] {number}/{len(pairs)} held-out examples", flush=True)
    targets = [t for _, t in pairs]
    return {
        "held_out": len(pairs),
        "scores": {name: score(texts, targets) for name, texts in outputs.items()},
        "examples": [
            {"target": t, **{name: outputs[name][i] for name in outputs}}
            for i, t in enumerate(targets[:5])
        ],
    }
