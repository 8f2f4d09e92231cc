"""The tiny stack as `seed-serve up` was started and is stopped by a user:
the command-line flag and the environment variable it was started with
reached the running stack, and SIGTERM to `seed-serve up` alone (what Ctrl-C
or `kill` does) stops every process it started. This module runs last in
this folder: it ends the stack (the demo stack is stopped the other way, by
signalling its whole process group: tests/e2e/demo/test_stopping.py)."""

from __future__ import annotations

import time

import openai

from tests.support.stack import TINY_MODEL, TINY_STACK_MAX_N, SeedServeProcess, still_running


def test_flags_and_env_reached_the_stack_and_sigterm_stops_everything(
    tiny_stack: SeedServeProcess, tiny_client: openai.OpenAI
) -> None:
    stack = tiny_stack
    assert (
        tiny_client.completions.create(model=TINY_MODEL, prompt="x", max_tokens=2).choices[0].text
    )
    # Its config asks for one replica; `--replicas 2` on the command line won.
    assert stack.http.get("/ready").json()["replicas"] == {"tiny-0": "ready", "tiny-1": "ready"}
    # SEED_SERVE_GATEWAY__MAX_N lowered the gateway's largest n (default 8).
    over = stack.http.post(
        "/v1/completions",
        json={"model": TINY_MODEL, "prompt": "x", "n": TINY_STACK_MAX_N + 1, "max_tokens": 1},
    )
    assert over.status_code == 400 and over.json()["error"]["param"] == "n", over.text
    at_most = stack.http.post(
        "/v1/completions",
        json={"model": TINY_MODEL, "prompt": "x", "n": TINY_STACK_MAX_N, "max_tokens": 1},
    )
    assert at_most.status_code == 200 and len(at_most.json()["choices"]) == TINY_STACK_MAX_N

    started = stack.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in started if p.is_running())
    assert "vllm.entrypoints.openai.api_server" in names
    assert "raylet" in names
    began = time.monotonic()
    assert stack.stop() == 0, stack.log()[-3000:]
    # Give the kernel a moment to reap, then nothing it started may remain.
    alive = still_running(started)
    assert not alive, alive
    assert time.monotonic() - began < 120
    assert not (stack.home / "run" / "up.json").exists()
