"""Adapter training's own logic, without a model: examples in the model's FIM
format, the loss only on what was accepted, the scores, the publish rule.
The fine-tune itself runs on Ray Train in tests/e2e/test_adapters.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.adapters import AdapterRecord, TrainingExample
from serving.fim_templates import fim_template
from serving.training.evaluate import as_suggestion, edit_similarity, score
from serving.training.examples import from_repository, from_team_data, render
from serving.training.job import _decide
from serving.training.lora import IGNORE, encode


def kept(text: str, chars: int, i: int = 0) -> TrainingExample:
    # The cursor after "    " on a new line: the gateway sent the prefix up to
    # the newline (healing) and dropped the model's own copy of the indentation.
    return TrainingExample(
        completion_id=f"c{i}", time="t", tenant="t", model="m", adapter=None, language="python",
        path="a.py", prefix="def f():\n", suffix="\n", shown=text, accepted_chars=chars,
        context="# b.py\nx = 1\n", healed="    ",
    )  # fmt: skip


def test_accepted_text_is_the_target_in_the_models_own_prompt_format() -> None:
    [example] = from_team_data([kept("return 1\nprint()", 8), kept("   ", 3, 1)])
    # The target is what the model writes after the prompt: indentation first.
    assert example.middle == "    return 1" and example.context == "# b.py\nx = 1\n"
    seed_coder = fim_template("seed-coder")
    assert seed_coder is not None
    assert render(example, seed_coder) == example.context + seed_coder.render(
        example.prefix, example.suffix
    )
    assert render(example, None) == example.context + example.prefix  # no FIM: prefix only


def test_repository_examples_are_cut_at_line_boundaries(tmp_path: Path) -> None:
    source = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(10))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(source)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.py").write_text(source)  # never from VCS folders
    (tmp_path / "notes.txt").write_text(source)  # only source files
    examples = from_repository(tmp_path, per_file=5, seed=1)
    assert len(examples) == 5 and all(e.source == "repo" for e in examples)
    for example in examples:
        assert source.startswith(example.prefix) or example.prefix in source
        assert example.middle.endswith("\n") and (example.prefix + example.middle) in source


class Words:
    """A tokenizer stand-in: one token per character, id = code point."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": [ord(c) for c in text]}


def test_only_the_accepted_text_and_the_end_carry_a_loss() -> None:
    ids, labels = encode(Words(), "abcdef", "xy", max_len=6)
    assert ids == [ord("d"), ord("e"), ord("f"), ord("x"), ord("y"), 0]  # the prompt's tail
    assert labels == [IGNORE] * 3 + [ord("x"), ord("y"), 0]


def test_scores_compare_what_would_be_shown() -> None:
    assert as_suggestion("hlog.event(1)\nmore\n", "hlog.event(1)") == "hlog.event(1)"
    assert as_suggestion("a<|fim_end|>b", "a", stops=["<|fim_end|>"]) == "a"
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("abc", "abd") == 1 - 1 / 3
    assert score(["x", "y"], ["x", "z"]) == {"exact_match": 0.5, "edit_similarity": 0.5}


def test_an_adapter_is_published_only_when_better_than_base_and_current() -> None:
    scores = {
        "base": {"exact_match": 0.1, "edit_similarity": 0.5},
        "old": {"exact_match": 0.3, "edit_similarity": 0.7},
        "new": {"exact_match": 0.3, "edit_similarity": 0.6},
    }
    current = AdapterRecord.model_validate({
        "name": "old", "base_model": "m", "path": "/a", "tenant": "t",
        "created": "2026-11-29T00:00:00Z", "rank": 8,
    })  # fmt: skip
    published, why = _decide(scores, "new", None)
    assert published and why.startswith("published: new")
    published, why = _decide(scores, "new", current)
    assert not published and "not better than the current adapter old" in why
    worse = {**scores, "new": {"exact_match": 0.0, "edit_similarity": 0.9}}
    published, why = _decide(worse, "new", None)
    assert not published and "not better than the base model" in why
