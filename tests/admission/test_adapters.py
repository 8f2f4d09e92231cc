"""Team adapters through the whole gateway, against scripted engines whose
adapters are managed by the replica's own logic (serving.cluster.adapters):
which adapter serves whom, isolation between tenants, routing to where an
adapter is loaded, loading and eviction, the bound on thrashing, a corrupt
adapter. The same on real vLLM engines: tests/e2e/test_adapters.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from serving.adapters import add_adapter
from serving.admission.keys import create_key, update_tenant
from serving.config import LoraConfig
from tests.support.adapters import fake_adapter_folder
from tests.support.asgi import ScriptedGateway, scripted_config, scripted_gateway
from tests.support.scripted_engine import ScriptedEngine

MODEL = "scripted"


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 30))


class Team:
    """Keys of two tenants, adapters registered under the configured root."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path
        self.keys = tmp_path / "keys.yaml"
        self.registry = tmp_path / "adapters" / "registry.yaml"
        self.root = tmp_path / "adapters"
        _, self.payments = create_key(self.keys, tenant="payments", name="dev")
        _, self.search = create_key(self.keys, tenant="search", name="dev")
        self.audit = tmp_path / "audit.jsonl"

    def adapter(self, name: str, tenant: str, *, base: str = MODEL) -> Path:
        folder = fake_adapter_folder(self.root / name)
        add_adapter(
            self.registry, name=name, base_model=base, path=folder, tenant=tenant,
            roots=[str(self.root)],
        )  # fmt: skip
        return folder

    def config(self, **sections: Any) -> Any:
        return scripted_config(
            self.home,
            auth={
                "enabled": True,
                "keys_file": str(self.keys),
                "demo_key_file": None,
                "reload_interval_s": 0.05,
            },
            audit={"file": str(self.audit)},
            **sections,
        )


def headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def complete(gateway: ScriptedGateway, secret: str, model: str = MODEL, **body: Any) -> Any:
    payload = {"model": model, "prompt": "def f(x):", "max_tokens": 4, **body}
    return await gateway.call("POST", "/v1/completions", json_body=payload, headers=headers(secret))


def engine_models(engine: ScriptedEngine) -> list[str]:
    return [r.payload["model"] for r in engine.received if r.path == "/v1/completions"]


def lora_gateway(team: Team, *engines: ScriptedEngine, lora: LoraConfig | None = None, **cfg: Any):  # type: ignore[no-untyped-def]
    context = scripted_gateway(*engines, config=team.config(**cfg))
    return _with_lora(context, lora or LoraConfig(enabled=True, max_loras=1), team)


class _with_lora:
    def __init__(self, context: Any, lora: LoraConfig, team: Team) -> None:
        self.context, self.lora, self.team = context, lora, team

    async def __aenter__(self) -> ScriptedGateway:
        gateway: ScriptedGateway = await self.context.__aenter__()
        gateway.cluster.enable_lora(self.lora, [str(self.team.root)])
        await gateway.registry.refresh()
        return gateway

    async def __aexit__(self, *exc: Any) -> None:
        await self.context.__aexit__(*exc)


def test_an_adapter_serves_its_tenant_by_id_and_by_default_and_no_one_else(
    tmp_path: Path,
) -> None:
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    update_tenant(team.keys, "payments", adapter="payments-v1")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with lora_gateway(team, engine) as gateway:
            # By id, and as the tenant's default for the base model.
            by_id = await complete(gateway, team.payments, f"{MODEL}:payments-v1")
            by_default = await complete(gateway, team.payments)
            assert by_id.status == 200 and by_default.status == 200, by_id.body
            # Another tenant: the base model, and the same 404 as an unknown model.
            other = await complete(gateway, team.search)
            assert other.status == 200
            foreign = await complete(gateway, team.search, f"{MODEL}:payments-v1")
            unknown = await complete(gateway, team.search, f"{MODEL}:no-such-adapter")
            assert foreign.status == unknown.status == 404
            assert foreign.json()["error"]["code"] == "model_not_found"
            assert foreign.json()["error"]["param"] == "model"
            # Word for word an unknown model's answer: nothing tells it exists.
            assert foreign.json()["error"]["message"].replace("payments-v1", "?") == (
                unknown.json()["error"]["message"].replace("no-such-adapter", "?")
            )
            assert engine_models(engine) == ["payments-v1", "payments-v1", MODEL]
            assert engine.adapter_calls == [("load", "payments-v1")]  # loaded once

            # /v1/models: the base for all, the adapter for its tenant only.
            mine = await gateway.call("GET", "/v1/models", headers=headers(team.payments))
            theirs = await gateway.call("GET", "/v1/models", headers=headers(team.search))
            ids = [card["id"] for card in mine.json()["data"]]
            assert ids == [MODEL, f"{MODEL}:payments-v1"]
            assert mine.json()["data"][1]["parent"] == MODEL
            assert [card["id"] for card in theirs.json()["data"]] == [MODEL]
            tags = await gateway.call("GET", "/api/tags", headers=headers(team.payments))
            assert [m["name"] for m in tags.json()["models"]] == ids  # Ollama's list too
            other_tags = await gateway.call("GET", "/api/tags", headers=headers(team.search))
            assert [m["name"] for m in other_tags.json()["models"]] == [MODEL]

            # The adapter is a field of the audit line and a label of the metrics.
            lines = [json.loads(line) for line in team.audit.read_text().splitlines()]
            served = [(line["tenant"], line["adapter"]) for line in lines if line["status"] == 200]
            assert ("payments", "payments-v1") in served and ("search", None) in served
            sample = gateway.metrics.registry.get_sample_value
            labels = {"task": "completion", "model": MODEL, "status": "200"}
            assert sample("seed_serve_requests_total", {**labels, "adapter": "payments-v1"}) == 2
            assert sample("seed_serve_requests_total", {**labels, "adapter": ""}) == 1
            assert sample(
                "seed_serve_adapter_loads_total", {"adapter": "payments-v1", "result": "loaded"}
            ) == 1  # fmt: skip

    run(scenario())


def test_every_code_route_uses_the_adapter(tmp_path: Path) -> None:
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    update_tenant(team.keys, "payments", adapter="payments-v1")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with lora_gateway(team, engine) as gateway:
            h = headers(team.payments)
            fim = await gateway.call(
                "POST", "/v1/code/completions",
                json_body={"prefix": "def f(x):\n    ", "suffix": "\n", "language": "python"},
                headers=h,
            )  # fmt: skip
            ollama = await gateway.call(
                "POST", "/api/generate",
                json_body={"model": f"{MODEL}:payments-v1", "prompt": "def f(", "suffix": ")",
                           "stream": False},
                headers=h,
            )  # fmt: skip
            infill = await gateway.call(
                "POST", "/infill", json_body={"input_prefix": "x = ", "input_suffix": ""},
                headers=h,
            )  # fmt: skip
            assert (fim.status, ollama.status, infill.status) == (200, 200, 200), (
                fim.body, ollama.body, infill.body,
            )  # fmt: skip
            assert engine_models(engine) == ["payments-v1"] * 3

    run(scenario())


def test_requests_stay_where_their_adapter_is_loaded(tmp_path: Path) -> None:
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    team.adapter("search-v1", "search")
    update_tenant(team.keys, "payments", adapter="payments-v1")
    update_tenant(team.keys, "search", adapter="search-v1")

    async def scenario() -> None:
        engines = [ScriptedEngine(f"s-{i}") for i in range(2)]
        async with lora_gateway(team, *engines, routing={"policy": "round_robin"}) as gateway:
            for _ in range(6):
                assert (await complete(gateway, team.payments)).status == 200
                assert (await complete(gateway, team.search)).status == 200
            # Each adapter was loaded once, each on its own replica, and its
            # requests went there (round-robin alone would alternate them).
            loads = [(e.replica_id, call) for e in engines for call in e.adapter_calls]
            assert sorted(loads) == [
                ("s-0", ("load", "payments-v1")), ("s-1", ("load", "search-v1")),
            ]  # fmt: skip
            assert set(engine_models(engines[0])) == {"payments-v1"}
            assert set(engine_models(engines[1])) == {"search-v1"}

    run(scenario())


def test_a_full_replica_evicts_the_least_recently_used_idle_adapter(tmp_path: Path) -> None:
    team = Team(tmp_path)
    for name in ("payments-v1", "payments-v2"):
        team.adapter(name, "payments")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        lora = LoraConfig(enabled=True, max_loras=1, min_resident_s=0)
        async with lora_gateway(team, engine, lora=lora) as gateway:
            for name in ("payments-v1", "payments-v2", "payments-v1"):
                reply = await complete(gateway, team.payments, f"{MODEL}:{name}")
                assert reply.status == 200, reply.body
            assert engine.adapter_calls == [
                ("load", "payments-v1"),
                ("unload", "payments-v1"), ("load", "payments-v2"),
                ("unload", "payments-v2"), ("load", "payments-v1"),
            ]  # fmt: skip
            sample = gateway.metrics.registry.get_sample_value
            assert sample("seed_serve_adapter_evictions_total", {"adapter": "payments-v1"}) == 1
            assert sample("seed_serve_adapter_evictions_total", {"adapter": "payments-v2"}) == 1

    run(scenario())


def test_two_busy_adapters_on_a_full_replica_do_not_evict_each_other(tmp_path: Path) -> None:
    """One slot, two adapters in use: the newcomer waits while the resident
    one is busy (min_resident_s), instead of a load and an eviction per
    request; base-model requests are not held up meanwhile."""
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    team.adapter("search-v1", "search")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        lora = LoraConfig(enabled=True, max_loras=1, min_resident_s=60)
        async with lora_gateway(
            team, engine, lora=lora, admission={"queue_timeout_s": 0.5, "stats_interval_s": 0.05}
        ) as gateway:
            for _ in range(3):
                assert (
                    await complete(gateway, team.payments, f"{MODEL}:payments-v1")
                ).status == 200
            # search-v1 cannot take the slot while payments-v1 was used within 60 s.
            waiting = asyncio.ensure_future(complete(gateway, team.search, f"{MODEL}:search-v1"))
            base = await complete(gateway, team.search)  # not held up by the waiting one
            assert base.status == 200
            refused = await waiting
            assert refused.status == 503 and refused.json()["error"]["code"] == "queue_timeout"
            for _ in range(3):
                assert (
                    await complete(gateway, team.payments, f"{MODEL}:payments-v1")
                ).status == 200
            # One load in all: no eviction, no thrashing.
            assert engine.adapter_calls == [("load", "payments-v1")]

    run(scenario())


def test_a_corrupt_adapter_fails_clearly_and_the_replica_keeps_serving(tmp_path: Path) -> None:
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    broken = team.adapter("search-v1", "search")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        lora = LoraConfig(enabled=True, max_loras=2)
        async with lora_gateway(team, engine, lora=lora) as gateway:
            engine.broken_adapter_paths.add(str(broken.resolve()))
            failed = await complete(gateway, team.search, f"{MODEL}:search-v1")
            assert failed.status == 502
            error = failed.json()["error"]
            assert error["code"] == "adapter_load_failed"
            assert "search-v1" in error["message"] and "safetensors" in error["message"]
            # The replica still serves the base model and the other adapter.
            assert gateway.registry.is_ready("s-0")
            assert (await complete(gateway, team.search)).status == 200
            assert (await complete(gateway, team.payments, f"{MODEL}:payments-v1")).status == 200

    run(scenario())


def test_a_removed_adapter_is_unloaded_and_then_unknown(tmp_path: Path) -> None:
    from serving.adapters import remove_adapter

    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with lora_gateway(team, engine, adapters={"reload_interval_s": 0.05}) as gateway:
            assert (await complete(gateway, team.payments, f"{MODEL}:payments-v1")).status == 200
            remove_adapter(team.registry, "payments-v1")
            for _ in range(100):
                if ("unload", "payments-v1") in engine.adapter_calls:
                    break
                await asyncio.sleep(0.02)
            assert engine.adapter_calls[-1] == ("unload", "payments-v1")
            gone = await complete(gateway, team.payments, f"{MODEL}:payments-v1")
            assert gone.status == 404

    run(scenario())


def test_adapters_on_a_group_without_lora_are_refused_by_id(tmp_path: Path) -> None:
    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    update_tenant(team.keys, "payments", adapter="payments-v1")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with scripted_gateway(engine, config=team.config()) as gateway:
            by_id = await complete(gateway, team.payments, f"{MODEL}:payments-v1")
            assert by_id.status == 400 and by_id.json()["error"]["code"] == "adapters_not_enabled"
            # The default applies only where adapters are served: the base answers.
            assert (await complete(gateway, team.payments)).status == 200
            assert engine_models(engine) == [MODEL]

    run(scenario())


def test_admins_register_list_and_remove_adapters_over_the_api(tmp_path: Path) -> None:
    from serving.adapters import load_registry
    from serving.admission.keys import load_keys_file

    team = Team(tmp_path)
    _, admin = create_key(team.keys, tenant="ops", name="root", role="admin")
    good = fake_adapter_folder(team.root / "payments-v2")
    outside = fake_adapter_folder(tmp_path / "elsewhere" / "x")
    lora = LoraConfig(enabled=True, max_loras=2, max_lora_rank=8)

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with lora_gateway(
            team, engine, lora=lora, adapters={"reload_interval_s": 0.05},
            replica_groups=[{"name": "scripted", "lora": lora.model_dump(),
                             "engine": {"model": MODEL, "served_model_name": MODEL}}],
        ) as gateway:  # fmt: skip
            body = {"name": "payments-v2", "base_model": MODEL, "tenant": "payments"}
            as_user = await gateway.call(
                "POST", "/v1/admin/adapters", json_body={**body, "path": str(good)},
                headers=headers(team.payments),
            )  # fmt: skip
            assert as_user.status == 403
            refused = await gateway.call(
                "POST", "/v1/admin/adapters", json_body={**body, "path": str(outside)},
                headers=headers(admin),
            )  # fmt: skip
            assert refused.status == 400 and refused.json()["error"]["param"] == "path"
            assert "outside the configured adapter roots" in refused.json()["error"]["message"]
            added = await gateway.call(
                "POST", "/v1/admin/adapters",
                json_body={**body, "path": str(good), "make_default": True},
                headers=headers(admin),
            )  # fmt: skip
            assert added.status == 201, added.body
            assert load_registry(team.registry).defaults == {"payments": "payments-v2"}
            assert load_keys_file(team.keys).tenants["payments"].adapter is None  # no pin
            await asyncio.sleep(0.3)  # keys file and registry reload
            assert (await complete(gateway, team.payments)).status == 200
            await gateway.registry.refresh()
            listing = await gateway.call("GET", "/v1/admin/adapters", headers=headers(admin))
            [entry] = listing.json()["adapters"]
            assert entry["name"] == "payments-v2" and entry["default_of"] == ["payments"]
            assert entry["loaded_on"] == ["s-0"]
            removed = await gateway.call(
                "DELETE", "/v1/admin/adapters", json_body={"name": "payments-v2"},
                headers=headers(admin),
            )  # fmt: skip
            assert removed.status == 200, removed.body
            assert removed.json()["still_pinned_by"] == []
            assert load_registry(team.registry).defaults == {}
            again = await gateway.call(
                "DELETE", "/v1/admin/adapters", json_body={"name": "payments-v2"},
                headers=headers(admin),
            )  # fmt: skip
            assert again.status == 404 and again.json()["error"]["param"] == "name"

    run(scenario())


def test_a_pin_in_the_keys_file_wins_over_the_published_default(tmp_path: Path) -> None:
    from serving.adapters import set_default

    team = Team(tmp_path)
    team.adapter("payments-v1", "payments")
    team.adapter("payments-v2", "payments")
    set_default(team.registry, "payments", "payments-v2")

    async def scenario() -> None:
        engine = ScriptedEngine("s-0")
        async with lora_gateway(team, engine, lora=LoraConfig(enabled=True, max_loras=2)) as gw:
            assert (await complete(gw, team.payments)).status == 200
            update_tenant(team.keys, "payments", adapter="payments-v1")
            await asyncio.sleep(0.3)  # the keys file reloads
            assert (await complete(gw, team.payments)).status == 200
            assert engine_models(engine) == ["payments-v2", "payments-v1"]

    run(scenario())
