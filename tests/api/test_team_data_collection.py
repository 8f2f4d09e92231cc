"""A tenant's training data: accepted suggestions kept with what the model
saw, only for tenants that opted in, never their content in the audit log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from serving.adapters import TeamDataStore
from serving.admission.keys import create_key, update_tenant
from tests.support.asgi import ScriptedGateway, scripted_config, scripted_gateway
from tests.support.scripted_engine import ScriptedEngine

PREFIX = "def pay(invoice):\n    return house_http.post_json("
SUFFIX = ")\n"


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 30))


async def suggest_and_accept(
    gateway: ScriptedGateway, secret: str, event: str = "accepted", chars: int | None = 3
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {secret}"}
    completion = await gateway.call(
        "POST", "/v1/code/completions",
        json_body={"prefix": PREFIX, "suffix": SUFFIX, "language": "python",
                   "path": "billing/pay.py", "max_tokens": 4},
        headers=auth,
    )  # fmt: skip
    assert completion.status == 200, completion.body
    body = completion.json()
    report: dict[str, Any] = {"completion_id": body["id"], "event": event}
    if chars is not None and event == "accepted":
        report["accepted_chars"] = chars
    reply = await gateway.call("POST", "/v1/code/events", json_body=report, headers=auth)
    assert reply.status == 200, reply.body
    return dict(body)


def test_only_an_opted_in_tenant_keeps_accepted_suggestions(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    _, payments = create_key(keys, tenant="payments", name="dev")
    _, search = create_key(keys, tenant="search", name="dev")
    update_tenant(keys, "payments", training_data="collect")
    audit = tmp_path / "audit.jsonl"
    config = scripted_config(
        tmp_path,
        auth={"enabled": True, "keys_file": str(keys), "reload_interval_s": 0.05},
        audit={"file": str(audit)},
        telemetry={"enabled": True},
    )
    store = TeamDataStore(tmp_path / "team-data", retention_days=None)

    async def scenario() -> None:
        async with scripted_gateway(ScriptedEngine("s-0"), config=config) as gateway:
            answer = await suggest_and_accept(gateway, payments, chars=3)
            await suggest_and_accept(gateway, payments, event="dismissed")
            await suggest_and_accept(gateway, search)  # not opted in
            [kept] = list(store.examples("payments"))
            assert kept.completion_id == answer["id"]
            assert kept.prefix == PREFIX
            assert kept.suffix == SUFFIX and kept.path == "billing/pay.py"
            assert kept.shown == answer["text"] and kept.accepted_chars == 3
            assert kept.language == "python" and kept.tenant == "payments"
            assert store.tenants() == ["payments"]  # nothing at all for search

            # Opting out stops collection at once, even for earlier suggestions.
            pending = await gateway.call(
                "POST", "/v1/code/completions",
                json_body={"prefix": PREFIX, "language": "python", "max_tokens": 4},
                headers={"Authorization": f"Bearer {payments}"},
            )  # fmt: skip
            update_tenant(keys, "payments", training_data="off")
            await asyncio.sleep(0.3)  # the keys file reloads
            await gateway.call(
                "POST", "/v1/code/events",
                json_body={"completion_id": pending.json()["id"], "event": "accepted"},
                headers={"Authorization": f"Bearer {payments}"},
            )  # fmt: skip
            await suggest_and_accept(gateway, payments)
            assert store.count("payments") == 1

        lines = [json.loads(line) for line in audit.read_text().splitlines()]
        events = [line["suggestion"] for line in lines if "suggestion" in line]
        assert [e["kept_for_training"] for e in events] == [True, False, False, False, False]
        assert "house_http" not in audit.read_text()  # that it was kept, never what

    run(scenario())
