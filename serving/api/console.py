"""The web console at /console, served by the gateway itself: sign-in (the
company's SSO, or an admin key where there is none), a developer's own API
keys, usage, and for admins the tenants' keys and limits and the endpoint's
state. The page is static (serving/data/console); everything it shows comes
from the JSON routes here, which the front door lets in by session cookie and
CSRF token (serving.admission.sessions).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from serving.admission.auth import Authenticator
from serving.admission.jwt_auth import OidcSignIn
from serving.admission.keys import (
    KeyRecord,
    KeysFile,
    TenantRecord,
    create_key,
    load_keys_file,
    revoke_key,
    rotate_key,
)
from serving.admission.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SessionSigner,
    SignOuts,
    cookie_header,
    pkce_pair,
    read_cookie,
)
from serving.api.responses import BodyAnswer, json_answer
from serving.api.usage import UsageParams, recorder_of
from serving.config import ConsoleConfig
from serving.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from serving.observability.usage import SUGGESTIONS, UsageQuery, UsageRecorder
from serving.request_context import RequestContext

T = TypeVar("T")

# No inline script or style, nothing from elsewhere, never framed.
_SECURITY_HEADERS = [
    ("content-security-policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]  # fmt: skip
_ASSETS = {
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
}


class CallbackParams(BaseModel):
    """What the identity provider sends back (or its error)."""

    model_config = ConfigDict(extra="ignore")

    code: str | None = Field(default=None, max_length=4096)
    state: str | None = Field(default=None, max_length=512)
    error: str | None = Field(default=None, max_length=256)


class KeySignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(min_length=1, max_length=256, description="An admin API key.")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128, description="What the key is for.")


class KeyRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=r"^[a-f0-9]{12}$", description="The key's id.")


class TenantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


def _scoped(params: UsageParams, ctx: RequestContext, *, per_user: bool) -> UsageQuery:
    """The records a caller may read: an admin's as asked; a developer's only
    their tenant's (and, ``per_user``, only their own), asking for others' a 403."""
    if ctx.role != "admin":
        mine = {"tenant": ctx.tenant, **({"user": ctx.user} if per_user else {})}
        if any(getattr(params, field) not in (None, value) for field, value in mine.items()):
            raise PermissionDeniedError(
                "Another tenant's or user's records are for admins.", code="other_tenant"
            )
        params = params.model_copy(update=mine)
    return params.query(dt.datetime.now(dt.UTC).date())


def _key_view(record: KeyRecord, now: dt.datetime) -> dict[str, Any]:
    """A key as the console shows it (never its digest)."""
    state = "revoked" if record.revoked else ("expired" if record.expired(now) else "active")
    return {
        "id": record.id,
        "name": record.name,
        "tenant": record.tenant,
        "owner": record.owner,
        "role": record.role,
        "state": state,
        "created": record.created.isoformat(),
        "expires": record.expires.isoformat() if record.expires else None,
    }


class ConsoleServing:
    def __init__(
        self,
        config: ConsoleConfig,
        signer: SessionSigner,
        auth: Authenticator,
        *,
        keys_file: Path,
        sign_in: OidcSignIn | None,
        usage: UsageRecorder | None,
        sign_outs: SignOuts,
    ) -> None:
        self.config = config
        self.signer = signer
        self.sign_outs = sign_outs
        self.auth = auth
        self.keys_file = keys_file
        self.sign_in = sign_in
        self.usage = usage
        folder = resources.files("serving") / "data" / "console"
        page = (folder / "index.html").read_text(encoding="utf-8")
        self._page = page.replace("{{sso}}", "1" if sign_in is not None else "0").encode()
        self._assets = {name: (folder / name).read_bytes() for name in _ASSETS}

    # ------------------------------------------------------------ the page

    async def page(self, ctx: RequestContext) -> BodyAnswer:
        return BodyAnswer(
            self._page, content_type=b"text/html; charset=utf-8", headers=_SECURITY_HEADERS
        )

    async def script(self, ctx: RequestContext) -> BodyAnswer:
        return self._asset("console.js")

    async def style(self, ctx: RequestContext) -> BodyAnswer:
        return self._asset("console.css")

    def _asset(self, name: str) -> BodyAnswer:
        return BodyAnswer(self._assets[name], content_type=_ASSETS[name], headers=_SECURITY_HEADERS)

    # ------------------------------------------------------------ sign-in

    def _base_url(self, ctx: RequestContext) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = ctx.headers.get(b"host", b"localhost").decode("latin-1")
        return f"{ctx.scheme}://{host}"

    def _redirect(self, location: str, cookies: list[str]) -> BodyAnswer:
        headers = [("location", location), *_SECURITY_HEADERS]
        headers += [("set-cookie", cookie) for cookie in cookies]
        return BodyAnswer(b"", status=303, content_type=None, headers=headers)

    def _cookie(self, name: str, value: str, max_age: int) -> str:
        return cookie_header(name, value, max_age=max_age, secure=self.config.cookie_secure)

    async def login(self, ctx: RequestContext) -> BodyAnswer:
        """GET /console/login: off to the identity provider (PKCE S256, state, nonce)."""
        if self.sign_in is None:
            return self._redirect("/console?error=no_sso", [])
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        try:
            location = await self.sign_in.authorize_url(
                redirect_uri=self._base_url(ctx) + "/console/callback",
                state=state,
                challenge=challenge,
                nonce=nonce,
            )
        except APIError:
            return self._redirect("/console?error=idp_unavailable", [])
        cookie = self._cookie(LOGIN_COOKIE, self.signer.login_cookie(state, verifier, nonce), 600)
        return self._redirect(location, [cookie])

    async def callback(self, params: CallbackParams, ctx: RequestContext) -> BodyAnswer:
        """GET /console/callback: the provider's answer; a new session on success."""
        clear_login = self._cookie(LOGIN_COOKIE, "", 0)
        pending = self.signer.login_state(read_cookie(ctx.headers.get(b"cookie"), LOGIN_COOKIE))
        if self.sign_in is None or params.error or not params.code or pending is None:
            return self._redirect("/console?error=sso_failed", [clear_login])
        if not secrets.compare_digest(str(pending["state"]), params.state or ""):
            return self._redirect("/console?error=sso_failed", [clear_login])
        try:
            user, tenant, role = await self.sign_in.finish(
                code=params.code,
                code_verifier=str(pending["verifier"]),
                nonce=str(pending["nonce"]),
                redirect_uri=self._base_url(ctx) + "/console/callback",
            )
        except PermissionDeniedError:
            return self._redirect("/console?error=no_tenant", [clear_login])
        except AuthenticationError:
            return self._redirect("/console?error=sso_failed", [clear_login])
        ctx.audit_extra["console"] = "sign-in"
        ctx.user, ctx.tenant, ctx.role = user, tenant, role
        _, cookie = self.signer.new_session(user=user, tenant=tenant, role=role, via="sso")
        session_cookie = self._cookie(SESSION_COOKIE, cookie, int(self.signer.ttl_s))
        return self._redirect("/console", [clear_login, session_cookie])

    async def key_login(self, request: KeySignIn, ctx: RequestContext) -> BodyAnswer:
        """POST /console/login/key: an admin key signs in (the embedded default
        has no identity provider). The console sends a header a cross-site
        form cannot, so a forged sign-in cannot plant a session."""
        if ctx.headers.get(b"x-seed-serve-console") != b"1":
            raise PermissionDeniedError("Sign in from the console page.", code="csrf_failed")
        principal = self.auth.store.authenticate(request.key)
        if principal is None:
            raise AuthenticationError(
                "Incorrect, expired or revoked API key.", code="invalid_api_key"
            )
        if principal.key.role != "admin":
            raise PermissionDeniedError(
                "Only an admin key signs in to the console; developers sign in with SSO.",
                code="admin_only",
            )
        user = principal.user
        ctx.audit_extra["console"] = "sign-in"
        ctx.user, ctx.tenant, ctx.role = user, principal.tenant_name, "admin"
        ctx.key_id = principal.key.id
        _, cookie = self.signer.new_session(
            user=user, tenant=principal.tenant_name, role="admin", via="key"
        )
        return json_answer(
            {"signed_in": True},
            headers=[
                ("set-cookie", self._cookie(SESSION_COOKIE, cookie, int(self.signer.ttl_s))),
                *_SECURITY_HEADERS,
            ],
        )

    async def logout(self, ctx: RequestContext) -> BodyAnswer:
        """POST /console/logout: the session ends here and now."""
        session = self.signer.session(read_cookie(ctx.headers.get(b"cookie"), SESSION_COOKIE))
        if session is not None:
            await self.sign_outs.sign_out(session)
        ctx.audit_extra["console"] = "sign-out"
        return json_answer(
            {"signed_in": False},
            headers=[("set-cookie", self._cookie(SESSION_COOKIE, "", 0)), *_SECURITY_HEADERS],
        )

    async def me(self, ctx: RequestContext) -> BodyAnswer:
        session = self.signer.session(read_cookie(ctx.headers.get(b"cookie"), SESSION_COOKIE))
        assert session is not None  # the front door checked it
        return json_answer(
            {
                "user": session.user,
                "tenant": session.tenant,
                "role": session.role,
                "via": session.via,
                "expires": dt.datetime.fromtimestamp(session.expires, dt.UTC).isoformat(),
                "csrf_token": self.signer.csrf_token(session),
                "usage": self.usage is not None,
            },
            headers=_SECURITY_HEADERS,
        )

    # ------------------------------------------------------------ keys

    async def _keys(self) -> KeysFile:
        return await asyncio.to_thread(load_keys_file, self.keys_file)

    def _may_manage(self, record: KeyRecord, ctx: RequestContext) -> None:
        if ctx.role == "admin":
            return
        if record.tenant != ctx.tenant or record.owner != ctx.user:
            raise PermissionDeniedError(
                "This key belongs to someone else: you may manage your own keys only.",
                code="not_your_key",
            )

    async def list_keys(self, params: TenantParams, ctx: RequestContext) -> BodyAnswer:
        """GET /console/api/keys: mine; an admin's ?tenant=X: that tenant's."""
        if params.tenant is not None and ctx.role != "admin" and params.tenant != ctx.tenant:
            raise PermissionDeniedError(
                "Another tenant's keys are for its members and admins.", code="other_tenant"
            )
        keys = await self._keys()
        now = dt.datetime.now(dt.UTC)
        if params.tenant is not None and ctx.role == "admin":
            chosen = [k for k in keys.keys if k.tenant == params.tenant]
        else:
            chosen = [k for k in keys.keys if k.tenant == ctx.tenant and k.owner == ctx.user]
        return json_answer({"keys": [_key_view(k, now) for k in chosen]}, headers=_SECURITY_HEADERS)

    def _expiry(self) -> dt.datetime | None:
        days = self.config.key_ttl_days
        if days is None:
            return None
        return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=days)

    async def create_key(self, request: NewKey, ctx: RequestContext) -> BodyAnswer:
        """POST /console/api/keys: a key of my own, in my tenant with its
        limits; the secret is in this answer only."""
        assert ctx.tenant is not None and ctx.user is not None
        keys = await self._keys()
        now = dt.datetime.now(dt.UTC)
        mine = [
            k for k in keys.keys
            if k.tenant == ctx.tenant and k.owner == ctx.user and not k.revoked
            and not k.expired(now)
        ]  # fmt: skip
        if len(mine) >= self.config.max_keys_per_user:
            raise BadRequestError(
                f"You have {len(mine)} active keys, the most allowed "
                "(console.max_keys_per_user): revoke one first.",
                param="name",
                code="too_many_keys",
            )
        record, secret = await self._write(
            create_key,
            self.keys_file,
            tenant=ctx.tenant,
            name=request.name,
            owner=ctx.user,
            expires=self._expiry(),
        )
        await self._reload()
        ctx.audit_extra.update(console="key.create", target_key=record.id)
        return json_answer(
            {"key": _key_view(record, now), "secret": secret},
            status=201,
            headers=_SECURITY_HEADERS,
        )

    async def _write(self, edit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """An edit of the keys file, off the event loop; a file that cannot be
        written (a read-only mount) is a clear 503, not a crash."""
        try:
            return await asyncio.to_thread(edit, *args, **kwargs)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"The keys file cannot be written ({exc.strerror}): self-service keys need a "
                "writable auth.keys_file (a Kubernetes Secret mount is read-only).",
                code="keys_file_read_only",
            ) from None

    async def _reload(self) -> None:
        """This gateway takes the change at once (others at their next check)."""
        await asyncio.to_thread(self.auth.reload_if_changed)

    async def _record(self, key_id: str, ctx: RequestContext) -> KeyRecord:
        keys = await self._keys()
        record = next((k for k in keys.keys if k.id == key_id), None)
        if record is None:
            raise NotFoundError(f"No key with id {key_id}.", param="id")
        self._may_manage(record, ctx)
        return record

    async def rotate_key(self, request: KeyRef, ctx: RequestContext) -> BodyAnswer:
        """POST /console/api/keys/rotate: a new secret, the old key revoked."""
        record = await self._record(request.id, ctx)
        if record.revoked:
            raise BadRequestError("A revoked key cannot be rotated.", param="id")
        new, secret = await self._write(
            rotate_key, self.keys_file, record.id, expires=self._expiry()
        )
        await self._reload()
        ctx.audit_extra.update(console="key.rotate", target_key=record.id, new_key=new.id)
        now = dt.datetime.now(dt.UTC)
        return json_answer(
            {"key": _key_view(new, now), "secret": secret, "revoked": record.id},
            headers=_SECURITY_HEADERS,
        )

    async def revoke_key(self, request: KeyRef, ctx: RequestContext) -> BodyAnswer:
        """POST /console/api/keys/revoke: refused by every gateway at its next
        keys-file check (auth.reload_interval_s)."""
        record = await self._record(request.id, ctx)
        revoked = await self._write(revoke_key, self.keys_file, record.id)
        await self._reload()
        ctx.audit_extra.update(console="key.revoke", target_key=record.id)
        return json_answer(
            {"key": _key_view(revoked, dt.datetime.now(dt.UTC))}, headers=_SECURITY_HEADERS
        )

    # ------------------------------------------------------------ usage, tenants

    async def usage_view(self, params: UsageParams, ctx: RequestContext) -> BodyAnswer:
        """GET /console/api/usage: mine; an admin's: everyone's (filters apply)."""
        recorder = recorder_of(self.usage)
        query = _scoped(params, ctx, per_user=True)
        rows = await recorder.query(query)
        return json_answer(
            {"since": query.since.isoformat(), "until": query.until.isoformat(), "data": rows},
            headers=_SECURITY_HEADERS,
        )

    async def acceptance(self, params: UsageParams, ctx: RequestContext) -> BodyAnswer:
        """GET /console/api/acceptance: suggestions shown, accepted, dismissed
        and the acceptance rate per tenant and language (developers: their
        tenant's; admins: every tenant's)."""
        recorder = recorder_of(self.usage)
        query = _scoped(params.model_copy(update={"user": None}), ctx, per_user=False)
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for row in await recorder.query(query, SUGGESTIONS):
            total = totals.setdefault(
                (row["tenant"], row["language"]), dict.fromkeys(SUGGESTIONS.counters, 0)
            )
            for counter in SUGGESTIONS.counters:
                total[counter] += row[counter]
        listing = [
            {
                "tenant": tenant,
                "language": language,
                **counts,
                # Of the suggestions an IDE showed, the share accepted.
                "acceptance_rate": round(counts["accepted"] / counts["shown"], 4)
                if counts["shown"]
                else None,
            }
            for (tenant, language), counts in sorted(totals.items())
        ]
        return json_answer(
            {"since": query.since.isoformat(), "until": query.until.isoformat(), "data": listing},
            headers=_SECURITY_HEADERS,
        )

    async def tenants(self, ctx: RequestContext) -> BodyAnswer:
        """GET /console/api/tenants (admins): each tenant's limits and keys."""
        keys = await self._keys()
        now = dt.datetime.now(dt.UTC)
        names = sorted(set(keys.tenants) | {k.tenant for k in keys.keys})
        listing = [
            {
                "name": name,
                "limits": {
                    field: value
                    for field, value in (keys.tenants.get(name) or TenantRecord())
                    .model_dump(exclude_none=True)
                    .items()
                    if value != []
                },
                "keys": [_key_view(k, now) for k in keys.keys if k.tenant == name],
            }
            for name in names
        ]
        return json_answer({"tenants": listing}, headers=_SECURITY_HEADERS)
