"""The company's identity provider, for real: a local OpenID Connect provider
(oidc-provider-mock, its own HTTP server) issues ID tokens through the
authorization-code flow; a gateway joined to the tiny stack accepts them as
bearer tokens from the `openai` SDK, maps their groups to tenants, counts
usage per user, and refuses misdirected and forged tokens with clear 401s.
Then a real browser (Debian's chromium, driven by Playwright) signs in to the
console through the provider, makes a key the SDK uses, sees that request on
the usage page, revokes the key, and the key is refused; an admin sees the
tenants and the endpoint. Its screenshots are the README's.
Every check the verifier makes, with keys the test holds (expiry, rotation):
tests/admission/test_jwt_auth.py; the console's security checks:
tests/api/test_console.py."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import openai
import pytest
from oidc_provider_mock import User, run_server_in_thread
from playwright.sync_api import Page, expect, sync_playwright

from serving.admission.keys import create_key
from tests.support.stack import TINY_MODEL, JoinedGateway, SeedServeProcess, admin_key

CLIENT_ID = "seed-serve"


@dataclass
class Provider:
    issuer: str

    def id_token(self, sub: str, *, client_id: str = CLIENT_ID) -> str:
        """An ID token for ``sub``, as a CLI's browser-less sign-in gets one:
        the provider's authorize form submitted, the code exchanged."""
        with httpx.Client(base_url=self.issuer, timeout=30) as client:
            redirect = "http://127.0.0.1:1/callback"
            params = {
                "client_id": client_id, "redirect_uri": redirect, "response_type": "code",
                "scope": "openid email", "state": "s", "nonce": "n",
            }  # fmt: skip
            answer = client.post("/oauth2/authorize", params=params, data={"sub": sub})
            assert answer.status_code == 302, answer.text
            code = parse_qs(urlparse(answer.headers["location"]).query)["code"][0]
            tokens = client.post(
                "/oauth2/token",
                auth=(client_id, "client-secret"),
                data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
            )
            assert tokens.status_code == 200, tokens.text
            return str(tokens.json()["id_token"])


@dataclass
class Sso:
    provider: Provider
    gateway: JoinedGateway
    admin: str


@pytest.fixture(scope="module")
def sso(tiny_stack: SeedServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    workdir = tmp_path_factory.mktemp("sso")
    keys_file = workdir / "keys.yaml"
    _, admin = create_key(keys_file, tenant="ops", name="root", role="admin")
    users = [
        User(sub="alice", claims={"email": "alice@corp.example", "groups": ["team-a"]}),
        User(sub="carol", claims={"email": "carol@corp.example", "groups": ["contractors"]}),
        User(sub="root", claims={"email": "root@corp.example", "groups": ["team-a", "platform"]}),
    ]
    client_secret = workdir / "client-secret"
    client_secret.write_text("console-secret\n")
    with run_server_in_thread(user_claims=users) as server:
        # The issuer is the host the provider is asked under: the same everywhere.
        provider = Provider(f"http://localhost:{server.server_port}")
        oidc = {
            "issuer": provider.issuer,
            "client_id": CLIENT_ID,
            "client_secret_file": str(client_secret),
            "tenants": [{"group": "team-a", "tenant": "team-a"}],
            "admin_groups": ["platform"],
        }
        gateway = JoinedGateway(
            tiny_stack,
            workdir / "gateway",
            {
                "auth": {"keys_file": str(keys_file), "oidc": oidc},
                "usage": {"flush_interval_s": 0.5},
            },
        )
        try:
            gateway.wait_ready(replicas=2, timeout_s=180)
            yield Sso(provider, gateway, admin)
        finally:
            gateway.stop()
            gateway.kill_tree()


def sdk(sso: Sso, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=sso.gateway.base_url + "/v1", api_key=token, max_retries=0)


def test_a_developers_id_token_works_from_the_openai_sdk_and_counts_as_theirs(sso: Sso) -> None:
    token = sso.provider.id_token("alice")
    answer = sdk(sso, token).completions.create(model=TINY_MODEL, prompt="def f(x):", max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    deadline = time.monotonic() + 30
    while True:
        usage = httpx.get(
            sso.gateway.base_url + "/v1/admin/usage",
            params={"tenant": "team-a"},
            headers={"Authorization": f"Bearer {sso.admin}"},
        )
        assert usage.status_code == 200, usage.text
        rows = [r for r in usage.json()["data"] if r["user"] == "alice@corp.example"]
        if rows:
            break
        assert time.monotonic() < deadline, usage.text
        time.sleep(0.5)
    assert rows[0]["task"] == "completion" and rows[0]["requests"] == 1
    assert rows[0]["completion_tokens"] == answer.usage.completion_tokens
    # A developer's token is not an admin's.
    refused = httpx.get(
        sso.gateway.base_url + "/v1/admin/usage", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_misdirected_and_forged_tokens_are_refused_with_a_reason(sso: Sso) -> None:
    def refusal(token: str) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk(sso, token).completions.create(model=TINY_MODEL, prompt="x", max_tokens=1)
        return caught.value

    real = sso.provider.id_token("alice")
    header, payload, signature = real.split(".")
    cases = {
        # Issued to another application of the same provider.
        "another audience": sso.provider.id_token("alice", client_id="wiki"),
        "alg 'none'": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        # A key the provider never published (or rotated away).
        "does not publish": f"{_b64({'alg': 'RS256', 'kid': 'gone'})}.{payload}.{signature}",
        # Claims changed after signing: another group.
        "signature does not verify": ".".join(
            (header, _b64({**_claims(payload), "groups": ["platform"]}), signature)
        ),
    }
    for reason, token in cases.items():
        error = refusal(token)
        assert error.status_code == 401, (reason, error)
        body = error.response.json()["error"]
        assert reason in body["message"] and body["code"] == "invalid_token", (reason, body)
        assert token not in error.response.text  # the token is never echoed
    # A valid token whose groups map to no tenant: known, but not let in.
    error = refusal(sso.provider.id_token("carol"))
    assert error.status_code == 403 and error.response.json()["error"]["code"] == "no_tenant"
    assert "auth.oidc.tenants" in error.response.json()["error"]["message"]
    # Tokens never reach the gateway's log.
    assert payload not in sso.gateway.log()


def _claims(payload: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# ------------------------------------------------------------------ the console


def _screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Into the test's folder, and into $SEED_SERVE_SCREENSHOTS when set (the
    README's pictures: `SEED_SERVE_SCREENSHOTS=docs/console make test`)."""
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    folder = os.environ.get("SEED_SERVE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", Path(folder) / f"{name}.png")


def _usage_of(sso: Sso, user: str) -> tuple[int, int]:
    """(requests, completion tokens) of ``user``'s completions today, from the admin API."""
    answer = httpx.get(
        sso.gateway.base_url + "/v1/admin/usage",
        params={"user": user},
        headers={"Authorization": f"Bearer {sso.admin}"},
    )
    assert answer.status_code == 200, answer.text
    rows = [r for r in answer.json()["data"] if r["task"] == "completion"]
    return sum(r["requests"] for r in rows), sum(r["completion_tokens"] for r in rows)


def _sign_in(page: Page, console: str, sub: str) -> None:
    page.goto(console)
    page.get_by_role("link", name="Sign in with your company account").click()
    page.locator("input[name=sub]").fill(sub)  # the provider's own sign-in form
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{console}*")
    expect(page.locator("#who")).to_contain_text(f"{sub}@corp.example")


def test_a_developer_signs_in_makes_a_key_sees_its_usage_and_revokes_it(
    sso: Sso, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make system-tools` installs it"
    console = sso.gateway.base_url + "/console"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
            page.goto(console)
            expect(page.locator("#page-sign-in")).to_be_visible()
            _screenshot(page, "sign-in", tmp_path)
            _sign_in(page, console, "alice")
            # A key, shown once.
            page.locator("#key-name").fill("laptop")
            page.get_by_role("button", name="Create key").click()
            expect(page.locator("#secret-box")).to_be_visible()
            secret = page.locator("#secret").text_content() or ""
            assert secret.startswith("sk-seed-")
            expect(page.locator("#keys-table tbody tr")).to_have_count(1)
            _screenshot(page, "keys", tmp_path)
            # The key from the openai SDK (alice's earlier requests add up with it).
            before = _usage_of(sso, "alice@corp.example")
            answer = sdk(sso, secret).completions.create(
                model=TINY_MODEL, prompt="def f(x):", max_tokens=3
            )
            assert answer.usage is not None
            # An IDE's completion at the cursor, shown and accepted.
            headers = {"Authorization": f"Bearer {secret}"}
            coded = httpx.post(
                sso.gateway.base_url + "/v1/code/completions",
                json={
                    "prefix": "def add(a, b):\n    return",
                    "language": "python",
                    "max_tokens": 4,
                },
                headers=headers,
            )
            assert coded.status_code == 200, coded.text
            for event in ("shown", "accepted"):
                reported = httpx.post(
                    sso.gateway.base_url + "/v1/code/events",
                    json={"completion_id": coded.json()["id"], "event": event},
                    headers=headers,
                )
                assert reported.status_code == 200, reported.text
            # The usage page shows that request (the gateway answers its own
            # unflushed counts too).
            page.get_by_role("link", name="Usage").click()
            row = page.locator("#usage-table tbody tr", has_text="alice@corp.example").filter(
                has=page.locator("td", has_text=re.compile("^completion$"))
            )
            expect(row).to_have_count(1)
            expect(row.locator("td").nth(4)).to_have_text(str(before[0] + 1))
            expect(row.locator("td").nth(6)).to_have_text(
                str(before[1] + answer.usage.completion_tokens)
            )
            accepted = page.locator("#acceptance-table tbody tr", has_text="python")
            expect(accepted).to_contain_text("team-a")
            expect(accepted.locator("td").nth(5)).to_have_text("100.0 %")
            _screenshot(page, "usage", tmp_path)
            # A name is data, never markup.
            page.get_by_role("link", name="My keys").click()
            hostile = '<img src=x onerror="window.__xss = 1">'
            page.locator("#key-name").fill(hostile)
            page.get_by_role("button", name="Create key").click()
            expect(page.locator("#keys-table tbody tr")).to_have_count(2)
            expect(page.locator("#keys-table td", has_text=hostile)).to_have_count(1)
            assert page.locator("#keys-table img").count() == 0
            assert page.evaluate("window.__xss") is None
            # Revoked: refused at once.
            page.locator("#keys-table tbody tr", has_text="laptop").get_by_role(
                "button", name="Revoke"
            ).click()
            expect(page.locator("#keys-table tbody tr", has_text="laptop")).to_contain_text(
                "revoked"
            )
            with pytest.raises(openai.AuthenticationError):
                sdk(sso, secret).completions.create(model=TINY_MODEL, prompt="x", max_tokens=1)
            # A developer has no admin pages.
            expect(page.get_by_role("link", name="Tenants")).to_be_hidden()
            page.get_by_role("button", name="Sign out").click()
            expect(page.locator("#page-sign-in")).to_be_visible()

            admin = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
            _sign_in(admin, console, "root")
            admin.get_by_role("link", name="Tenants").click()
            expect(admin.locator("#tenants h3", has_text="team-a")).to_be_visible()
            expect(admin.locator("#tenants td", has_text=hostile)).to_have_count(1)
            _screenshot(admin, "tenants", tmp_path)
            admin.get_by_role("link", name="Endpoint").click()
            expect(admin.locator("#routing")).to_have_text("prefix_affinity")
            expect(admin.locator("#replicas-table tbody tr")).to_have_count(2)
            _screenshot(admin, "endpoint", tmp_path)
        finally:
            browser.close()


def test_without_sso_an_admin_key_signs_in_to_the_console(
    tiny_stack: SeedServeProcess, tmp_path: Path
) -> None:
    """The embedded default (no identity provider): the tiny stack's own
    gateway, an admin key typed into the console's sign-in form."""
    admin = admin_key(tiny_stack)
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make system-tools` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(tiny_stack.base_url + "/console")
            expect(page.locator("#page-sign-in")).to_be_visible()
            expect(page.locator("#sso-sign-in")).to_be_hidden()  # no provider configured
            page.locator("#admin-key").fill(tiny_stack.api_key)  # a developer's key: refused
            page.get_by_role("button", name="Sign in with an admin key").click()
            expect(page.locator("#notice")).to_contain_text("Only an admin key signs in")
            page.locator("#admin-key").fill(admin)
            page.get_by_role("button", name="Sign in with an admin key").click()
            expect(page.locator("#who")).to_contain_text("admin")
            page.get_by_role("link", name="Endpoint").click()
            expect(page.locator("#replicas-table tbody tr")).to_have_count(2)
        finally:
            browser.close()
