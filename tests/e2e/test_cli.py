"""`seed-serve` as users run it, on real engines: a clean stop, a gateway
joining Ray, engines that refuse anyone but the gateway, a FIM template
that does not fit the model."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from tests.support.stack import (
    TINY_MODEL,
    SeedServeProcess,
    free_port,
    still_running,
    tiny_config,
)


def test_up_serves_then_stops_cleanly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Flags and env reach the running stack; SIGTERM stops every process it started."""
    port = free_port()
    config = tiny_config(tiny_model_dir, port=1, replicas=2)  # port and replicas overridden below
    stack = SeedServeProcess(
        "up",
        {**config, "gateway": {**config["gateway"], "port": port}},
        tmp_path,
        extra_args=["--replicas", "1"],
        env={"SEED_SERVE_GATEWAY__MAX_N": "2"},
    )
    try:
        stack.wait_ready()
        client = openai.OpenAI(
            base_url=stack.base_url + "/v1", api_key=stack.api_key, max_retries=0
        )
        assert client.completions.create(model=TINY_MODEL, prompt="x", max_tokens=2).choices[0].text
        assert stack.http.get(stack.base_url + "/ready").json()["replicas"] == {"tiny-0": "ready"}
        with_n3 = stack.http.post(
            stack.base_url + "/v1/completions",
            json={"model": TINY_MODEL, "prompt": "x", "n": 3, "max_tokens": 1},
        )
        assert with_n3.status_code == 400 and with_n3.json()["error"]["param"] == "n"

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
    finally:
        stack.kill_tree()


def test_fim_template_that_does_not_fit_the_tokenizer_stops_start_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Starcoder's FIM tokens are not single tokens of the tiny model: start-up stops, clearly."""
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=1)
    config["replica_groups"][0]["engine"]["fim_template"] = "starcoder"
    config["replica_groups"][0]["max_restarts"] = 0
    stack = SeedServeProcess("up", config, tmp_path)
    try:
        code = stack.process.wait(timeout=600)
        log = stack.log()
        assert code == 1, log[-3000:]
        assert "engine.fim_template 'starcoder' does not fit this model's tokenizer" in log
        assert "'<fim_prefix>' is" in log
    finally:
        stack.kill_tree()
