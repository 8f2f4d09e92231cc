"""FIM templates, rendering and token budgets (tokenizer of the tiny test model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from serving.config import EngineConfig, TasksConfig
from serving.fim_templates import NO_FIM, fim_template, fim_templates
from serving.tasks.completion import CodeCompleter
from serving.tasks.fim import fit_to_budget
from serving.tiny_model import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from serving.tokens import TokenCounter
from serving.upstream.registry import ModelStatus, ReplicaRegistry, StaticSource

PREFIX = "def area(r):\n    "
SUFFIX = "\n\nprint(area(2))\n"


def test_every_family_is_there_with_stops() -> None:
    names = set(fim_templates())
    assert {
        "seed-coder",
        "starcoder",
        "santacoder",
        "qwen2.5-coder",
        "deepseek-coder",
        "codellama",
        "codestral",
    } <= names
    for template in fim_templates().values():
        assert "{prefix}" in template.template
        assert template.stop, template.name
        for token in template.tokens:
            assert token in template.template


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("seed-coder", f"{FIM_SUFFIX}{SUFFIX}{FIM_PREFIX}{PREFIX}{FIM_MIDDLE}"),
        ("starcoder", f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"),
        ("qwen2.5-coder", f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"),
        ("codellama", f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"),
        ("codestral", f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}"),
    ],
)
def test_rendering(name: str, expected: str) -> None:
    template = fim_template(name)
    assert template is not None
    assert template.render(PREFIX, SUFFIX) == expected


def test_braces_in_code_are_not_format_fields() -> None:
    template = fim_template("seed-coder")
    assert template is not None
    code = "const o = {prefix: 1, '{suffix}': 2};"
    assert code in template.render(code, "")


def test_unknown_template_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown template"):
        EngineConfig(fim_template="seed-coda")
    assert EngineConfig(fim_template=NO_FIM).fim_template == "none"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path) -> TokenCounter:
    return TokenCounter((tiny_model_dir / "tokenizer.json").read_text())


def test_counter_matches_the_model_tokenizer(counter: TokenCounter, tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = Path(__file__).read_text()
    assert counter.exact
    assert counter.count(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert counter.token_id(FIM_MIDDLE) == tokenizer.convert_tokens_to_ids(FIM_MIDDLE)


def _lines(n: int, tag: str) -> str:
    return "".join(f"{tag}_{i} = compute_{tag}({i}, factor={i * 3})\n" for i in range(n))


def test_budget_trims_at_line_boundaries_with_shares(counter: TokenCounter) -> None:
    prefix, suffix = _lines(200, "before"), _lines(200, "after")
    fitted = fit_to_budget(prefix, suffix, budget=600, count=counter.count, prefix_share=0.7)
    assert fitted.trimmed
    assert fitted.prefix_tokens + fitted.suffix_tokens <= 600
    assert prefix.endswith(fitted.prefix) and fitted.prefix.startswith(
        "before_"
    )  # whole lines, nearest kept
    assert suffix.startswith(fitted.suffix) and fitted.suffix.endswith("\n")
    assert fitted.prefix_tokens > 2 * fitted.suffix_tokens  # ~70/30
    assert fitted.prefix_tokens <= 0.7 * 600 + 1


def test_a_short_side_leaves_its_share_to_the_other(counter: TokenCounter) -> None:
    prefix, suffix = _lines(300, "before"), "print(done)\n"
    fitted = fit_to_budget(prefix, suffix, budget=600, count=counter.count, prefix_share=0.7)
    assert fitted.suffix == suffix
    assert fitted.prefix_tokens > 0.9 * (600 - fitted.suffix_tokens)


def test_nothing_is_trimmed_when_it_fits(counter: TokenCounter) -> None:
    fitted = fit_to_budget(PREFIX, SUFFIX, budget=600, count=counter.count)
    assert (fitted.prefix, fitted.suffix, fitted.trimmed) == (PREFIX, SUFFIX, False)


def _completer(counter: TokenCounter) -> tuple[CodeCompleter, ModelStatus]:
    registry = ReplicaRegistry(StaticSource([]))
    registry._counters["tiny"] = counter  # the tokenizer the engine would have sent
    status = ModelStatus("tiny", 1024, False, "seed-coder", 1, 1)
    return CodeCompleter(dispatcher=None, registry=registry, config=TasksConfig()), status  # type: ignore[arg-type]


def test_prompt_has_fim_tokens_in_spm_order(counter: TokenCounter, tokenizer) -> None:  # type: ignore[no-untyped-def]
    completer, status = _completer(counter)
    prepared = completer.prepare(
        status, prefix=PREFIX, suffix=SUFFIX, language="python", mode="block", max_tokens=64
    )
    ids = tokenizer(prepared.prompt, add_special_tokens=False)["input_ids"]
    suffix_id, prefix_id, middle_id = (
        tokenizer.convert_tokens_to_ids(t) for t in (FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE)
    )
    assert ids[0] == suffix_id
    assert ids.index(prefix_id) > ids.index(suffix_id)
    assert ids[-1] == middle_id
    assert ids.count(middle_id) == ids.count(prefix_id) == ids.count(suffix_id) == 1
    # The cursor's indentation is held back from the prompt (healed afterwards).
    assert prepared.healed == "\n    "
    assert tokenizer.decode(ids[ids.index(prefix_id) + 1 : -1]) == "def area(r):"
    # The template's end tokens stop generation by id (they are special tokens).
    assert tokenizer.convert_tokens_to_ids("<[end▁of▁sentence]>") in prepared.stop_token_ids


def test_prompt_stays_inside_the_context(counter: TokenCounter, tokenizer) -> None:  # type: ignore[no-untyped-def]
    completer, status = _completer(counter)
    prefix, suffix = _lines(300, "before"), _lines(300, "after")
    prepared = completer.prepare(
        status, prefix=prefix, suffix=suffix, language="python", mode="block", max_tokens=200
    )
    prompt_tokens = len(tokenizer(prepared.prompt)["input_ids"])
    assert prepared.trimmed
    assert prompt_tokens + 200 <= 1024
    assert prompt_tokens > 700  # the budget is used, not wasted


def test_model_without_fim_sends_the_prefix_only(counter: TokenCounter) -> None:
    completer, status = _completer(counter)
    plain = ModelStatus("tiny", 1024, False, "none", 1, 1)
    prepared = completer.prepare(
        plain,
        prefix="x = 1\ny = ",
        suffix="\nprint(y)\n",
        language="python",
        mode="line",
        max_tokens=8,
    )
    assert prepared.prompt == "x = 1\ny = "
    assert prepared.fim_mode == "prefix-only"
    assert prepared.point.suffix == "\nprint(y)\n"  # still used to trim the answer
    del status


def test_max_tokens_leaving_no_room_is_a_clear_400(counter: TokenCounter) -> None:
    from serving.errors import BadRequestError

    completer, status = _completer(counter)
    with pytest.raises(BadRequestError) as caught:
        completer.prepare(
            status, prefix="x", suffix="", language="python", mode="line", max_tokens=1020
        )
    assert caught.value.param == "max_tokens"
