"""Console sessions in signed cookies: they expire, cannot be forged or
edited, end at sign-out, and each has its own CSRF token. Through the gateway
with a real identity provider: tests/api/test_console.py."""

from __future__ import annotations

import time

import pytest

from serving.admission.sessions import (
    SessionSigner,
    cookie_header,
    pkce_pair,
    read_cookie,
)


def test_a_session_lasts_its_ttl_and_no_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = SessionSigner(b"s" * 32, ttl_s=60)
    session, cookie = signer.new_session(user="ana", tenant="t", role="user", via="sso")
    assert signer.session(cookie) == session
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert signer.session(cookie) is None  # expired


def test_cookies_cannot_be_forged_edited_or_reused_after_sign_out() -> None:
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
    signer.revoke(session)
    assert signer.session(cookie) is None
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
