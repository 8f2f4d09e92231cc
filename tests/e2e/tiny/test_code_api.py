"""Code-task routes end to end on the tiny model (real engines, real gateway)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from serving.fim_templates import fim_template
from tests.support.stack import TINY_MODEL, SeedServeProcess, free_port

PREFIX = "def area(r):\n    return 3.14 * "
SUFFIX = "\n\nprint(area(2))\n"


def test_models_say_how_fim_is_served(tiny_client: openai.OpenAI) -> None:
    card = tiny_client.models.list().data[0].model_dump()
    assert card["fim"] == "seed-coder"
    assert card["fim_mode"] == "native"


def test_completions_with_suffix_through_the_openai_client(
    tiny_client: openai.OpenAI, tiny_model_dir: Path
) -> None:
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0
    )
    assert result.choices[0].finish_reason in ("stop", "length")
    # The engine got exactly the SPM-rendered prompt: same token count.
    template = fim_template("seed-coder")
    assert template is not None
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    expected = len(tokenizer(template.render(PREFIX, SUFFIX))["input_ids"])
    assert result.usage is not None
    assert result.usage.prompt_tokens == expected
    assert result.usage.completion_tokens >= 1


def test_fim_streaming_matches_non_streaming(tiny_client: openai.OpenAI) -> None:
    kwargs = {
        "model": TINY_MODEL,
        "prompt": PREFIX,
        "suffix": SUFFIX,
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = tiny_client.completions.create(**kwargs).choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in tiny_client.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert streamed == whole


def test_long_fim_prompt_is_trimmed_into_the_context(tiny_client: openai.OpenAI) -> None:
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(800))
    suffix = "".join(f"check(value_{i})\n" for i in range(800))
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=prefix, suffix=suffix, max_tokens=100, temperature=0
    )
    assert result.usage is not None
    assert result.usage.prompt_tokens + 100 <= 1024
    assert result.usage.prompt_tokens > 600


def test_suffix_with_a_list_prompt_is_refused(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.completions.create(
            model=TINY_MODEL, prompt=["a", "b"], suffix="c", max_tokens=2
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "prompt"


def _code(
    stack: SeedServeProcess, body: dict[str, object], route: str = "completions"
) -> httpx.Response:
    return stack.http.post(f"{stack.base_url}/v1/code/{route}", json=body, timeout=120)


def test_code_completion_shape(tiny_stack: SeedServeProcess) -> None:
    response = _code(
        tiny_stack,
        {
            "prefix": PREFIX,
            "suffix": SUFFIX,
            "path": "geometry.py",
            "max_tokens": 10,
            "temperature": 0,
            "mode": "line",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "code.completion"
    assert body["language"] == "python"
    assert body["mode"] == "line"
    assert body["fim"] == "native"
    assert body["finish_reason"] in ("stop", "length")
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert "\n" not in body["text"]  # line mode
    assert response.headers["x-seed-serve-replica"] in {"tiny-0", "tiny-1"}


def test_auto_mode_follows_the_cursor(tiny_stack: SeedServeProcess) -> None:
    mid_line = _code(
        tiny_stack, {"prefix": "x = f(", "suffix": ")\n", "language": "python", "max_tokens": 4}
    )
    end_of_line = _code(
        tiny_stack,
        {"prefix": "def f():\n    ", "suffix": "\n", "language": "python", "max_tokens": 4},
    )
    assert mid_line.json()["mode"] == "line"
    assert end_of_line.json()["mode"] == "block"


def test_code_completion_stream_equals_whole(tiny_stack: SeedServeProcess) -> None:
    body = {
        "prefix": "def f(x):\n    ",
        "suffix": "",
        "language": "python",
        "max_tokens": 24,
        "temperature": 0,
        "mode": "block",
    }
    whole = _code(tiny_stack, body).json()
    with tiny_stack.http.stream(
        "POST",
        f"{tiny_stack.base_url}/v1/code/completions",
        json={**body, "stream": True},
        timeout=60,
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["finish_reason"] == whole["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("route", "body", "param", "fragment"),
    [
        ("completions", {"suffix": "x"}, "prefix", "Missing"),
        ("completions", {"prefix": "x", "language": "cobol"}, "language", "not supported"),
        ("completions", {"prefix": "x", "path": "notes.xyz"}, "language", "cannot tell"),
        ("completions", {"prefix": "x" * (300 * 1024), "language": "python"}, "prefix", "at most"),
        (
            "completions",
            {"prefix": "x", "language": "python", "max_tokens": 100000},
            "max_tokens",
            "at most",
        ),
        ("completions", {"prefix": "x", "language": "python", "mode": "word"}, "mode", ""),
        ("repairs", {"code": "x = 1", "language": "python"}, "error", "Missing"),
        ("repairs", {"code": "", "error": "boom", "language": "python"}, "code", ""),
        (
            "repairs",
            {"code": "x", "error": "e", "language": "python", "n_candidates": 99},
            "n_candidates",
            "at most",
        ),
        (
            "repairs",
            {"code": "int x;", "error": "e", "language": "c", "test": "def test(): pass"},
            "test",
            "Python",
        ),
        ("tests", {"code": "def f(): pass", "language": "go"}, "language", "Python"),
        ("tests", {"code": "def f(): pass", "framework": "unittest"}, "framework", "pytest"),
        ("tests", {"code": "x" * (300 * 1024)}, "code", "at most"),
    ],
)
def test_bad_code_requests_are_clear_400s(
    tiny_stack: SeedServeProcess, route: str, body: dict[str, object], param: str, fragment: str
) -> None:
    response = _code(tiny_stack, body, route)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]


def test_non_utf8_code_is_a_400(tiny_stack: SeedServeProcess) -> None:
    raw = b'{"prefix": "caf\xe9", "language": "python"}'  # Latin-1 byte, not UTF-8
    response = tiny_stack.http.post(
        f"{tiny_stack.base_url}/v1/code/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    surrogate = tiny_stack.http.post(
        f"{tiny_stack.base_url}/v1/code/repairs",
        content=b'{"code": "x = \\"\\ud800\\"", "error": "e", "language": "python"}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400
    assert surrogate.json()["error"]["param"] == "code"
    assert "UTF-8" in surrogate.json()["error"]["message"]


def test_sandbox_unavailable_is_a_clear_error(tiny_stack: SeedServeProcess, tmp_path: Path) -> None:
    """A gateway whose sandbox cannot isolate refuses to run code (503), never runs it bare."""
    state = tiny_stack.run_state()
    config = {
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "ray": {"namespace": state["namespace"]},
        "sandbox": {"isolation": "bwrap", "bwrap": "/nonexistent/bwrap"},
        "auth": {"keys_file": str(tiny_stack.keys_file), "demo_key_file": None},
    }
    gateway = SeedServeProcess(
        "gateway", config, tmp_path, extra_args=["--ray-address", state["ray_address"]]
    )
    try:
        gateway.wait_ready(replicas=2, timeout_s=180)
        response = tiny_stack.http.post(
            f"{gateway.base_url}/v1/code/tests",
            json={"code": "def f():\n    return 1\n"},
            timeout=60,
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "sandbox_unavailable"
        assert "bwrap" in error["message"]
        assert gateway.stop() == 0
    finally:
        gateway.kill_tree()
