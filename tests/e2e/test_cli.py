"""`seed-serve up` refusing to start: a FIM template that does not fit the
model. (Flags, environment and a clean stop are checked on the shared tiny
stack, which is started and stopped the same way: tests/e2e/tiny/test_stopping.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import SeedServeProcess, free_port, tiny_config


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
