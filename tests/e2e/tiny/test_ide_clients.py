"""Real IDE clients against the real stack (tiny model on real vLLM engines,
real Ray, real HTTP): the official `openai` JavaScript SDK (as TypeScript
plugins use it) on /v1, the official `ollama` Python client on /api/*, Tabby's
own agent (`tabby-agent` from npm, its JSON-lines mode and its LSP server) on
/tabby, and llama.vscode's and llama.vim's requests on /infill (llama.vim's
through curl, as it sends them).

The tiny model's completions are noise: these tests check the protocols, the
keys, the accounting and the telemetry, not the code."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.support.stack import TINY_MODEL, SeedServeProcess, replica_endpoints, wait_for_engines

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
TABBY_AGENT = CLIENTS / "node_modules" / "tabby-agent" / "dist" / "cli.js"
OPENAI_JS = CLIENTS / "openai_sdk_scenarios.mjs"
PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\n\nprint(add(1, 2))\n"


def audit_of(stack: SeedServeProcess, route: str, *, at_least: int = 0) -> list[dict[str, Any]]:
    """The audit lines of ``route``, once there are ``at_least`` (the line is
    written just after the answer)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in stack.audit_lines() if line.get("route") == route]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


# --------------------------------------------------------------------------- openai (JavaScript)


def test_the_openai_javascript_sdk(tiny_stack: SeedServeProcess) -> None:
    """Completions plain and streamed, errors as the SDK's typed errors, an
    aborted stream, and a superseded completion the SDK does not retry
    (tests/clients/openai_sdk_scenarios.mjs)."""
    if not (CLIENTS / "node_modules" / "openai").exists():
        pytest.fail("the openai npm package is missing: `make test` installs it (npm ci)")
    replicas = replica_endpoints(tiny_stack)
    wait_for_engines(replicas, busy=False)  # so the wait below sees the older completion
    script = subprocess.Popen(
        ["node", str(OPENAI_JS), tiny_stack.base_url + "/v1", tiny_stack.api_key, TINY_MODEL],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert script.stdout is not None and script.stdin is not None
    try:
        assert script.stdout.readline().strip() == "older sent"
        assert wait_for_engines(replicas, busy=True, timeout_s=60), "the older one never ran"
        script.stdin.write("go\n")
        script.stdin.flush()
        stdout, stderr = script.communicate(timeout=300)
    finally:
        script.kill()
    assert script.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["models"] == [TINY_MODEL]
    assert out["plain"]["usage"]["completion_tokens"] == 5 and out["plain"]["finish"] == "length"
    assert out["stream"]["text"] == out["plain"]["text"]  # greedy: the same text
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [out["stream"]["usage"][k] for k in counts] == [out["plain"]["usage"][k] for k in counts]
    assert out["stream"]["chunks"] >= 2
    unknown = out["unknownModel"]["error"]
    assert (unknown["status"], unknown["code"]) == (404, "model_not_found")
    assert "nope" in unknown["message"]
    bad = out["badMaxTokens"]["error"]
    assert (bad["status"], bad["param"]) == (400, "max_tokens")
    assert out["chatOnBase"]["error"]["code"] == "chat_not_supported"
    assert out["aborted"]["aborted"] and 1 <= out["aborted"]["received"] < 900
    assert tiny_stack.audit_line("js-aborted")["outcome"] == "cancelled"
    superseded = out["superseded"]
    assert superseded["newer"] == "ok", superseded
    older = superseded["older"]["error"]
    assert (older["status"], older["code"], older["shouldRetry"]) == (409, "superseded", "false")
    # Not resent: one request, superseded (a resent one would carry a new request id
    # and, after the newer answer, be answered).
    assert tiny_stack.audit_line(older["requestId"])["outcome"] == "superseded"


# --------------------------------------------------------------------------- Ollama


@pytest.fixture(scope="module")
def ollama_client(tiny_stack: SeedServeProcess) -> ollama.Client:
    return ollama.Client(host=tiny_stack.base_url, headers=tiny_stack.headers, timeout=300)


def test_the_ollama_client_generates_fim_streamed_and_not(
    tiny_stack: SeedServeProcess, ollama_client: ollama.Client
) -> None:
    options = {"num_predict": 12, "temperature": 0, "seed": 1}
    whole = ollama_client.generate(model=TINY_MODEL, prompt=PREFIX, suffix=SUFFIX, options=options)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.eval_count and whole.eval_count >= 1 and whole.prompt_eval_count
    assert whole.total_duration and whole.total_duration > 0
    parts = list(
        ollama_client.generate(
            model=TINY_MODEL, prompt=PREFIX, suffix=SUFFIX, options=options, stream=True
        )
    )
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.response or "" for p in parts) == whole.response  # temperature 0
    assert parts[-1].eval_count == whole.eval_count
    records = audit_of(tiny_stack, "/api/generate", at_least=2)[-2:]
    assert [r["task"] for r in records] == ["code_completion"] * 2
    assert all(r["status"] == 200 and r["completion_tokens"] >= 1 for r in records)


def test_the_ollama_client_lists_shows_and_gets_ollamas_errors(
    tiny_stack: SeedServeProcess, ollama_client: ollama.Client
) -> None:
    assert TINY_MODEL in [m.model for m in ollama_client.list().models]
    shown = ollama_client.show(TINY_MODEL)
    assert shown.template and ".Suffix" in shown.template
    assert shown.modelinfo and shown.modelinfo["seed-coder.context_length"] == 1024
    with pytest.raises(ollama.ResponseError) as unknown:
        ollama_client.generate(model="no-such-model", prompt="x")
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as no_key:
        ollama.Client(host=tiny_stack.base_url).generate(model=TINY_MODEL, prompt="x")
    assert no_key.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as bad:
        ollama_client.generate(model=TINY_MODEL, prompt="x", options={"num_predict": "many"})
    assert bad.value.status_code == 400 and "options.num_predict" in bad.value.error
    # The tiny model has no chat template (the demo stack's chat: tests/e2e/demo).
    with pytest.raises(ollama.ResponseError) as chat:
        ollama_client.chat(model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert chat.value.status_code == 400 and "chat template" in chat.value.error


def test_an_ollama_client_that_leaves_mid_stream_aborts_the_work(
    tiny_stack: SeedServeProcess,
) -> None:
    body = {"model": TINY_MODEL, "prompt": PREFIX, "suffix": SUFFIX,
            "options": {"num_predict": 400, "temperature": 1.0}}  # fmt: skip

    def answered() -> list[dict[str, Any]]:
        return [r for r in audit_of(tiny_stack, "/api/generate") if r["status"] == 200]

    # The random tiny model may sample its end-of-text within the first few
    # tokens, ending the answer before the client leaves: then try again.
    for _ in range(3):
        before = len(answered())
        with httpx.Client(
            base_url=tiny_stack.base_url, headers=tiny_stack.headers, timeout=300
        ) as http:
            with http.stream("POST", "/api/generate", json=body) as reply:
                assert reply.status_code == 200
                next(reply.iter_lines())  # the first piece, then hang up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(answered()) == before:
            time.sleep(0.2)
        record = answered()[-1]
        assert len(answered()) == before + 1, "the request never ended"
        assert record["completion_tokens"] < 400
        if record["outcome"] == "cancelled":
            return
        assert record["finish_reason"] == "stop", record  # it ended by itself, early
    raise AssertionError("three answers ended by themselves before the client left")


# --------------------------------------------------------------------------- llama.cpp

EXTRA = [{"text": "def helper(a, b):\n    return a * b\n", "time": 1712345678901,
          "filename": "/work/util.py"}]  # fmt: skip


def test_llama_vscode_requests_on_infill(tiny_stack: SeedServeProcess) -> None:
    """llama.vscode 0.0.63's completion request (n_cmpl 3 by default: an
    array of answers) and its ring-buffer cache fill (n_predict 0)."""
    http = tiny_stack.http
    completion = {
        "id_slot": 0, "input_prefix": "import util\n\ndef main():\n", "input_suffix": "\n",
        "input_extra": EXTRA, "prompt": "    return ", "n_predict": 24, "n_cmpl": 3,
        "top_k": 40, "top_p": 0.99, "stream": False, "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 2500,
    }  # fmt: skip
    reply = http.post("/infill", json=completion)
    assert reply.status_code == 200, reply.text
    answers = reply.json()
    assert [a["index"] for a in answers] == [0, 1, 2]
    for answer in answers:
        assert isinstance(answer["content"], str) and answer["stop"] is True
        assert answer["generation_settings"]["n_ctx"] == 1024  # its status bar reads it
        assert answer["timings"]["prompt_n"] > 0
    warm = {
        "id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": EXTRA,
        "prompt": "", "n_predict": 0, "samplers": [], "cache_prompt": True,
        "t_max_prompt_ms": 500, "t_max_predict_ms": 1,
    }  # fmt: skip
    seen = len(audit_of(tiny_stack, "/infill", at_least=1))
    filled = http.post("/infill", json=warm)
    assert filled.status_code == 200
    assert filled.json()["content"] == "" and filled.json()["tokens_predicted"] == 0
    record = audit_of(tiny_stack, "/infill", at_least=seen + 1)[-1]
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] == 1  # the prefill's
    wrong = httpx.post(tiny_stack.base_url + "/infill", json=warm,
                       headers={"Authorization": "Bearer sk-wrong"})  # fmt: skip
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by make test")
def test_llama_vim_request_through_curl(tiny_stack: SeedServeProcess) -> None:
    """llama.vim sends its request with curl and accepts an answer only if its
    raw body matches ``^\\s*{`` and ``"content"\\s*:"`` (autoload/llama.vim)."""
    fields = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/predicted_n",
              "timings/predicted_ms", "truncated", "tokens_cached"]  # fmt: skip
    request = {
        "id_slot": 0, "input_prefix": "def area(w, h):\n", "input_suffix": "\n",
        "input_extra": EXTRA, "prompt": "    ", "n_predict": 16, "stop": [], "n_indent": 4,
        "top_k": 40, "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": False,
        "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
        "response_fields": fields,
    }  # fmt: skip
    curl = subprocess.run(
        ["curl", "--silent", "--no-buffer", "--request", "POST", "--url",
         tiny_stack.base_url + "/infill", "--header", "Content-Type: application/json",
         "--header", f"Authorization: Bearer {tiny_stack.api_key}", "--data", "@-"],
        input=json.dumps(request).encode(), capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    raw = curl.stdout.decode()
    assert re.match(r"^\s*{", raw) and re.search(r'"content"\s*:"', raw), raw
    assert set(json.loads(raw)) == set(fields)


# --------------------------------------------------------------------------- Tabby


class JsonLines:
    """tabby-agent's JSON-lines protocol on stdio (``tabby-agent`` without
    ``--lsp``): ``[id, {"func", "args"}]`` in, ``[id, result]`` out, and
    ``[0, event]`` for events."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: queue.Queue[Any] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue

    def call(self, func: str, *args: Any, timeout_s: float = 120) -> Any:
        call_id, self.next_id = self.next_id, self.next_id + 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([call_id, {"func": func, "args": list(args)}]).encode()
                                 + b"\n")  # fmt: skip
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if message[0] == 0:
                self.events.append(message[1])
            elif message[0] == call_id:
                return message[1]
        raise TimeoutError(f"tabby-agent did not answer {func}")


@pytest.fixture
def tabby_agent(tmp_path: Path) -> Iterator[Any]:
    if not TABBY_AGENT.exists():
        pytest.fail(f"{TABBY_AGENT} is missing: `make test` installs it (npm ci in tests/clients)")

    def start(*args: str, config: str | None = None) -> subprocess.Popen[bytes]:
        home = tmp_path / "home"
        if config is not None:
            (home / ".tabby-client" / "agent").mkdir(parents=True, exist_ok=True)
            (home / ".tabby-client" / "agent" / "config.toml").write_text(config)
        process = subprocess.Popen(
            ["node", str(TABBY_AGENT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(home)},
        )
        started.append(process)
        return process

    started: list[subprocess.Popen[bytes]] = []
    yield start
    for process in started:
        process.kill()
        process.wait(10)


def _agent_config(stack: SeedServeProcess, token: str) -> dict[str, Any]:
    return {
        "server": {"endpoint": stack.base_url + "/tabby", "token": token},
        "anonymousUsageTracking": {"disable": True},
    }


def test_tabby_agent_completes_and_its_events_are_suggestion_events(
    tiny_stack: SeedServeProcess, tabby_agent: Any
) -> None:
    agent = JsonLines(tabby_agent())
    assert agent.call("initialize", {"config": _agent_config(tiny_stack, tiny_stack.api_key)})
    deadline = time.monotonic() + 60
    while agent.call("getStatus") != "ready" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.call("getStatus") == "ready"
    text = "import math\n\ndef area(r):\n    return " + "\n"
    result = agent.call(
        "provideCompletions",
        {"filepath": "/work/geometry.py", "language": "python", "text": text,
         "position": len(text) - 1, "manually": True},
    )  # fmt: skip
    completions = audit_of(tiny_stack, "/tabby/v1/completions", at_least=1)
    assert completions and completions[-1]["status"] == 200
    assert completions[-1]["task"] == "code_completion"
    completion_id = result["id"]
    assert completion_id.startswith("cmpl-")  # the gateway's id, passed through
    for kind in ("view", "select"):
        agent.call("postEvent", {"type": kind, "completion_id": completion_id, "choice_index": 0})
    events = [r for r in audit_of(tiny_stack, "/tabby/v1/events", at_least=2) if r["status"] == 200]
    reported = {r["suggestion"]["event"]: r["suggestion"]["recorded"] for r in events
                if r["suggestion"]["completion_id"] == completion_id}  # fmt: skip
    assert reported == {"shown": True, "accepted": True}


def test_tabby_agent_with_a_wrong_token_is_unauthorized(
    tiny_stack: SeedServeProcess, tabby_agent: Any
) -> None:
    agent = JsonLines(tabby_agent())
    agent.call("initialize", {"config": _agent_config(tiny_stack, "sk-not-a-key")})
    deadline = time.monotonic() + 60
    while agent.call("getStatus") != "unauthorized" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.call("getStatus") == "unauthorized"


def _lsp_send(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    body = json.dumps({"jsonrpc": "2.0", **message}).encode()
    assert process.stdin is not None
    process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    process.stdin.flush()


def _lsp_messages(process: subprocess.Popen[bytes]) -> queue.Queue[dict[str, Any]]:
    out: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        while True:
            length = 0
            while (line := process.stdout.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line:
                return
            out.put(json.loads(process.stdout.read(length)))

    threading.Thread(target=read, daemon=True).start()
    return out


def test_tabby_agent_lsp_server_answers_a_completion(
    tiny_stack: SeedServeProcess, tabby_agent: Any
) -> None:
    """What Tabby's IDE plugins run: `tabby-agent --lsp --stdio` (1.5.0 answers
    `textDocument/completion`; its config comes from its config file)."""
    config = (
        f'[server]\nendpoint = "{tiny_stack.base_url}/tabby"\ntoken = "{tiny_stack.api_key}"\n'
        "[anonymousUsageTracking]\ndisable = true\n"
    )
    process = tabby_agent("--lsp", "--stdio", config=config)
    messages = _lsp_messages(process)
    before = len(audit_of(tiny_stack, "/tabby/v1/completions"))
    _lsp_send(process, {"id": 1, "method": "initialize",
                        "params": {"processId": None, "rootUri": None, "capabilities": {}}})  # fmt: skip
    uri = "file:///work/geometry.py"
    text = "import math\n\ndef circle_area(r):\n    return "
    opened = {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}
    position = {"line": 3, "character": len("    return ")}
    result = None
    deadline = time.monotonic() + 120
    asked = False
    while result is None and time.monotonic() < deadline:
        try:
            message = messages.get(timeout=1)
        except queue.Empty:
            continue
        if message.get("id") == 1:
            _lsp_send(process, {"method": "initialized", "params": {}})
            _lsp_send(process, {"method": "textDocument/didOpen", "params": opened})
            time.sleep(2)  # the agent's health check before it serves
            _lsp_send(process, {"id": 2, "method": "textDocument/completion",
                                "params": {"textDocument": {"uri": uri}, "position": position,
                                           "context": {"triggerKind": 1}}})  # fmt: skip
            asked = True
        elif message.get("id") == 2:
            result = message.get("result")
    assert asked and result is not None, "no answer to textDocument/completion"
    assert "items" in result
    completions = audit_of(tiny_stack, "/tabby/v1/completions", at_least=before + 1)
    assert len(completions) > before and completions[-1]["status"] == 200
