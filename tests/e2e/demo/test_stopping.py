"""The demo stack, stopped as systemd's default KillMode=control-group stops a
service (deploy/systemd): SIGTERM to every process of the group at once. Ray
stops alongside the gateway; `seed-serve up` still exits 0, leaving no
process behind, without waiting for Ray's GCS (it waited 60 s for it and
exited 1). This module runs last in this folder: it ends the stack."""

from __future__ import annotations

from tests.support.stack import DEMO_MODEL, SeedServeProcess, still_running


def test_a_signal_to_the_whole_group_stops_everything_at_once(
    demo_stack: SeedServeProcess,
) -> None:
    stack = demo_stack
    assert (
        stack.http.post(
            stack.base_url + "/v1/completions",
            json={"model": DEMO_MODEL, "prompt": "x", "max_tokens": 2},
        ).status_code
        == 200
    )
    started = stack.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in started if p.is_running())
    assert "gcs_server" in names and "vllm.entrypoints.openai.api_server" in names
    assert stack.stop(group=True, timeout_s=50) == 0, stack.log()[-3000:]
    alive = still_running(started)
    assert not alive, alive
    log = stack.log()
    assert "Failed to connect to GCS" not in log
    assert "Ray does not answer" in log  # it knew Ray was stopping, and did not wait
    assert not (stack.home / "run" / "up.json").exists()
