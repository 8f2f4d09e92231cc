"""benchmarks/speculative's own logic: the same requests for every method,
methods this host cannot run reported (not crashed on), speed-ups against
`off`. The real run on engines is the benchmark itself."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.quality.__main__ import load_problems
from benchmarks.speculative.__main__ import TASKS, markdown, plot, run_method, workloads


def test_every_task_gets_greedy_requests_for_each_problem() -> None:
    work = workloads(load_problems(4), seed=0)
    assert set(work) == set(TASKS)
    assert all(len(work[task]) == 4 for task in TASKS)
    routes = {task: {route for route, _ in work[task]} for task in TASKS}
    assert routes == {
        "repair": {"/v1/code/repairs"}, "tests": {"/v1/code/tests"},
        "completion": {"/v1/code/completions"},
    }  # fmt: skip
    assert all(body["temperature"] == 0.0 for task in TASKS for _, body in work[task])
    assert workloads(load_problems(4), seed=0) == work  # the same for every method
    # Each body is one the gateway takes (a refused one measured nothing once).
    from serving.api.code_protocol import CodeCompletionRequest, CodeRepairRequest, CodeTestsRequest

    models = {"repair": CodeRepairRequest, "tests": CodeTestsRequest,
              "completion": CodeCompletionRequest}  # fmt: skip
    for task in TASKS:
        for _, body in work[task]:
            models[task].model_validate(body)
    # Completions of one document supersede each other: one document per problem.
    paths = [body["path"] for _, body in work["completion"]]
    assert len(set(paths)) == len(paths)


def test_a_method_refused_at_start_up_is_reported_without_starting_anything() -> None:
    args = argparse.Namespace(k=4, port=1, startup_timeout=1)
    outcome = run_method("suffix", args, {})  # Arctic Inference is not installed here
    assert outcome["supported"] is False and "Arctic Inference" in outcome["why"]


def _run(tokens_per_s: float, acceptance: float | None) -> dict[str, Any]:
    return {
        "latency_ms": {"p50": 100.0}, "replicas": ["demo-0"], "tokens_per_s": tokens_per_s, "acceptance": acceptance,
        "tokens_per_step": None if acceptance is None else 1 + 4 * acceptance,
    }  # fmt: skip


def test_the_report_compares_each_method_with_off(tmp_path: Path) -> None:
    def tasks(speed: float, acceptance: float | None) -> dict[str, Any]:
        return {t: {"low": _run(speed, acceptance), "saturated": _run(speed / 2, acceptance)}
                for t in TASKS}  # fmt: skip

    result = {
        "problems": 4, "concurrency": 8, "k": 4,
        "methods": {
            "off": {"supported": True, "tasks": tasks(10.0, None)},
            "ngram": {"supported": True, "tasks": tasks(15.0, 0.5)},
            "suffix": {"supported": False, "why": "needs Arctic Inference"},
        },
    }  # fmt: skip
    text = markdown(result)
    assert "| ngram | repair | low | demo-0 | 100 | 15 | 1.5 | 0.5 | 3 |" in text
    assert "| suffix | not supported here |" in text and "needs Arctic Inference" in text
    figure = plot(result, tmp_path / "speculative.png")
    assert figure is not None and figure.stat().st_size > 1000


def test_the_split_deployment_is_a_valid_config() -> None:
    from benchmarks.speculative.__main__ import speculative_for, stack_config
    from serving.config import ServingConfig

    args = argparse.Namespace(k=4)
    config = ServingConfig.model_validate(stack_config(1, "split", speculative_for("split", args)))
    lanes = {g.name: (g.lanes, g.speculative.method) for g in config.replica_groups}
    assert lanes == {"plain": (["completion"], "off"), "spec": (["repair", "tests"], "ngram")}
