"""Console sessions: who signed in to the web console, in a signed cookie.

A session is a small JSON record (session id, user, tenant, role, expiry)
signed with HMAC-SHA256 under the console's secret: every gateway sharing the
secret (``console.session_secret_file``) accepts it, no session store needed.
Each sign-in makes a new session id (a cookie planted before sign-in is never
promoted: no fixation); sign-out revokes the id on this gateway until it would
have expired. The CSRF token of a session is derived from its id and the
secret, so a page must have read it from the session's own answer
(``GET /console/api/me``) to change anything.

The sign-in flow's own state (OAuth ``state``, PKCE verifier, nonce) travels
in a second signed cookie that lives for minutes, so the provider's redirect
may land on any gateway.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from serving.admission.keys import Principal, TenantRecord, person_principal
from serving.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError

logger = logging.getLogger("seed_serve.console")

Role = Literal["user", "admin"]
SESSION_COOKIE = "seed_serve_session"
LOGIN_COOKIE = "seed_serve_login"
LOGIN_TTL_S = 600


@dataclass(frozen=True)
class ConsoleSession:
    sid: str
    user: str
    tenant: str
    role: Role
    expires: float  # epoch seconds
    via: Literal["sso", "key"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and checks the console's cookies; revokes signed-out sessions."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        if len(secret) < 32:
            raise ValueError("the console's session secret must be at least 32 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def _sign(self, purpose: str, record: dict[str, Any]) -> str:
        body = _b64(json.dumps(record, separators=(",", ":")).encode())
        mac = hmac.new(self._secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def _open(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        expected = hmac.new(self._secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(mac), expected):
                return None
            record = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(record, dict) or float(record.get("exp", 0)) <= time.time():
            return None
        return record

    # ------------------------------------------------------------ sessions

    def new_session(
        self, *, user: str, tenant: str, role: Role, via: Literal["sso", "key"]
    ) -> tuple[ConsoleSession, str]:
        """A fresh session (a new id every sign-in) and its cookie value."""
        session = ConsoleSession(
            sid=secrets.token_urlsafe(18),
            user=user,
            tenant=tenant,
            role=role,
            expires=time.time() + self.ttl_s,
            via=via,
        )
        record = {
            "sid": session.sid, "user": user, "tenant": tenant, "role": role,
            "exp": session.expires, "via": via,
        }  # fmt: skip
        return session, self._sign("session", record)

    def session(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie carries, if it is genuine and unexpired (sign-outs:
        :class:`SignOuts`)."""
        record = self._open("session", cookie)
        if record is None:
            return None
        try:
            return ConsoleSession(
                sid=str(record["sid"]),
                user=str(record["user"]),
                tenant=str(record["tenant"]),
                role="admin" if record["role"] == "admin" else "user",
                expires=float(record["exp"]),
                via="sso" if record.get("via") == "sso" else "key",
            )
        except KeyError:
            return None

    def csrf_token(self, session: ConsoleSession) -> str:
        return _b64(hmac.new(self._secret, f"csrf.{session.sid}".encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: ConsoleSession, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token(session).encode()
        )

    # ------------------------------------------------------------ sign-in flow

    def login_cookie(self, state: str, verifier: str, nonce: str) -> str:
        record = {"state": state, "verifier": verifier, "nonce": nonce,
                  "exp": time.time() + LOGIN_TTL_S}  # fmt: skip
        return self._sign("login", record)

    def login_state(self, cookie: str | None) -> dict[str, Any] | None:
        return self._open("login", cookie)


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge


def cookie_header(
    name: str, value: str, *, max_age: int, secure: bool, path: str = "/console"
) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Lax (the provider's redirect back
    is a top-level GET), Secure unless configured off (plain-HTTP dev only)."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def read_cookie(header: bytes | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class SignOuts:
    """Sessions signed out before they expired: remembered here, and in Redis
    when gateways share it (then a sign-out on one is refused by all)."""

    PREFIX = "seed-serve:signed-out:"

    def __init__(self, redis_url: str | None = None) -> None:
        self._local: dict[str, float] = {}  # sid -> its expiry
        self._redis: Any = None
        if redis_url is not None:
            import redis.asyncio as redis

            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )

    async def sign_out(self, session: ConsoleSession) -> None:
        now = time.time()
        self._local = {sid: exp for sid, exp in self._local.items() if exp > now}
        self._local[session.sid] = session.expires
        if self._redis is not None:
            ttl = max(1, int(session.expires - now) + 1)
            await self._guarded(self._redis.set(self.PREFIX + session.sid, b"1", ex=ttl))

    async def signed_out(self, session: ConsoleSession) -> bool:
        if session.sid in self._local:
            return True
        if self._redis is None:
            return False
        return bool(await self._guarded(self._redis.exists(self.PREFIX + session.sid)))

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        """Redis away: the console refuses (a signed-out session must not pass)."""
        try:
            return await call
        except Exception as exc:
            logger.warning("sign-out store unreachable: %s", exc)
            raise ServiceUnavailableError(
                "The console cannot check sessions right now; try again shortly.",
                code="session_store_unavailable",
            ) from None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class ConsoleAuth:
    """The front door's check of a console request: a valid session cookie,
    and for anything but GET/HEAD the session's CSRF token and a same-origin
    Origin (when the browser sends one)."""

    def __init__(
        self,
        signer: SessionSigner,
        tenants: Callable[[str], TenantRecord],
        sign_outs: SignOuts | None = None,
    ) -> None:
        self.signer = signer
        self.tenants = tenants
        self.sign_outs = sign_outs or SignOuts()

    async def principal(
        self, headers: dict[bytes, bytes], method: str, scheme: str
    ) -> tuple[Principal, ConsoleSession]:
        session = self.signer.session(read_cookie(headers.get(b"cookie"), SESSION_COOKIE))
        if session is None or await self.sign_outs.signed_out(session):
            raise AuthenticationError(
                "Not signed in to the console (or the session ended): sign in again.",
                code="no_session",
            )
        if method not in ("GET", "HEAD"):
            origin = headers.get(b"origin")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin is not None and origin.decode("latin-1") not in (
                f"{scheme}://{host}",
                f"https://{host}",  # behind a TLS-terminating proxy
            ):
                raise PermissionDeniedError(
                    "Cross-site request refused (its Origin is not this console's).",
                    code="csrf_failed",
                )
            token = headers.get(b"x-csrf-token")
            if not self.signer.csrf_ok(session, token.decode("latin-1") if token else None):
                raise PermissionDeniedError(
                    "Missing or wrong CSRF token: reload the console and try again.",
                    code="csrf_failed",
                )
        principal = person_principal(
            subject=f"console\0{session.tenant}\0{session.user}",
            user=session.user,
            tenant=session.tenant,
            role=session.role,
            tenant_record=self.tenants(session.tenant),
            created=dt.datetime.fromtimestamp(session.expires - self.signer.ttl_s, dt.UTC),
            expires=dt.datetime.fromtimestamp(session.expires, dt.UTC),
            via="console",
        )
        return principal, session
