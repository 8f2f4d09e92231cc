"""Ollama, llama.cpp and Tabby fronts over scripted engines: each maps onto the
one completion path (FIM in the model's format, repository context,
admission, supersession) and answers in its own protocol, errors included.
The real clients run against real engines in tests/e2e/tiny/test_ide_clients.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from serving.admission.keys import create_key
from serving.api.routes import GATEWAY_ROUTES
from tests.support.asgi import Reply, ScriptedGateway, scripted_config, scripted_gateway
from tests.support.scripted_engine import Script, ScriptedEngine

# The scripted engines' model is served with Seed-Coder's FIM format (SPM).
FIM_TOKENS = ("<[fim-suffix]>", "<[fim-prefix]>", "<[fim-middle]>")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def ndjson(reply: Reply) -> list[dict[str, Any]]:
    return [json.loads(line) for line in reply.body.split(b"\n") if line]


def sse_data(reply: Reply) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in reply.body.split(b"\n\n") if e.startswith(b"data: ")]


def prompt_of(engine: ScriptedEngine, index: int = -1) -> str:
    prompt: str = engine.received[index].payload["prompt"]
    return prompt


def lines_script(*lines: str, pace_s: float = 0.0) -> Script:
    """The engine writes these pieces, one per token."""
    return Script(tokens=len(lines), text=lambda i: lines[i], pace_s=pace_s, finish_reason="stop")


async def _post(gateway: ScriptedGateway, path: str, body: Any, **kwargs: Any) -> Reply:
    return await gateway.call("POST", path, json_body=body, **kwargs)


# --------------------------------------------------------------------------- Ollama


def test_ollama_generate_with_suffix_is_fim_streamed_as_ndjson() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("x + ", "y", "\n"))
        async with scripted_gateway(engine) as gateway:
            body = {"model": "scripted", "prompt": "def add(x, y):\n    return ",
                    "suffix": "\n\nprint(add(1, 2))\n", "options": {"num_predict": 20,
                    "temperature": 0.1, "top_k": 5, "seed": 7, "stop": ["\n\n"]}}  # fmt: skip
            reply = await _post(gateway, "/api/generate", body)  # stream: the default
            assert reply.status == 200
            assert reply.headers["content-type"] == "application/x-ndjson"
            lines = ndjson(reply)
            assert "".join(line["response"] for line in lines) == "x + y"
            assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
            last = lines[-1]
            assert last["done_reason"] == "stop" and last["eval_count"] == 3
            assert last["prompt_eval_count"] == 4 and last["total_duration"] > 0
            assert isinstance(last["eval_duration"], int) and last["created_at"].endswith("Z")
            prompt = prompt_of(engine)
            assert prompt.startswith("<[fim-suffix]>\n\nprint(add(1, 2))\n<[fim-prefix]>def add")
            assert prompt.endswith("<[fim-middle]>")
            sent = engine.received[-1].payload
            assert (sent["max_tokens"], sent["temperature"], sent["top_k"], sent["seed"]) == (
                20, 0.1, 5, 7)  # fmt: skip
            assert "\n\n" in sent["stop"]

            whole = await _post(gateway, "/api/generate", {**body, "stream": False})
            answer = whole.json()
            assert answer["response"] == "x + y" and answer["done"] is True
            assert answer["done_reason"] == "stop" and "eval_count" in answer

    run(scenario())


def test_ollama_a_prompt_already_in_fim_format_is_not_rendered_twice() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("1"))
        async with scripted_gateway(engine) as gateway:
            rendered = "<[fim-suffix]>)\n<[fim-prefix]>print(<[fim-middle]>"
            # Twinny: its own FIM prompt, no raw, no suffix.
            await _post(gateway, "/api/generate", {"model": "scripted", "prompt": rendered})
            assert prompt_of(engine) == rendered
            # Continue for models without .Suffix in their template: raw.
            await _post(gateway, "/api/generate",
                        {"model": "scripted", "prompt": "x = ", "raw": True, "stream": False})  # fmt: skip
            assert prompt_of(engine) == "x = "
            assert not any(token in prompt_of(engine) for token in FIM_TOKENS)
            # With a suffix, FIM tokens in the prompt are the file's own text.
            await _post(gateway, "/api/generate",
                        {"model": "scripted", "prompt": "t = '<[fim-middle]>'\n", "suffix": "\n"})  # fmt: skip
            assert prompt_of(engine).startswith(
                "<[fim-suffix]>\n<[fim-prefix]>t = '<[fim-middle]>'"
            )

    run(scenario())


def test_ollama_models_show_version_and_load() -> None:
    async def scenario() -> None:
        async with scripted_gateway(ScriptedEngine("s-0")) as gateway:
            tags = (await gateway.call("GET", "/api/tags")).json()
            assert [(m["name"], m["model"]) for m in tags["models"]] == [("scripted", "scripted")]
            assert tags["models"][0]["details"]["family"] == "seed-coder"
            # Continue sends the older {"name": ...}; it uses suffix-FIM when
            # the template mentions .Suffix.
            show = (await _post(gateway, "/api/show", {"name": "scripted"})).json()
            assert ".Suffix" in show["template"] and "insert" in show["capabilities"]
            assert "num_ctx 4096" in show["parameters"]
            assert show["model_info"]["seed-coder.context_length"] == 4096
            version = (await gateway.call("GET", "/api/version")).json()
            assert version["version"].count(".") == 2
            load = await _post(gateway, "/api/generate", {"model": "scripted"})
            assert load.json()["done_reason"] == "load"

    run(scenario())


def test_ollama_errors_are_ollamas_shape_and_name_the_field(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, key = create_key(keys, tenant="t", name="dev")
    config = scripted_config(auth={"enabled": True, "keys_file": str(keys)})
    auth = {"authorization": f"Bearer {key}"}

    async def scenario() -> dict[str, tuple[int, Any]]:
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            cases = {
                "no key": ("/api/generate", {"model": "scripted", "prompt": "x"}, {}),
                "empty authorization (Twinny)": (
                    "/api/generate", {"model": "scripted", "prompt": "x"}, {"authorization": ""}),
                "wrong key": ("/api/generate", {"model": "scripted", "prompt": "x"},
                              {"authorization": "Bearer sk-nope"}),
                "no model": ("/api/generate", {"prompt": "x"}, auth),
                "unknown model": ("/api/generate", {"model": "nope", "prompt": "x"}, auth),
                "bad option": ("/api/generate",
                               {"model": "scripted", "prompt": "x",
                                "options": {"num_predict": "many"}}, auth),
                "show, no model": ("/api/show", {}, auth),
                "chat, no messages": ("/api/chat", {"model": "scripted"}, auth),
            }  # fmt: skip
            out = {}
            for name, (path, body, headers) in cases.items():
                reply = await _post(gateway, path, body, headers=headers)
                out[name] = (reply.status, reply.json())
            return out

    answers = run(scenario())
    for name, (_, body) in answers.items():
        assert set(body) == {"error"} and isinstance(body["error"], str), name
    assert {name: status for name, (status, _) in answers.items()} == {
        "no key": 401, "empty authorization (Twinny)": 401, "wrong key": 401, "no model": 400,
        "unknown model": 404, "bad option": 400, "show, no model": 400, "chat, no messages": 400,
    }  # fmt: skip
    assert "options.num_predict" in answers["bad option"][1]["error"]
    assert answers["no model"][1]["error"] == "model is required"


def test_ollama_mid_stream_failure_is_an_error_line() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=5, die_after=2, text=lambda i: "a"))
        config = scripted_config(timeouts={"retries": 0})
        async with scripted_gateway(engine, config=config) as gateway:
            body = {"model": "scripted", "prompt": "x = ", "suffix": "\n"}
            lines = ndjson(await _post(gateway, "/api/generate", body))
            assert lines[-1].keys() == {"error"} and "failed mid-answer" in lines[-1]["error"]
            assert all(not line.get("done") for line in lines)

    run(scenario())


def test_ollama_chat_translates_the_chat_stream() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("Hel", "lo"))
        async with scripted_gateway(engine) as gateway:
            body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
            lines = ndjson(await _post(gateway, "/api/chat", body))
            assert engine.received[-1].path == "/v1/chat/completions"
            assert "".join(line["message"]["content"] for line in lines) == "Hello"
            assert lines[-1]["done"] and lines[-1]["eval_count"] == 2
            whole = (await _post(gateway, "/api/chat", {**body, "stream": False})).json()
            assert whole["message"] == {"role": "assistant", "content": "Hello"}
            assert whole["done_reason"] == "stop" and whole["prompt_eval_count"] == 4

    run(scenario())


# --------------------------------------------------------------------------- llama.cpp

# What llama.vscode 0.0.63 sends (src/llama-server.ts createRequestPayload).
VSCODE_INFILL = {
    "id_slot": 0, "input_prefix": "import util\n\ndef main():\n", "input_suffix": "\n",
    "input_extra": [{"text": "def helper(a, b):\n    return a * b\n", "time": 1712345678901,
                     "filename": "/w/util.py"}],
    "prompt": "    return ", "n_predict": 32, "n_cmpl": 1, "top_k": 40, "top_p": 0.99,
    "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
    "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 2500,
}  # fmt: skip
# llama.vim's response_fields (autoload/llama.vim).
VIM_FIELDS = ["content", "timings/prompt_n", "timings/predicted_n", "truncated", "tokens_cached"]


def test_infill_answers_as_llama_cpp_with_the_extra_context_in_the_prompt() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("helper(", "1, 2)", "\n"))
        async with scripted_gateway(engine) as gateway:
            reply = await _post(gateway, "/infill", VSCODE_INFILL)
            assert reply.status == 200
            assert b'"content":"' in reply.body  # llama.vim matches exactly this
            answer = reply.json()
            # The new line is already the suffix's: post-processing drops it.
            assert answer["content"] == "helper(1, 2)" and answer["stop"] is True
            assert answer["generation_settings"]["n_ctx"] == 4096  # llama.vscode reads it
            assert answer["timings"]["predicted_n"] == 3 and answer["timings"]["prompt_n"] == 4
            prompt = prompt_of(engine)
            # The other file before the FIM prompt, the cursor's line after the prefix.
            assert prompt.index("def helper(a, b):") < prompt.index("<[fim-suffix]>")
            assert "# path: /w/util.py\ndef helper(a, b):" in prompt
            assert "<[fim-prefix]>import util\n\ndef main():\n    return <[fim-middle]>" in prompt

            fields = await _post(
                gateway, "/infill", {**VSCODE_INFILL, "response_fields": VIM_FIELDS}
            )
            assert set(fields.json()) == set(VIM_FIELDS)

            several = await _post(gateway, "/infill", {**VSCODE_INFILL, "n_cmpl": 3})
            assert [c["index"] for c in several.json()] == [0, 1, 2]
            assert engine.received[-1].payload["n"] == 3

    run(scenario())


def test_infill_streams_data_events_ending_with_stop_and_no_done() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("a", "b"))
        async with scripted_gateway(engine) as gateway:
            reply = await _post(gateway, "/infill", {**VSCODE_INFILL, "stream": True})
            events = sse_data(reply)
            assert "".join(e["content"] for e in events) == "ab"
            assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
            assert b"[DONE]" not in reply.body

    run(scenario())


def test_infill_n_indent_and_t_max_predict_ms_end_the_suggestion() -> None:
    async def scenario() -> None:
        dedent = lines_script("x = 1\n", "    y = 2\n", "z = 3\n")
        slow = lines_script("a\n", "b", "c", "d", pace_s=0.1)
        engine = ScriptedEngine("s-0").then(dedent, slow)
        async with scripted_gateway(engine) as gateway:
            cut = await _post(gateway, "/infill", {**VSCODE_INFILL, "n_indent": 4})
            assert cut.json()["content"] == "x = 1\n    y = 2\n"  # z = 3 is indented less
            timed = await _post(gateway, "/infill", {**VSCODE_INFILL, "n_indent": 0,
                                                     "t_max_predict_ms": 150})  # fmt: skip
            assert timed.json()["content"] in ("a\nb", "a\nbc")
            assert timed.json()["stop_type"] == "limit"
            assert engine.received[-1].hung_up  # the rest was not generated

    run(scenario())


def test_cache_warming_costs_a_prefill_and_is_no_suggestion() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=6, pace_s=0.05))
        config = scripted_config(telemetry={"enabled": True})
        async with scripted_gateway(engine, config=config) as gateway:
            real = asyncio.create_task(_post(gateway, "/infill", VSCODE_INFILL))
            await engine.requests(1)
            # llama.vscode's ring update (fire and forget).
            warm = await _post(gateway, "/infill", {
                "id_slot": 0, "input_prefix": "", "input_suffix": "",
                "input_extra": VSCODE_INFILL["input_extra"], "prompt": "", "n_predict": 0,
                "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500,
                "t_max_predict_ms": 1})  # fmt: skip
            assert warm.status == 200 and warm.json()["content"] == ""
            assert warm.json()["tokens_predicted"] == 0
            assert engine.received[-1].payload["max_tokens"] == 1  # the prefill's own token
            assert "def helper(a, b):" in prompt_of(engine)
            assert (await real).status == 200  # not superseded by the warm-up
            # Even with a document header, a warm-up supersedes nothing.
            again = asyncio.create_task(_post(gateway, "/infill", VSCODE_INFILL,
                                              headers={"x-seed-serve-document": "a.py"}))  # fmt: skip
            await engine.requests(3)
            warm_doc = await _post(gateway, "/infill", {**VSCODE_INFILL, "n_predict": 0},
                                   headers={"x-seed-serve-document": "a.py"})  # fmt: skip
            assert warm_doc.status == 200 and (await again).status == 200
            # Answers of /infill are never tracked as suggestions.
            assert not [r for r in GATEWAY_ROUTES if r.path == "/infill" and r.tracked]

    run(scenario())


def test_infill_a_newer_request_of_the_slot_supersedes_the_older() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=20, pace_s=0.05))
        async with scripted_gateway(engine) as gateway:
            older = asyncio.create_task(_post(gateway, "/infill", VSCODE_INFILL))
            await engine.requests(1)
            newer = await _post(gateway, "/infill", VSCODE_INFILL)
            replaced = await older
            assert newer.status == 200
            assert replaced.status == 409
            assert replaced.json()["error"]["type"] == "server_error"
            assert replaced.json()["error"]["code"] == 409
            assert engine.received[0].hung_up

    run(scenario())


def test_llama_cpp_errors_name_the_field_in_its_shape(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, key = create_key(keys, tenant="t", name="dev")
    config = scripted_config(auth={"enabled": True, "keys_file": str(keys)})

    async def scenario() -> list[Reply]:
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            auth = {"authorization": f"Bearer {key}"}
            return [
                await _post(gateway, "/infill", {"input_suffix": ""}, headers=auth),
                await _post(gateway, "/infill", {**VSCODE_INFILL, "n_predict": "x"}, headers=auth),
                await _post(gateway, "/infill", VSCODE_INFILL),
                await _post(gateway, "/completion", {"prompt": ""}, headers=auth),
            ]

    missing, wrong_type, no_key, empty = run(scenario())
    assert missing.status == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    assert (
        missing.json()["error"]["code"] == 400
        and "input_prefix" in missing.json()["error"]["message"]
    )
    assert wrong_type.status == 400 and "n_predict" in wrong_type.json()["error"]["message"]
    assert no_key.status == 401 and no_key.json()["error"]["type"] == "authentication_error"
    assert empty.status == 400 and "prompt" in empty.json()["error"]["message"]


def test_completion_sends_the_prompt_as_it_is() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script(" world"))
        async with scripted_gateway(engine) as gateway:
            reply = await _post(gateway, "/completion", {"prompt": "hello", "n_predict": 4})
            assert reply.json()["content"] == " world"
            assert prompt_of(engine) == "hello" and engine.received[-1].payload["max_tokens"] == 4
            props = (await gateway.call("GET", "/props")).json()
            assert props["default_generation_settings"]["n_ctx"] == 4096

    run(scenario())


# --------------------------------------------------------------------------- Tabby

TABBY_REQUEST = {
    "language": "python",
    "segments": {
        "prefix": "from shapes import area\n\nprint(", "suffix": ")\n",
        "filepath": "app/main.py", "git_url": "https://example.com/o/shapes.git",
        "declarations": [{"filepath": "shapes.py", "body": "def area(w, h):\n    ..."}],
        "relevant_snippets_from_changed_files": [
            {"filepath": "util.py", "body": "def unit():\n    return 1\n", "score": 0.9}],
        "clipboard": "ignored",
    },
}  # fmt: skip


def test_tabby_completion_events_and_health(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, key = create_key(keys, tenant="t", name="dev")
    config = scripted_config(
        auth={"enabled": True, "keys_file": str(keys)}, telemetry={"enabled": True}
    )
    auth = {"authorization": f"Bearer {key}"}

    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("area(2, 3)"))
        async with scripted_gateway(engine, config=config) as gateway:
            reply = await _post(gateway, "/tabby/v1/completions", TABBY_REQUEST, headers=auth)
            answer = reply.json()
            assert answer["id"].startswith("cmpl-")
            # The suffix already closes the call.
            assert answer["choices"] == [{"index": 0, "text": "area(2, 3"}]
            prompt = prompt_of(engine)
            assert prompt.index("def unit()") < prompt.index("def area(w, h)")  # declarations last
            assert prompt.index("def area(w, h)") < prompt.index("<[fim-suffix]>")
            for kind in ("view", "select"):
                event = {"type": kind, "completion_id": answer["id"], "choice_index": 0}
                sent = await _post(gateway, "/tabby/v1/events", event, headers=auth)
                assert (sent.status, sent.body) == (200, b"")
            counted = {
                s.labels["event"]: s.value
                for s in gateway.metrics.suggestions.collect()[0].samples
                if s.name.endswith("_total")
            }
            assert counted == {"shown": 1.0, "accepted": 1.0}
            for method in ("GET", "POST"):
                health = await gateway.call(method, "/tabby/v1/health", headers=auth)
                assert health.json()["model"] == "scripted"
                assert health.json()["version"]["git_describe"]
            assert (await gateway.call("GET", "/tabby/v1/health")).status == 401
            bad = await _post(gateway, "/tabby/v1/completions", {"language": "python"},
                              headers=auth)  # fmt: skip
            assert bad.status == 400 and "segments" in bad.body.decode()
            assert bad.headers["content-type"].startswith("text/plain")
            unknown = await _post(gateway, "/tabby/v1/events",
                                  {"type": "hover", "completion_id": "x"}, headers=auth)  # fmt: skip
            assert unknown.status == 400 and "type" in unknown.body.decode()

    run(scenario())


def test_every_front_aborts_the_engine_when_the_client_leaves() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=50, pace_s=0.05))
        async with scripted_gateway(engine) as gateway:
            for path, body in [
                ("/api/generate", {"model": "scripted", "prompt": "x", "suffix": "y"}),
                ("/api/generate", {"model": "scripted", "prompt": "x", "suffix": "y",
                                   "stream": False}),
                ("/infill", VSCODE_INFILL),
                ("/infill", {**VSCODE_INFILL, "stream": True}),
                ("/tabby/v1/completions", TABBY_REQUEST),
            ]:  # fmt: skip
                leave = asyncio.Event()
                asyncio.get_running_loop().call_later(0.2, leave.set)
                reply = await _post(gateway, path, body, leave=leave)
                assert not reply.complete, path
                await asyncio.sleep(0.02)
                assert engine.received[-1].hung_up and not engine.received[-1].finished, path
            assert engine.running == 0

    run(scenario())


def test_a_newer_request_for_the_same_document_supersedes_in_ollama_and_tabby() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=Script(tokens=20, pace_s=0.05))
        async with scripted_gateway(engine) as gateway:
            for path, body, shape in [
                ("/api/generate", {"model": "scripted", "prompt": "x", "suffix": "y",
                                   "stream": False}, "ollama"),
                ("/tabby/v1/completions", TABBY_REQUEST, "tabby"),
            ]:  # fmt: skip
                seen = len(engine.received)
                older = asyncio.create_task(_post(gateway, path, body))
                await engine.requests(seen + 1)
                newer = await _post(gateway, path, body)
                replaced = await older
                assert newer.status == 200 and replaced.status == 409, path
                assert "newer completion" in (
                    replaced.json()["error"] if shape == "ollama" else replaced.body.decode()
                )

    run(scenario())


# --------------------------------------------------------------------------- integers the engine takes

# Each front's request with a seed and a top_k beyond what reaches the engine
# (vLLM's wire format carries -2**63 .. 2**64 - 1: beyond, the engine failed
# mid-request and the client got a 502; found by the OpenAPI fuzzing on /infill).
TOO_LARGE = 2**64
OVERSIZED = [
    ("/v1/completions", {"model": "scripted", "prompt": "x", "seed": TOO_LARGE}, "seed"),
    ("/v1/completions", {"model": "scripted", "prompt": "x", "top_k": 2**31}, "top_k"),
    ("/infill", {**VSCODE_INFILL, "seed": TOO_LARGE}, "seed"),
    ("/infill", {**VSCODE_INFILL, "top_k": TOO_LARGE}, "top_k"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "options": {"seed": TOO_LARGE}}, "seed"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "options": {"top_k": 2**31}}, "top_k"),
    ("/tabby/v1/completions", {**TABBY_REQUEST, "seed": TOO_LARGE}, "seed"),
    ("/v1/code/completions", {"prefix": "x = ", "language": "python", "seed": TOO_LARGE}, "seed"),
    (
        "/v1/code/repairs",
        {"code": "x = 1\n", "error": "boom", "language": "python", "seed": -(2**63) - 1},
        "seed",
    ),
    (
        "/v1/code/tests",
        {"code": "def f():\n    return 1\n", "language": "python", "seed": TOO_LARGE},
        "seed",
    ),
]


def test_integers_the_engine_cannot_take_are_400s_naming_the_field() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine("s-0", default=lines_script("y"))
        async with scripted_gateway(engine) as gateway:
            for path, body, field in OVERSIZED:
                reply = await _post(gateway, path, body)
                assert reply.status == 400, (path, field, reply.status, reply.body[:200])
                assert field in reply.body.decode(), (path, reply.body[:300])
            assert engine.received == []  # nothing reached the engine
            # The largest seed the engine takes still passes.
            fine = await _post(gateway, "/infill", {**VSCODE_INFILL, "seed": 2**64 - 1})
            assert fine.status == 200 and engine.received[-1].payload["seed"] == 2**64 - 1

    run(scenario())
