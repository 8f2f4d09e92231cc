"""Console sessions in signed cookies: they expire, cannot be forged or
edited, end at sign-out, and each has its own CSRF token. Through the gateway
with a real identity provider: tests/api/test_console.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from serving.admission.sessions import (
    SessionSigner,
    SignOuts,
    cookie_header,
    pkce_pair,
    read_cookie,
)
from serving.errors import ServiceUnavailableError
from tests.support.redis_server import redis_server


def test_a_session_lasts_its_ttl_and_no_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = SessionSigner(b"s" * 32, ttl_s=60)
    session, cookie = signer.new_session(user="ana", tenant="t", role="user", via="sso")
    assert signer.session(cookie) == session
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert signer.session(cookie) is None  # expired


def test_cookies_cannot_be_forged_or_edited() -> None:
    signer = SessionSigner(b"s" * 32, ttl_s=600)
    session, cookie = signer.new_session(user="ana", tenant="t", role="user", via="sso")
    other = SessionSigner(b"o" * 32, ttl_s=600)  # another deployment's secret
    _, foreign = other.new_session(user="ana", tenant="t", role="admin", via="sso")
    assert signer.session(foreign) is None
    body, mac = cookie.split(".")
    assert signer.session(f"{body[:-2]}xx.{mac}") is None
    assert signer.session("") is None and signer.session("a.b.c") is None
    # The sign-in flow's cookie is no session (a different purpose is signed).
    assert signer.session(signer.login_cookie("state", "verifier", "nonce")) is None
    # A new sign-in is a new id, with its own CSRF token.
    again, _ = signer.new_session(user="ana", tenant="t", role="user", via="sso")
    assert again.sid != session.sid
    assert signer.csrf_token(again) != signer.csrf_token(session)
    assert signer.csrf_ok(again, signer.csrf_token(again))
    assert not signer.csrf_ok(again, signer.csrf_token(session)) and not signer.csrf_ok(again, None)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SessionSigner(b"short", ttl_s=60)


def test_pkce_cookie_attributes_and_reading() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and len(challenge) == 43 and "=" not in challenge
    header = cookie_header("n", "v", max_age=60, secure=True)
    assert header == "n=v; Path=/console; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
    assert "Secure" not in cookie_header("n", "v", max_age=60, secure=False)
    assert read_cookie(b"a=1; n=v; b=2", "n") == "v" and read_cookie(None, "n") is None


def test_a_sign_out_is_refused_by_every_gateway_sharing_redis(tmp_path: Path) -> None:
    """Two gateways (two SignOuts) sharing the session secret and a real
    redis-server: a session signed out on one is refused by the other; without
    Redis, only by the one that signed it out."""

    async def scenario(port: int) -> None:
        signer = SessionSigner(b"s" * 32, ttl_s=600)
        session, _ = signer.new_session(user="ana", tenant="t", role="user", via="sso")
        url = f"redis://127.0.0.1:{port}/0"
        first, second, alone = SignOuts(url), SignOuts(url), SignOuts()
        assert not await second.signed_out(session)
        await first.sign_out(session)
        assert await first.signed_out(session) and await second.signed_out(session)
        assert not await alone.signed_out(session)
        other, _ = signer.new_session(user="ana", tenant="t", role="user", via="sso")
        assert not await second.signed_out(other)
        for sign_outs in (first, second):
            await sign_outs.close()
        # Redis away: a session cannot be vouched for, so it is refused (503), not let in.
        unreachable = SignOuts("redis://127.0.0.1:1/0")
        with pytest.raises(ServiceUnavailableError):
            await unreachable.signed_out(other)
        await unreachable.close()

    with redis_server(tmp_path) as (port, _):
        asyncio.run(scenario(port))
