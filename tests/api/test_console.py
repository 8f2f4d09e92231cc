"""The console's security, through the real gateway app (every layer) with a
real local OpenID Connect provider (oidc-provider-mock, its own HTTP server):
sign-in (PKCE, state, nonce), cookies, CSRF, session fixation, tenants kept
apart, admin pages, and what the page is served with. The browser's view of
the same: tests/e2e/tiny/test_console_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from oidc_provider_mock import User, run_server_in_thread

from serving.admission.keys import create_key, load_keys_file
from tests.support.asgi import Reply, ScriptedGateway, scripted_config, scripted_gateway
from tests.support.redis_server import redis_server
from tests.support.scripted_engine import ScriptedEngine

USERS = [
    User(sub="alice", claims={"email": "alice@corp.example", "groups": ["team-a"]}),
    User(sub="bob", claims={"email": "bob@corp.example", "groups": ["team-b"]}),
    User(sub="root", claims={"email": "root@corp.example", "groups": ["team-a", "platform"]}),
    User(sub="carol", claims={"email": "carol@corp.example", "groups": ["contractors"]}),
]


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with run_server_in_thread(user_claims=USERS) as server:
        yield f"http://localhost:{server.server_port}"


def console_config(tmp_path: Path, issuer: str | None, **sections: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    auth: dict[str, Any] = {"enabled": True, "keys_file": str(tmp_path / "keys.yaml"),
                            "demo_key_file": None}  # fmt: skip
    if issuer is not None:
        auth["oidc"] = {
            "issuer": issuer,
            "client_id": "seed-serve",
            "client_secret_file": str(secret),
            "tenants": [
                {"group": "team-a", "tenant": "team-a"},
                {"group": "team-b", "tenant": "team-b"},
            ],
            "admin_groups": ["platform"],
        }
    return scripted_config(tmp_path, auth=auth, **sections)


def console_gateway(tmp_path: Path, issuer: str | None, **sections: Any) -> Any:
    """The real gateway app in front of one scripted engine, with the console."""
    return scripted_gateway(
        ScriptedEngine("s-0"), config=console_config(tmp_path, issuer, **sections)
    )


class Browser:
    """Cookies and the CSRF token, as the console page keeps them."""

    def __init__(self, gateway: ScriptedGateway) -> None:
        self.gateway = gateway
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"host": "gateway"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {**headers, **(extra or {})}

    def _keep(self, reply: Reply) -> None:
        for cookie in reply.set_cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    async def get(self, path: str, **headers: str) -> Reply:
        reply = await self.gateway.call("GET", path, headers=self._headers(headers))
        self._keep(reply)
        return reply

    async def post(
        self, path: str, body: Any = None, *, csrf: bool = True, **headers: str
    ) -> Reply:
        extra = {"x-csrf-token": self.csrf} if csrf and self.csrf else {}
        reply = await self.gateway.call(
            "POST", path, json_body=body if body is not None else {},
            headers=self._headers({**extra, **headers}),
        )  # fmt: skip
        self._keep(reply)
        return reply

    async def sign_in_sso(self, sub: str) -> Reply:
        """The console's sign-in: to the provider, its form submitted, back."""
        away = await self.get("/console/login")
        assert away.status == 303, away.body
        authorize = away.headers["location"]
        query = parse_qs(urlparse(authorize).query)
        assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
        assert query["state"][0] and query["nonce"][0] and query["client_id"] == ["seed-serve"]

        def submit() -> str:
            answer = httpx.post(authorize, data={"sub": sub}, timeout=30)
            assert answer.status_code == 302, answer.text
            return answer.headers["location"]

        back = urlparse(await asyncio.to_thread(submit))
        assert back.path == "/console/callback"
        reply = await self.get(f"/console/callback?{back.query}")
        await self.refresh_csrf()
        return reply

    async def refresh_csrf(self) -> None:
        me = await self.get("/console/api/me")
        self.csrf = me.json()["csrf_token"] if me.status == 200 else ""


def run(scenario: Any) -> None:
    asyncio.run(scenario())


def test_sso_sign_in_makes_a_session_with_safe_cookies(tmp_path: Path, issuer: str) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            browser = Browser(gw)
            reply = await browser.sign_in_sso("alice")
            assert reply.status == 303 and reply.headers["location"] == "/console"
            session_cookie = next(
                c for c in reply.set_cookies() if c.startswith("seed_serve_session=")
            )
            for attribute in (
                "HttpOnly",
                "Secure",
                "SameSite=Lax",
                "Path=/console",
                "Max-Age=28800",
            ):
                assert attribute in session_cookie
            assert "seed_serve_login" not in browser.cookies  # the sign-in's state is spent
            me = (await browser.get("/console/api/me")).json()
            assert (me["user"], me["tenant"], me["role"], me["via"]) == (
                "alice@corp.example",
                "team-a",
                "user",
                "sso",
            )
            # The page: strict CSP, never framed, no inline script.
            page = await browser.get("/console")
            assert page.status == 200 and page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "'unsafe-inline'" not in csp and page.headers["x-frame-options"] == "DENY"
            assert re.search(rb"<script>", page.body) is None and b'data-sso="1"' in page.body
            # Sign-out ends the session on the server, not only in the browser.
            stolen = dict(browser.cookies)
            assert (await browser.post("/console/logout")).status == 200
            browser.cookies = stolen
            assert (await browser.get("/console/api/me")).status == 401

    run(scenario)


def test_a_replayed_or_forged_callback_makes_no_session(tmp_path: Path, issuer: str) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            browser = Browser(gw)
            await browser.sign_in_sso("alice")
            # Another browser given alice's callback link (no sign-in cookie of its own).
            attacker = Browser(gw)
            reply = await attacker.get("/console/callback?code=x&state=y")
            assert reply.status == 303 and "error=sso_failed" in reply.headers["location"]
            assert "seed_serve_session" not in attacker.cookies
            # A state that is not the one this browser was given.
            await attacker.get("/console/login")
            reply = await attacker.get("/console/callback?code=x&state=forged")
            assert "error=sso_failed" in reply.headers["location"]
            # A user whose groups map to no tenant.
            carol = Browser(gw)
            reply = await carol.sign_in_sso("carol")
            assert "error=no_tenant" in reply.headers["location"]
            assert "seed_serve_session" not in carol.cookies

    run(scenario)


def test_session_fixation_a_planted_cookie_is_never_promoted(tmp_path: Path, issuer: str) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            first = Browser(gw)
            await first.sign_in_sso("alice")
            planted = first.cookies["seed_serve_session"]
            victim = Browser(gw)
            victim.cookies["seed_serve_session"] = "attacker-chosen.value"
            assert (await victim.get("/console/api/me")).status == 401
            victim.cookies["seed_serve_session"] = planted  # a valid cookie of someone else
            await victim.sign_in_sso("bob")
            assert victim.cookies["seed_serve_session"] != planted  # a new session id
            assert (await victim.get("/console/api/me")).json()["user"] == "bob@corp.example"
            # Tampering with the signed cookie (another role) breaks it.
            body, mac = planted.split(".")
            assert (
                await Browser(gw).get("/console/api/me", cookie=f"seed_serve_session={body}x.{mac}")
            ).status == 401

    run(scenario)


def test_csrf_token_missing_or_wrong_and_cross_site_origins_are_refused(
    tmp_path: Path, issuer: str
) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            browser = Browser(gw)
            await browser.sign_in_sso("alice")
            for reply in (
                await browser.post("/console/api/keys", {"name": "laptop"}, csrf=False),
                await browser.post("/console/api/keys", {"name": "laptop"}, csrf=False,
                                   **{"x-csrf-token": "wrong"}),
                await browser.post("/console/api/keys", {"name": "laptop"},
                                   origin="https://evil.example"),
                await browser.post("/console/logout", csrf=False),
            ):  # fmt: skip
                assert reply.status == 403, reply.body
                assert reply.json()["error"]["code"] == "csrf_failed"
            assert load_keys_file(tmp_path / "keys.yaml").keys == []  # nothing was created
            # Another session's token is no good either.
            other = Browser(gw)
            await other.sign_in_sso("bob")
            reply = await browser.post("/console/api/keys", {"name": "x"}, csrf=False,
                                       **{"x-csrf-token": other.csrf})  # fmt: skip
            assert reply.status == 403
            # Signing in with a key needs the console's own header (a cross-site form cannot send it).
            _, admin = create_key(tmp_path / "keys.yaml", tenant="ops", name="root", role="admin")
            reply = await Browser(gw).post("/console/login/key", {"key": admin}, csrf=False)
            assert reply.status == 403 and reply.json()["error"]["code"] == "csrf_failed"

    run(scenario)


def test_developers_manage_their_own_keys_and_see_only_their_own_usage(
    tmp_path: Path, issuer: str
) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            alice, bob = Browser(gw), Browser(gw)
            await alice.sign_in_sso("alice")
            await bob.sign_in_sso("bob")
            created = await alice.post("/console/api/keys", {"name": "laptop"})
            assert created.status == 201, created.body
            secret, key = created.json()["secret"], created.json()["key"]
            assert (key["tenant"], key["owner"], key["role"]) == (
                "team-a",
                "alice@corp.example",
                "user",
            )
            assert key["expires"] is not None  # console.key_ttl_days
            stored = load_keys_file(tmp_path / "keys.yaml").keys
            assert secret not in (tmp_path / "keys.yaml").read_text() and len(stored) == 1
            # The key works on the API, counted as alice's.
            answer = await gw.call("POST", "/v1/completions", json_body={
                "model": "scripted", "prompt": "x", "max_tokens": 2},
                headers={"authorization": f"Bearer {secret}"})  # fmt: skip
            assert answer.status == 200, answer.body
            usage = (await alice.get("/console/api/usage")).json()["data"]
            assert [(r["user"], r["requests"]) for r in usage] == [("alice@corp.example", 1)]
            # Bob sees neither alice's keys nor her usage, and cannot touch her key.
            assert (await bob.get("/console/api/keys")).json()["keys"] == []
            assert (await bob.get("/console/api/usage")).json()["data"] == []
            for path, query in (("/console/api/keys", "tenant=team-a"),
                                ("/console/api/usage", "tenant=team-a"),
                                ("/console/api/usage", "user=alice@corp.example")):  # fmt: skip
                reply = await bob.get(f"{path}?{query}")
                assert reply.status == 403 and reply.json()["error"]["code"] == "other_tenant"
            for action in ("revoke", "rotate"):
                reply = await bob.post(f"/console/api/keys/{action}", {"id": key["id"]})
                assert reply.status == 403 and reply.json()["error"]["code"] == "not_your_key"
            # Admin pages are for admins.
            for path in ("/console/api/tenants", "/console/api/replicas", "/console/api/adapters"):
                assert (await bob.get(path)).status == 403
            # Rotation: a new secret works, the old one is refused; then revoke.
            rotated = await alice.post("/console/api/keys/rotate", {"id": key["id"]})
            assert rotated.status == 200 and rotated.json()["revoked"] == key["id"]
            new_secret = rotated.json()["secret"]
            for secret_used, status in ((secret, 401), (new_secret, 200)):
                reply = await gw.call("POST", "/v1/completions", json_body={
                    "model": "scripted", "prompt": "x", "max_tokens": 2},
                    headers={"authorization": f"Bearer {secret_used}"})  # fmt: skip
                assert reply.status == status
            new_id = rotated.json()["key"]["id"]
            assert (await alice.post("/console/api/keys/revoke", {"id": new_id})).status == 200
            states = {
                k["id"]: k["state"] for k in (await alice.get("/console/api/keys")).json()["keys"]
            }
            assert states == {key["id"]: "revoked", new_id: "revoked"}
            # Bad input named.
            reply = await alice.post("/console/api/keys", {"name": ""})
            assert reply.status == 400 and reply.json()["error"]["param"] == "name"

    run(scenario)


def test_admins_see_every_tenant_and_names_are_data_not_markup(tmp_path: Path, issuer: str) -> None:
    async def scenario() -> None:
        keys_file = tmp_path / "keys.yaml"
        create_key(keys_file, tenant="team-b", name='<img src=x onerror="alert(1)">', owner="bob")
        async with console_gateway(tmp_path, issuer) as gw:
            root = Browser(gw)
            await root.sign_in_sso("root")
            assert (await root.get("/console/api/me")).json()["role"] == "admin"
            tenants = await root.get("/console/api/tenants")
            assert tenants.headers["content-type"] == "application/json"
            names = {t["name"]: t for t in tenants.json()["tenants"]}
            assert names["team-b"]["keys"][0]["name"] == '<img src=x onerror="alert(1)">'
            assert "sha256" not in tenants.body.decode()
            replicas = (await root.get("/console/api/replicas")).json()
            assert (
                replicas["routing"] == "prefix_affinity" and replicas["replicas"][0]["id"] == "s-0"
            )
            # An admin may revoke anyone's key (audited as the admin's action).
            key_id = names["team-b"]["keys"][0]["id"]
            assert (await root.post("/console/api/keys/revoke", {"id": key_id})).status == 200

    run(scenario)


def test_without_sso_an_admin_key_signs_in_and_a_developer_key_does_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys_file = tmp_path / "keys.yaml"
        _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
        _, developer = create_key(keys_file, tenant="team-a", name="dev")
        async with console_gateway(tmp_path, None) as gw:
            page = await Browser(gw).get("/console")
            assert b'data-sso="0"' in page.body
            away = await Browser(gw).get("/console/login")
            assert away.headers["location"] == "/console?error=no_sso"
            browser = Browser(gw)
            console = {"x-seed-serve-console": "1"}
            reply = await browser.post(
                "/console/login/key", {"key": developer}, csrf=False, **console
            )
            assert reply.status == 403 and reply.json()["error"]["code"] == "admin_only"
            reply = await browser.post(
                "/console/login/key", {"key": "sk-seed-nope"}, csrf=False, **console
            )
            assert reply.status == 401
            reply = await browser.post("/console/login/key", {"key": admin}, csrf=False, **console)
            assert reply.status == 200 and "seed_serve_session" in browser.cookies
            await browser.refresh_csrf()
            me = (await browser.get("/console/api/me")).json()
            assert (me["tenant"], me["role"], me["via"]) == ("ops", "admin", "key")

    run(scenario)


def test_acceptance_rates_by_tenant_and_language(tmp_path: Path, issuer: str) -> None:
    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer) as gw:
            alice, bob, root = Browser(gw), Browser(gw), Browser(gw)
            for browser, sub in ((alice, "alice"), (bob, "bob"), (root, "root")):
                await browser.sign_in_sso(sub)
            secret = (await alice.post("/console/api/keys", {"name": "ide"})).json()["secret"]
            auth = {"authorization": f"Bearer {secret}"}
            outcomes = ["accepted", "dismissed", "accepted", None]  # the last: shown only
            for outcome in outcomes:
                answer = await gw.call("POST", "/v1/code/completions", json_body={
                    "prefix": "def add(a, b):\n    return", "language": "python",
                    "max_tokens": 4}, headers=auth)  # fmt: skip
                assert answer.status == 200, answer.body
                completion_id = answer.json()["id"]
                for event in ("shown", outcome):
                    if event is None:
                        continue
                    reported = await gw.call("POST", "/v1/code/events", json_body={
                        "completion_id": completion_id, "event": event}, headers=auth)  # fmt: skip
                    assert reported.status == 200, reported.body
            expected = {"tenant": "team-a", "language": "python", "shown": 4, "accepted": 2,
                        "dismissed": 1, "acceptance_rate": 0.5}  # fmt: skip
            assert (await alice.get("/console/api/acceptance")).json()["data"] == [expected]
            assert (await root.get("/console/api/acceptance")).json()["data"] == [expected]
            assert (await bob.get("/console/api/acceptance")).json()["data"] == []
            reply = await bob.get("/console/api/acceptance?tenant=team-a")
            assert reply.status == 403 and reply.json()["error"]["code"] == "other_tenant"

    run(scenario)


def test_a_read_only_keys_file_is_a_clear_503(tmp_path: Path, issuer: str) -> None:
    """A keys file mounted from a Kubernetes Secret cannot be written: the
    console says so (it does not crash), and nothing half-written is left."""

    async def scenario() -> None:
        config = console_config(tmp_path, issuer)
        read_only = config.model_copy(
            update={
                "auth": config.auth.model_copy(update={"keys_file": "/proc/seed-serve/keys.yaml"})
            }
        )
        async with scripted_gateway(ScriptedEngine("s-0"), config=read_only) as gw:
            alice = Browser(gw)
            await alice.sign_in_sso("alice")
            reply = await alice.post("/console/api/keys", {"name": "laptop"})
            assert reply.status == 503, reply.body
            error = reply.json()["error"]
            assert (
                error["code"] == "keys_file_read_only"
                and "writable auth.keys_file" in error["message"]
            )

    run(scenario)


def test_console_actions_are_audited_with_the_user_and_never_a_secret(
    tmp_path: Path, issuer: str
) -> None:
    audit_file = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        async with console_gateway(tmp_path, issuer, audit={"file": str(audit_file)}) as gw:
            root = Browser(gw)
            await root.sign_in_sso("root")
            created = (await root.post("/console/api/keys", {"name": "ci"})).json()
            await root.post("/console/api/keys/revoke", {"id": created["key"]["id"]})
            await root.post("/console/logout")
            secret = created["secret"]
        lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
        actions = [(line["route"], line.get("console"), line.get("user"), line["status"]) for line in lines
                   if line.get("console")]  # fmt: skip
        assert actions == [
            ("/console/callback", "sign-in", "root@corp.example", 303),
            ("/console/api/keys", "key.create", "root@corp.example", 201),
            ("/console/api/keys/revoke", "key.revoke", "root@corp.example", 200),
            ("/console/logout", "sign-out", "root@corp.example", 200),
        ]
        targets = [
            line.get("target_key") for line in lines if line.get("console", "").startswith("key.")
        ]
        assert targets == [created["key"]["id"]] * 2
        assert all(line["tenant"] == "team-a" for line in lines if line.get("console"))
        assert secret not in audit_file.read_text()

    run(scenario)


def test_gateways_sharing_the_secret_share_sessions_and_sign_outs(
    tmp_path: Path, issuer: str
) -> None:
    secret_file = tmp_path / "session-secret"
    secret_file.write_text("x" * 48)

    async def scenario(redis_url: str) -> None:
        console = {"session_secret_file": str(secret_file), "sign_outs_redis_url": redis_url}
        async with (
            console_gateway(tmp_path / "a", issuer, console=console) as a,
            console_gateway(tmp_path / "b", issuer, console=console) as b,
        ):
            on_a = Browser(a)
            await on_a.sign_in_sso("alice")
            on_b = Browser(b)
            on_b.cookies = dict(on_a.cookies)  # the load balancer sent the next request to b
            assert (await on_b.get("/console/api/me")).json()["user"] == "alice@corp.example"
            stolen = dict(on_a.cookies)
            assert (await on_a.post("/console/logout")).status == 200
            on_b.cookies = stolen
            assert (await on_b.get("/console/api/me")).status == 401

    with redis_server(tmp_path) as (port, _):
        run(lambda: scenario(f"redis://127.0.0.1:{port}/0"))
