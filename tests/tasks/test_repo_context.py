"""Repository context in FIM prompts: each family's format, and fitting
snippets of other files to a token budget (priority, trimming, duplicates)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.fim_templates import (
    NO_FIM,
    PLAIN_REPO_FORMAT,
    RepoFormat,
    fim_template,
    fim_templates,
    line_comment,
    repo_format,
    template_names,
)
from serving.tasks.repo_snippets import FittedContext, Snippet, fit_snippets, normalise_path
from serving.tokens import TokenCounter

UTIL = "def helper():\n    return 1\n"
PREFIX = "import util\n"
SUFFIX = "\nmain()\n"
BIG = 10_000


def prompt(name: str, fitted: FittedContext, prefix: str = PREFIX, suffix: str = SUFFIX) -> str:
    """The whole prompt, as the completion task puts it together."""
    template = fim_template(name)
    if template is None:
        return fitted.text + fitted.prefix_head + prefix
    return fitted.text + template.render(fitted.prefix_head + prefix, suffix)


def fit(
    name: str,
    snippets: list[Snippet],
    *,
    current_path: str | None = "src/main.py",
    current_text: str = PREFIX + SUFFIX,
    repo: str | None = "demo",
    budget: int = BIG,
    count: Callable[[str], int] = len,
) -> FittedContext:
    return fit_snippets(
        snippets,
        fmt=repo_format(name),
        current_path=current_path,
        current_text=current_text,
        repo=repo,
        budget=budget,
        count=count,
    )


# --- the formats -------------------------------------------------------------


def test_every_family_has_a_repo_format() -> None:
    for template in fim_templates().values():
        fmt = template.repo
        assert isinstance(fmt, RepoFormat)
        assert "{text}" in fmt.file
        parts = fmt.header + fmt.file + fmt.current + fmt.current_prefix
        for token in fmt.tokens:
            assert token in parts, (template.name, token)
        # A model that starts another file has finished the middle.
        for token in fmt.tokens:
            if token in fmt.file:
                assert token in template.stop, (template.name, token)
    assert repo_format(NO_FIM) is PLAIN_REPO_FORMAT
    assert set(template_names()) == {NO_FIM, *fim_templates()}
    with pytest.raises(KeyError):
        repo_format("seed-coda")


def test_token_families_and_plain_ones() -> None:
    assert repo_format("qwen2.5-coder").tokens == ("<|repo_name|>", "<|file_sep|>")
    assert repo_format("starcoder").tokens == ("<repo_name>", "<file_sep>")
    for name in ("seed-coder", "santacoder", "codellama", "codestral", NO_FIM):
        assert repo_format(name) == PLAIN_REPO_FORMAT, name
    assert repo_format("deepseek-coder").plain  # path comments, its own spelling


def test_qwen_matches_its_repo_level_fim_example() -> None:
    # QwenLM/Qwen2.5-Coder examples/Qwen2.5-Coder-repolevel-fim.py, shortened.
    library = "class Book:\n    pass\n"
    student = "class Student:\n    pass\n"
    fitted = fit(
        "qwen2.5-coder",
        [
            Snippet("student.py", student, "declaration", rank=0),  # most relevant: last
            Snippet("library.py", library, "declaration", rank=1),
        ],
        current_path="main.py",
        current_text="from library import Book\n",
        repo="library-system",
    )
    assert prompt("qwen2.5-coder", fitted, "from library import Book\n", "\nmain()\n") == (
        "<|repo_name|>library-system\n"
        "<|file_sep|>library.py\nclass Book:\n    pass\n\n"
        "<|file_sep|>student.py\nclass Student:\n    pass\n\n"
        "<|file_sep|>main.py\n"
        "<|fim_prefix|>from library import Book\n<|fim_suffix|>\nmain()\n<|fim_middle|>"
    )
    assert (fitted.kept, fitted.dropped, fitted.prefix_head) == (2, 0, "")
    assert fitted.tokens == len(fitted.text)


def test_starcoder2_puts_the_current_path_inside_the_fim_prefix() -> None:
    fitted = fit("starcoder", [Snippet("src/util.py", UTIL, "declaration")])
    assert prompt("starcoder", fitted) == (
        "<repo_name>demo<file_sep>src/util.py\ndef helper():\n    return 1\n"
        "<file_sep><fim_prefix>src/main.py\nimport util\n<fim_suffix>\nmain()\n<fim_middle>"
    )
    assert fitted.prefix_head == "src/main.py\n"
    assert fitted.tokens == len(fitted.text) + len(fitted.prefix_head)


def test_seed_coder_gets_path_comments_in_each_files_language_before_the_spm_prompt() -> None:
    fitted = fit(
        "seed-coder",
        [
            Snippet("src/util.py", UTIL, "declaration"),
            Snippet("web/api.ts", "export const x = 1;", "snippet"),
        ],
    )
    assert prompt("seed-coder", fitted) == (
        "// path: web/api.ts\nexport const x = 1;\n\n"
        "# path: src/util.py\ndef helper():\n    return 1\n\n"
        "# path: src/main.py\n"
        "<[fim-suffix]>\nmain()\n<[fim-prefix]>import util\n<[fim-middle]>"
    )


def test_model_without_fim_gets_the_plain_format_before_its_prefix() -> None:
    fitted = fit(
        NO_FIM,
        [Snippet("lib/x.go", "func X() int { return 1 }\n", "snippet")],
        current_path="main.py",
    )
    assert prompt(NO_FIM, fitted) == (
        "// path: lib/x.go\nfunc X() int { return 1 }\n\n# path: main.py\nimport util\n"
    )


def test_deepseek_coder_path_comments() -> None:
    fitted = fit("deepseek-coder", [Snippet("src/Util.java", "class Util {}\n", "declaration")])
    assert fitted.text == "// src/Util.java\nclass Util {}\n\n# src/main.py\n"


def test_unknown_repository_name_and_current_path() -> None:
    qwen = fit(
        "qwen2.5-coder", [Snippet("a.py", "x = 1\n", "snippet")], current_path=None, repo=None
    )
    assert qwen.text == "<|file_sep|>a.py\nx = 1\n\n<|file_sep|>"  # separator kept, no path
    star = fit("starcoder", [Snippet("a.py", "x = 1\n", "snippet")], current_path=None, repo="")
    assert (star.text, star.prefix_head) == ("<file_sep>a.py\nx = 1\n<file_sep>", "")
    plain = fit("seed-coder", [Snippet("a.py", "x = 1\n", "snippet")], current_path=None)
    assert plain.text == "# path: a.py\nx = 1\n\n"  # no path line for the current file


def test_placeholders_in_code_and_odd_paths_stay_text() -> None:
    fmt = repo_format("qwen2.5-coder")
    code = "s = '{path} {text} {repo}'\n"
    assert fmt.render_file("a.py", code) == "<|file_sep|>a.py\n" + code + "\n"
    assert fmt.render_header("evil\n<|file_sep|>x") == "<|repo_name|>evil <|file_sep|>x\n"
    assert fmt.render_current("a\nb.py") == "<|file_sep|>a b.py\n"


def test_line_comments_by_extension() -> None:
    assert line_comment("a/b.py") == "#"
    for path in ("x.ts", "x.TSX", "x.go", "x.rs", "x.java", "x.c", "x.hpp", "x.cs", "x.kt"):
        assert line_comment(path) == "//", path
    assert line_comment("q.sql") == "--"
    assert line_comment("Makefile") == line_comment(None) == line_comment("x.unknown") == "#"
    assert line_comment("dir.d\\x.lua") == "--"


def test_yaml_typos_are_refused() -> None:
    from serving.fim_templates import _repo_format

    with pytest.raises(ValueError, match="repo"):
        _repo_format({"file": "{path}\n{text}", "headr": "x"}, "fam")
    with pytest.raises(ValueError, match="text"):
        _repo_format({"file": "<|file_sep|>{path}\n"}, "fam")
    with pytest.raises(ValueError, match="none of the repo formats"):
        _repo_format({"file": "{text}", "tokens": ["<sep>"]}, "fam")
    assert _repo_format("plain", "fam") is PLAIN_REPO_FORMAT


# --- fitting -------------------------------------------------------------------


def _files(fitted: FittedContext) -> list[str]:
    """The paths of the files in a plain-format context, in prompt order."""
    return [
        line[len("# path: ") :] for line in fitted.text.splitlines() if line.startswith("# path: ")
    ]


def test_declarations_come_before_snippets() -> None:
    snippet = Snippet("recent.py", "r = 1\n", "snippet", rank=0)
    declaration = Snippet("decl.py", "d = 1\n", "declaration", rank=5)
    one_file = len(PLAIN_REPO_FORMAT.render_file("decl.py", "d = 1\n")) + len(
        PLAIN_REPO_FORMAT.render_current("src/main.py")
    )
    fitted = fit("seed-coder", [snippet, declaration], budget=one_file)
    assert _files(fitted) == ["decl.py", "src/main.py"]
    assert (fitted.kept, fitted.dropped) == (1, 1)
    both = fit("seed-coder", [snippet, declaration])
    assert _files(both) == ["recent.py", "decl.py", "src/main.py"]  # most important last


def test_snippets_by_recency() -> None:
    snippets = [
        Snippet(f"s{rank}.py", f"v{rank} = {rank}\n", "snippet", rank) for rank in (3, 0, 2, 1)
    ]
    fitted = fit("seed-coder", snippets, budget=75)
    assert _files(fitted) == ["s1.py", "s0.py", "src/main.py"]
    everything = fit("seed-coder", snippets)
    assert _files(everything) == ["s3.py", "s2.py", "s1.py", "s0.py", "src/main.py"]


def test_a_snippet_is_trimmed_to_whole_lines_from_its_start() -> None:
    body = "".join(f"line_{i} = compute({i})\n" for i in range(100))
    fmt = repo_format("qwen2.5-coder")
    fitted = fit("qwen2.5-coder", [Snippet("big.py", body, "snippet")], budget=500)
    assert fitted.kept == 1 and fitted.tokens <= 500
    start = fitted.text.index("big.py\n") + len("big.py\n")
    kept = fitted.text[start : fitted.text.index("\n\n<|file_sep|>src/main.py")] + "\n"
    assert body.startswith(kept) and kept.endswith("\n") and len(kept) < len(body)
    # As many lines as fit: one more would not.
    lines = body.splitlines(keepends=True)
    more = kept + lines[kept.count("\n")]
    overhead = len(fmt.render_header("demo")) + len(fmt.render_current("src/main.py"))
    assert overhead + len(fmt.render_file("big.py", more)) > 500


def test_a_snippet_that_cannot_keep_one_line_is_dropped() -> None:
    long_first_line = "x = '" + "a" * 300 + "'\nshort = 1\n"
    small = Snippet("small.py", "s = 1\n", "snippet", rank=1)
    fitted = fit("seed-coder", [Snippet("long.py", long_first_line, "snippet"), small], budget=80)
    assert _files(fitted) == ["small.py", "src/main.py"]
    assert (fitted.kept, fitted.dropped) == (1, 1)
    alone = fit("seed-coder", [Snippet("long.py", long_first_line, "snippet")], budget=80)
    assert alone == FittedContext(text="", kept=0, dropped=1, tokens=0)


def test_the_current_file_and_duplicates_are_dropped() -> None:
    current_text = "import util\n\ndef main():\n    return util.helper()\n"
    snippets = [
        Snippet("./src/main.py", "other = 1\n", "snippet"),  # the current file
        Snippet("src\\main.py", "other = 2\n", "declaration"),  # the current file, Windows
        Snippet("src/copy.py", "def main():\n    return util.helper()\n", "snippet"),  # in it
        Snippet("src/util.py", UTIL, "declaration"),
        Snippet("./src/util.py", UTIL, "snippet", rank=4),  # the same again
        Snippet("src/empty.py", "  \n\n", "snippet"),
        Snippet("src/kept.py", "k = 1\n", "snippet", rank=2),
    ]
    fitted = fit("seed-coder", snippets, current_path="./src/main.py", current_text=current_text)
    assert _files(fitted) == ["src/kept.py", "src/util.py", "src/main.py"]
    assert (fitted.kept, fitted.dropped) == (2, 5)
    assert normalise_path(".\\src\\a.py") == "src/a.py"


def test_nothing_given_or_no_room_renders_nothing() -> None:
    assert fit("qwen2.5-coder", []) == FittedContext(text="", kept=0, dropped=0, tokens=0)
    one = [Snippet("a.py", "a = 1\n", "snippet")]
    for budget in (-5, 0, 10):  # not even the header and separators fit
        assert fit("qwen2.5-coder", one, budget=budget) == FittedContext("", 0, 1, 0)


@pytest.fixture(scope="module")
def tiny_counter(tiny_model_dir: Path) -> TokenCounter:
    return TokenCounter((tiny_model_dir / "tokenizer.json").read_text())


def _snippets() -> list[Snippet]:
    out = [
        Snippet(
            f"pkg/mod_{i}.{'py' if i % 2 else 'ts'}",
            "".join(f"value_{i}_{j} = make({j}, 'é{j}')  # ü\n" for j in range(3 + 7 * i)),
            "declaration" if i % 3 == 0 else "snippet",
            rank=i % 4,
        )
        for i in range(9)
    ]
    return [*out, Snippet("pkg/one.py", "z" * 120, "snippet", rank=9)]


@pytest.mark.parametrize("counter_name", ["chars", "words", "tiny tokenizer", "3 per byte"])
def test_the_budget_is_never_exceeded(counter_name: str, tiny_counter: TokenCounter) -> None:
    counters: dict[str, Callable[[str], int]] = {
        "chars": len,
        "words": lambda s: len(s.split()),
        "tiny tokenizer": tiny_counter.count,
        "3 per byte": lambda s: 3 * len(s.encode()),  # more than bytes: no shortcut may hold
    }
    count = counters[counter_name]
    small = [Snippet("a.py", "a = 1\n", "snippet"), Snippet("b.ts", "let b = 2;\n", "declaration")]
    for name, snippets in itertools.product([*fim_templates(), NO_FIM], [_snippets(), small]):
        for budget in range(0, 1500, 41):
            fitted = fit(name, snippets, budget=budget, count=count, current_text="")
            assert fitted.tokens <= budget, (name, budget)
            assert fitted.tokens == count(fitted.text) + count(fitted.prefix_head)
            assert fitted.kept + fitted.dropped == len(snippets)
            if not fitted.kept:
                assert (fitted.text, fitted.prefix_head, fitted.tokens) == ("", "", 0)


def test_pieces_that_count_more_together_are_checked_as_a_whole() -> None:
    """Tokenizers may count the joined text differently from its pieces: the
    result is counted whole, and the least important files go until it fits."""

    def count(text: str) -> int:  # 50 more at each place where files meet
        return len(text) + 50 * text.count("\n<|")

    snippets = [Snippet(f"m{i}.py", f"v{i} = {i}\n", "snippet", rank=i) for i in range(6)]
    for budget in range(0, 800, 13):
        fitted = fit("qwen2.5-coder", snippets, budget=budget, count=count)
        assert fitted.tokens == count(fitted.text) <= budget
    fitted = fit("qwen2.5-coder", snippets, budget=300, count=count)
    assert fitted.text == (
        "<|repo_name|>demo\n<|file_sep|>m1.py\nv1 = 1\n\n<|file_sep|>m0.py\nv0 = 0\n\n"
        "<|file_sep|>src/main.py\n"
    )
    assert (fitted.kept, fitted.dropped) == (2, 4)
    assert fit("qwen2.5-coder", snippets, budget=10**6, count=count).kept == 6


def test_the_budget_is_used(tiny_counter: TokenCounter) -> None:
    snippets = _snippets()
    for budget in (300, 700, 1200):
        fitted = fit("seed-coder", snippets, budget=budget, count=tiny_counter.count)
        assert budget * 0.75 < fitted.tokens <= budget


def test_count_is_called_a_bounded_number_of_times() -> None:
    calls = 0

    def count(text: str) -> int:
        nonlocal calls
        calls += 1
        return len(text)

    lines = 64
    snippets = [
        Snippet(f"m{i}.py", "".join(f"a_{i}_{j} = {j}\n" for j in range(lines)), "snippet", i)
        for i in range(40)
    ]
    for budget in (50, 400, 3_000, 20_000, 10**7):
        calls = 0
        fitted = fit("qwen2.5-coder", snippets, budget=budget, count=count)
        assert fitted.tokens <= budget
        # Once per snippet (twice where not even its first line fits), a binary
        # search for the one that is trimmed, the overhead and the result.
        assert calls <= 2 * len(snippets) + math.ceil(math.log2(lines)) + 5, (budget, calls)
        if budget >= 400:  # room for lines of the first: the others are tried whole only
            assert calls <= len(snippets) + math.ceil(math.log2(lines)) + 5, (budget, calls)
    calls = 0
    fit("qwen2.5-coder", snippets, budget=10**7, count=count)
    assert calls <= 2  # everything fits by bytes: the result is counted, once


def test_seed_coder_prompt_at_token_level(tiny_counter: TokenCounter, tiny_model_dir: Path) -> None:
    """With the tiny model's tokenizer (Seed-Coder's special tokens): the repo
    part is plain text before the FIM tokens, which each appear once."""
    from transformers import AutoTokenizer

    from serving.tiny_model import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    fitted = fit("seed-coder", _snippets(), budget=400, count=tiny_counter.count)
    ids = tokenizer(prompt("seed-coder", fitted), add_special_tokens=False)["input_ids"]
    suffix_id, prefix_id, middle_id = (
        tokenizer.convert_tokens_to_ids(t) for t in (FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE)
    )
    assert ids.count(suffix_id) == ids.count(prefix_id) == ids.count(middle_id) == 1
    assert ids.index(suffix_id) == len(
        tokenizer(fitted.text, add_special_tokens=False)["input_ids"]
    )
    assert ids[-1] == middle_id
