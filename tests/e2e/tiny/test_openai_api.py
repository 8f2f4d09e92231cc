"""The OpenAI-compatible API, end to end: official client -> gateway -> vLLM on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from tests.support.stack import TINY_MODEL, SeedServeProcess

PROMPT = "def add(a, b):\n    return"


def test_models_lists_the_served_model(tiny_client: openai.OpenAI) -> None:
    models = tiny_client.models.list().data
    assert [m.id for m in models] == [TINY_MODEL]
    card = models[0].model_dump()
    assert card["max_model_len"] == 1024
    assert card["replicas_ready"] == 2
    assert card["chat"] is False  # the tiny model has no chat template


def test_completion(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=8, temperature=0
    )
    assert result.object == "text_completion"
    assert len(result.choices) == 1
    assert result.choices[0].text
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 8


def test_streaming_joined_equals_non_streaming(tiny_client: openai.OpenAI) -> None:
    kwargs = {"model": TINY_MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "seed": 7}
    whole = tiny_client.completions.create(**kwargs).choices[0].text
    chunks = list(tiny_client.completions.create(stream=True, **kwargs))
    assert len(chunks) > 1, "streaming must deliver several chunks"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole


def test_stream_ends_with_done_and_usage(tiny_stack: SeedServeProcess) -> None:
    body = {
        "model": TINY_MODEL,
        "prompt": PROMPT,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with tiny_stack.http.stream(
        "POST", tiny_stack.base_url + "/v1/completions", json=body, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][6:])["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_a_stream_read_to_done_is_answered_not_cancelled(
    tiny_client: openai.OpenAI, tiny_stack: SeedServeProcess
) -> None:
    """Streams the SDK reads to ``[DONE]`` (then closes) are audited as answered
    with the engine's usage. (The race it closes on, before the response's last
    byte, is rare on this stack: tests/admission/test_dispatch.py forces it.)"""
    ids = []
    for _ in range(8):
        stream = tiny_client.completions.create(
            model=TINY_MODEL, prompt=PROMPT, max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)  # to [DONE], then the SDK closes the response
        assert chunks[-1].usage is not None
        ids.append(stream.response.headers["x-request-id"])
    audited = {request_id: tiny_stack.audit_line(request_id) for request_id in ids}
    assert [audited[i]["outcome"] for i in ids] == ["ok"] * len(ids)
    assert all(audited[i]["completion_tokens"] == 4 for i in ids)


def test_usage_matches_the_tokenizer(tiny_client: openai.OpenAI, tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt_ids = tokenizer(PROMPT, add_special_tokens=True)["input_ids"]
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1
    )
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(prompt_ids)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert result.usage.completion_tokens == len(logprobs.tokens) == 6
    assert result.usage.total_tokens == len(prompt_ids) + 6


def test_list_prompt_and_n(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=["x = 1", "def f():"], max_tokens=3, n=2, temperature=0.8, seed=1
    )
    assert sorted(c.index for c in result.choices) == [0, 1, 2, 3]
    assert result.usage is not None and result.usage.completion_tokens == 12


def test_echo_returns_the_prompt_first(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=3, echo=True
    )
    assert result.choices[0].text.startswith(PROMPT)


def test_unknown_model_is_not_found(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        tiny_client.completions.create(model="gpt-7", prompt="x", max_tokens=1)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "gpt-7" in error["message"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),  # beyond the 1024-token context
        ({"n": 0}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"best_of": 1, "n": 2}, None),
    ],
)
def test_invalid_parameters_are_bad_requests(
    tiny_client: openai.OpenAI, overrides: dict[str, object], param: str | None
) -> None:
    kwargs: dict[str, object] = {"model": TINY_MODEL, "prompt": PROMPT, "max_tokens": 4}
    kwargs.update(overrides)
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.completions.create(**kwargs)  # type: ignore[call-overload]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    if param is not None:
        assert body["param"] == param
        assert param in body["message"]


def test_prompt_beyond_context(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.completions.create(model=TINY_MODEL, prompt=[5] * 1030, max_tokens=10)
    assert "maximum context length is 1024" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens", "integer"),
        ({"prompt": "x", "temperature": "hot"}, "temperature", "number"),
        ({"prompt": 42}, "prompt", ""),
        ({"prompt": "x", "stream": "yes"}, "stream", "boolean"),
        ({"prompt": "x", "frobnicate": 1}, "frobnicate", "Unrecognized"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, None, "stream"),
        ({"max_tokens": 3}, "prompt", "Missing"),
    ],
)
def test_wrong_types_are_bad_requests(
    tiny_stack: SeedServeProcess, body: dict[str, object], param: str | None, fragment: str
) -> None:
    response = tiny_stack.http.post(
        tiny_stack.base_url + "/v1/completions", json={"model": TINY_MODEL, **body}, timeout=30
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fragment in error["message"]


def test_malformed_json_and_empty_body(tiny_stack: SeedServeProcess) -> None:
    url = tiny_stack.base_url + "/v1/completions"
    for content in (b"{not json", b"", b"[1, 2]", b"\xff\xfe"):
        response = tiny_stack.http.post(
            url, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, content
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(tiny_stack: SeedServeProcess) -> None:
    big = "x" * (4 * 1024 * 1024 + 10)
    response = tiny_stack.http.post(
        tiny_stack.base_url + "/v1/completions",
        json={"model": TINY_MODEL, "prompt": big},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_chat_on_a_base_model_is_a_clear_400(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.chat.completions.create(
            model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert "chat template" in str(caught.value)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "chat_not_supported"


def test_two_replicas_both_serve(tiny_client: openai.OpenAI) -> None:
    served = set()
    for index in range(12):
        raw = tiny_client.completions.with_raw_response.create(
            model=TINY_MODEL,
            prompt="x",
            max_tokens=1,
            extra_headers={"x-seed-serve-document": f"file_{index}.py"},
        )
        served.add(raw.headers["x-seed-serve-replica"])
    assert served == {"tiny-0", "tiny-1"}


def test_request_ids(tiny_stack: SeedServeProcess) -> None:
    url = tiny_stack.base_url + "/v1/completions"
    body = {"model": TINY_MODEL, "prompt": "x", "max_tokens": 1}
    mine = tiny_stack.http.post(url, json=body, headers={"x-request-id": "ide-42.abc"})
    assert mine.headers["x-request-id"] == "ide-42.abc"
    generated = tiny_stack.http.post(url, json=body)
    assert len(generated.headers["x-request-id"]) == 32
    # Even errors and non-API routes carry both headers.
    for response in (
        tiny_stack.http.get(tiny_stack.base_url + "/nope"),
        tiny_stack.http.post(url, json={}),
    ):
        assert response.headers["x-request-id"]
        assert response.headers["x-seed-serve-replica"] == "none"


def test_unknown_route_and_method_use_the_envelope(tiny_stack: SeedServeProcess) -> None:
    missing = tiny_stack.http.get(tiny_stack.base_url + "/v1/engines")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong_method = tiny_stack.http.get(tiny_stack.base_url + "/v1/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"]


def test_health_and_ready(tiny_stack: SeedServeProcess) -> None:
    assert tiny_stack.http.get(tiny_stack.base_url + "/health").json() == {"status": "ok"}
    ready = tiny_stack.http.get(tiny_stack.base_url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["replicas"] == {"tiny-0": "ready", "tiny-1": "ready"}


def test_header_limits_and_best_of(tiny_stack: SeedServeProcess) -> None:
    url = tiny_stack.base_url + "/v1/completions"
    body = {"model": TINY_MODEL, "prompt": "x", "max_tokens": 1}
    many = {f"x-extra-{i}": "1" for i in range(80)}
    response = tiny_stack.http.post(url, json=body, headers=many)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_headers_too_large"
    huge = tiny_stack.http.post(url, json=body, headers={"x-blob": "y" * 20000})
    assert huge.status_code == 400
    best_of = tiny_stack.http.post(url, json={**body, "best_of": 50})
    assert best_of.status_code == 400 and best_of.json()["error"]["param"] == "best_of"
