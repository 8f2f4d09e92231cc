"""The cross-file benchmark's pieces: cases cut from a small package written
here (the right call line, target, prefix, suffix and definition; names A
binds itself, test folders and uninformative calls left out; the same seed
gives the same cases), the scores on known strings, the with/without report,
and whole runs against a scripted HTTP gateway (one that takes ``context``,
one that predates it)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks.crossfile.__main__ import main, markdown
from benchmarks.crossfile.cases import (
    CONTEXT_LINES,
    PREFIX_LINES,
    SUFFIX_LINES,
    Case,
    all_cases,
    draw,
    snippet,
)
from benchmarks.crossfile.client import names_context, request_body
from benchmarks.crossfile.scoring import (
    bootstrap_ci,
    compare,
    edit_similarity,
    exact_match,
    identifier_match,
    levenshtein,
    score,
    sign_test,
)

UTIL = '''\
"""Helpers."""


def combine(left, right, *, sep=", "):
    """Join two parts."""
    return left + sep + right


class Box:
    def __init__(self, content, label=None):
        self.content = content
        self.label = label
'''

MAIN = '''\
"""Uses the helpers."""
from . import util
from .util import combine
from pkg.util import Box as Crate
from .other import shadowed
from .other import helper

SEP = "; "


def shadowed(value):
    return value


def run(first, second):
    joined = combine(first, second, sep=SEP)
    box = util.Box(joined, label=first)
    crate = Crate(box)
    empty = combine()
    named = combine(first, "a message")
    again = shadowed(first)
    missing = util.missing(first)
    noted = combine(first, second)  # a comment after the call
    long_line = combine(first, second, sep=SEP) + combine(first, second, sep=SEP) + combine(second, first, sep=SEP) + first
    helper = None
    return crate, helper(first)
'''

OTHER = """\
def shadowed(value):
    return value * 2


def helper(value):
    return value
"""

LONG_CLASS = (
    "class Big:\n"
    '    """A class too long to send whole."""\n'
    "\n"
    + "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(30))
    + "    def __init__(self, size, *, fill=0):\n"
    "        self.size = size\n"
)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(
        root,
        {
            "pkg/__init__.py": "",
            "pkg/util.py": UTIL,
            "pkg/main.py": MAIN,
            "pkg/other.py": OTHER,
            # Test folders and folders that are not packages hold no cases.
            "pkg/tests/__init__.py": "",
            "pkg/tests/test_util.py": "from ..util import combine\n\ncombine(a, b)\n",
            "scripts/tool.py": "from pkg.util import combine\n\ncombine(a, b)\n",
        },
    )
    return root


# --------------------------------------------------------------------------- cases


def test_cases_are_the_calls_of_the_other_modules_definitions(tree: Path) -> None:
    cases = all_cases(tree)
    assert [(c.path, c.line, c.called, c.target) for c in cases] == [
        ("pkg/main.py", 16, "combine", "combine(first, second, sep=SEP)"),
        ("pkg/main.py", 17, "Box", "util.Box(joined, label=first)"),
        ("pkg/main.py", 18, "Crate", "Crate(box)"),
    ]
    # Left out: `combine()` (no arguments), a string literal argument, `shadowed`
    # (defined in A), `util.missing` (not in B), a comment after the call, a line
    # over 120 characters, `helper` (A assigns the name), tests/, a non-package.
    combine_case, box_case, crate_case = cases
    lines = MAIN.splitlines(keepends=True)
    assert combine_case.prefix == "".join(lines[:15]) + "    joined = "
    assert combine_case.suffix == "\n" + "".join(lines[16:])
    assert combine_case.context_path == "pkg/util.py"
    assert combine_case.context == (
        'def combine(left, right, *, sep=", "):\n'
        '    """Join two parts."""\n'
        "    return left + sep + right\n"
    )
    assert box_case.context == UTIL[UTIL.index("class Box") :]
    assert crate_case.context == box_case.context  # imported as another name
    assert combine_case.identifiers == ("combine", "first", "sep")
    assert box_case.identifiers == ("Box", "joined", "label")
    assert crate_case.identifiers == ("Crate", "box")
    assert (combine_case.keywords, box_case.keywords, crate_case.keywords) == (
        ("sep",),
        ("label",),
        (),
    )
    assert combine_case.id == "pkg/main.py:16"


def test_windows_columns_and_long_definitions(tmp_path: Path) -> None:
    filler = "".join(f"x{i} = {i}\n" for i in range(100))
    after = "".join(f"y{i} = {i}\n" for i in range(50))
    write(
        tmp_path,
        {
            "lib/__init__.py": "",
            "lib/big.py": LONG_CLASS,
            "lib/use.py": "from .big import Big\n" + filler + "ñame = Big(x1, fill=x2)\n" + after,
        },
    )
    (case,) = all_cases(tmp_path)
    assert case.target == "Big(x1, fill=x2)"  # ast columns are UTF-8 bytes
    assert case.prefix.endswith("x99 = 99\nñame = ")
    assert case.prefix.count("\n") == PREFIX_LINES
    assert case.suffix.count("\n") == SUFFIX_LINES + 1 and case.suffix.startswith("\ny0 = 0\n")
    # The class is cut to its header, docstring and __init__.
    assert case.context == (
        "class Big:\n"
        '    """A class too long to send whole."""\n'
        "    ...\n"
        "    def __init__(self, size, *, fill=0):\n"
        "        self.size = size\n"
    )


def test_snippets_keep_at_most_the_limit() -> None:
    import ast

    source = "def long(a):\n" + "".join(f"    a += {i}\n" for i in range(100))
    text = snippet(source.splitlines(keepends=True), ast.parse(source).body[0])
    assert text.count("\n") == CONTEXT_LINES and text.startswith("def long(a):\n")


def test_cases_are_drawn_the_same_for_a_seed(tree: Path) -> None:
    for i in range(12):  # more modules calling the helpers: more to draw from
        write(tree, {f"pkg/user{i}.py": f"from .util import combine\n\nv = combine(a{i}, b)\n"})
    cases = all_cases(tree)
    assert len(cases) == 15
    assert draw(cases, 5, seed=1) == draw(all_cases(tree), 5, seed=1)
    orders = {tuple(c.id for c in draw(cases, 5, seed=s)) for s in range(10)}
    assert len(orders) > 1
    assert sorted(draw(cases, 100, seed=3), key=lambda c: c.id) == sorted(cases, key=lambda c: c.id)


def test_draw_takes_one_case_per_called_definition_first() -> None:
    def case(path: str, line: int, called: str) -> Case:
        return Case(path, line, called, "t", "", "", "b.py", "def f(): ...\n", (called,))

    cases = [case("a.py", i, "f") for i in range(10)] + [case("a.py", 20, "g")]
    assert {c.called for c in draw(cases, 2, seed=0)} == {"f", "g"}


# --------------------------------------------------------------------------- scores


def test_scores_on_known_strings() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0
    # The first line only, trailing blanks cut; leading ones count.
    assert exact_match("f(a, b)   \nnext_line()", "f(a, b)")
    assert not exact_match(" f(a, b)", "f(a, b)")
    assert not exact_match("\nf(a, b)", "f(a, b)")
    assert edit_similarity("f(a, b)\nmore", "f(a, c)") == pytest.approx(1 - 1 / 7)
    assert identifier_match("combine(first, sep=SEP)", ("combine", "first", "sep"))
    assert not identifier_match("combined(first, sep=SEP)", ("combine",))  # whole words
    assert not identifier_match("combine(first)\nsep", ("combine", "sep"))
    assert score("Box(x, label=y)", "Box(x, label=y)", ("Box", "x", "label")) == {
        "exact_match": 1.0,
        "edit_similarity": 1.0,
        "identifier_match": 1.0,
    }


def test_sign_test_and_bootstrap() -> None:
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(1, 9) == sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert bootstrap_ci([], seed=0) is None
    low, high = bootstrap_ci([0.0, 1.0] * 50, seed=0) or (0, 0)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci([0.25] * 10, seed=0) == (0.25, 0.25)


def _arm(exact: float, similarity: float, identifiers: float) -> dict[str, Any]:
    return {
        "text": "",
        "exact_match": exact,
        "edit_similarity": similarity,
        "identifier_match": identifiers,
    }


def test_the_report_pairs_the_arms_and_counts_errors() -> None:
    records: list[dict[str, Any]] = [
        {"without": _arm(0, 0.5, 0), "with": _arm(1, 1.0, 1)},
        {"without": _arm(0, 0.6, 1), "with": _arm(1, 1.0, 1)},
        {"without": _arm(1, 1.0, 1), "with": _arm(0, 0.8, 1)},
        {"without": _arm(0, 0.4, 0), "with": _arm(0, 0.4, 0)},
        {"without": {"error": "500 boom"}, "with": _arm(1, 1.0, 1)},  # not paired
        {"without": _arm(0, 0.1, 0), "with": {"error": "timeout"}},  # not paired
    ]
    summary = compare(records, seed=0)
    assert summary["cases"] == 6 and summary["paired"] == 4
    assert summary["errors"] == {"without": 1, "with": 1}
    exact = summary["metrics"]["exact_match"]
    assert (exact["without"], exact["with"], exact["lift"]) == (0.25, 0.5, 0.25)
    assert (exact["better"], exact["worse"], exact["same"]) == (2, 1, 1)
    assert exact["sign_test_p"] == 1.0
    similarity = summary["metrics"]["edit_similarity"]
    assert similarity["without"] == pytest.approx(0.625) and similarity["with"] == 0.8
    assert similarity["lift"] == pytest.approx(0.175)
    assert (similarity["better"], similarity["worse"], similarity["same"]) == (2, 1, 1)
    low, high = similarity["lift_ci95"]
    assert low <= similarity["lift"] <= high
    identifiers = summary["metrics"]["identifier_match"]
    assert (identifiers["better"], identifiers["worse"], identifiers["lift"]) == (1, 0, 0.25)
    assert compare([], seed=0)["metrics"]["exact_match"]["without"] is None

    text = markdown(
        {
            "model": "m",
            "gateway": "http://g",
            "seed": 0,
            "candidates": 9,
            "python": "3.11.7",
            "stdlib": True,
            "source": "/lib",
            "summary": summary,
            "records": [],
        }
    )
    assert "| exact match | 0.25 | 0.5 | +0.25 | 2 | 1 | 1 |" in text
    assert "standard library of Python 3.11.7" in text
    assert "Request errors: 1 without context, 1 with." in text


# --------------------------------------------------------------------------- runs


def test_request_bodies_and_context_rejections(tree: Path) -> None:
    case = all_cases(tree)[0]
    plain = request_body(case, "m", with_context=False)
    assert "context" not in plain
    assert plain["mode"] == "line" and plain["temperature"] == 0.0 and plain["max_tokens"] == 48
    assert plain["path"] == "pkg/main.py" and plain["language"] == "python"
    with_context = request_body(case, "m", with_context=True)
    assert with_context["context"] == [{"path": "pkg/util.py", "text": case.context}]
    # Never the same document twice: the gateway would supersede one arm with
    # the other (a newer completion of a document cancels the older).
    documents = {request_body(c, "m", with_context=w)["document"]
                 for c in all_cases(tree) for w in (False, True)}  # fmt: skip
    assert len(documents) == 2 * len(all_cases(tree))
    old = "Unrecognized request argument supplied: context"
    assert names_context({"error": {"message": old, "param": "context"}})
    assert names_context({"error": {"message": "bad", "param": "context[0].text"}})
    too_long = "Invalid value for 'prefix': longer than the model's context."
    assert not names_context({"error": {"message": too_long, "param": "prefix"}})


class FakeGateway:
    """A scripted /v1/code/completions: the right line when the definition
    is in ``context`` (or never, when it predates the field), a 500 for one case."""

    def __init__(self, cases: list[Case], *, takes_context: bool, fail_line: int) -> None:
        self.targets = {c.prefix: c.target for c in cases}
        self.fail = {c.prefix for c in cases if c.line == fail_line}
        self.takes_context = takes_context
        self.bodies: list[dict[str, Any]] = []

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.bodies.append(body)
        if "context" in body and not self.takes_context:
            message = "Unrecognized request argument supplied: context"
            error = {"message": message, "type": "invalid_request_error", "param": "context"}
            return 400, {"error": {**error, "code": None}}
        if body["prefix"] in self.fail and "context" not in body:
            return 500, {"error": {"message": "scripted failure", "type": "server_error"}}
        target = self.targets[body["prefix"]]
        return 200, {"text": target if "context" in body else target.split("(")[0] + "()"}


@pytest.fixture
def serve() -> Iterator[Callable[[FakeGateway], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeGateway) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                assert self.path == "/v1/code/completions"
                assert self.headers["Authorization"] == "Bearer sekrit"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = fake.answer(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _argv(url: str, tree: Path, out: Path) -> list[str]:
    return f"--gateway {url} --key sekrit --model m --source {tree} --out {out}".split()


def test_a_run_reports_the_lift(
    tree: Path, tmp_path: Path, serve: Callable[[FakeGateway], str]
) -> None:
    cases = all_cases(tree)
    fake = FakeGateway(cases, takes_context=True, fail_line=18)
    out = tmp_path / "out"
    assert main(_argv(serve(fake), tree, out)) == 0
    assert len(fake.bodies) == 6
    assert "context" in fake.bodies[0]  # the first request tells an old gateway at once
    data = json.loads((out / "crossfile.json").read_text())
    assert "sekrit" not in json.dumps(data) and "$KEY" in data["command"]
    assert data["python"] and data["candidates"] == 3 and data["stdlib"] is False
    assert data["case_set"] == {"packages": {"pkg": 3}, "with_keyword_arguments": 2}
    summary = data["summary"]
    assert summary["paired"] == 2 and summary["errors"] == {"without": 1, "with": 0}
    exact = summary["metrics"]["exact_match"]
    assert (exact["without"], exact["with"], exact["better"], exact["worse"]) == (0.0, 1.0, 2, 0)
    failed = next(r for r in data["records"] if r["case"] == "pkg/main.py:18")
    assert failed["without"]["error"].startswith("500")
    assert "Cases the context made right:" in (out / "crossfile.md").read_text()
    assert (out / "crossfile.png").read_bytes().startswith(b"\x89PNG")


def test_a_gateway_without_context_stops_the_run(
    tree: Path, tmp_path: Path, serve: Callable[[FakeGateway], str], capsys: Any
) -> None:
    fake = FakeGateway(all_cases(tree), takes_context=False, fail_line=0)
    out = tmp_path / "out"
    assert main(_argv(serve(fake), tree, out)) == 2
    assert len(fake.bodies) == 1
    assert "rejects the `context` field" in capsys.readouterr().err
    assert not (out / "crossfile.json").exists()
