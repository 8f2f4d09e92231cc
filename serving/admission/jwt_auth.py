"""Bearer JWTs from the company's identity provider (CI jobs, service
accounts): verified against the provider's published keys, mapped to a tenant
and role by their groups.

The keys come from the JWKS its discovery document names, kept for
``jwks_refresh_s``; a token signed by a key not among them refetches them (the
provider rotated), at most every ``jwks_min_refetch_s``, so a flood of forged
``kid`` values cannot hammer the provider. Signature, issuer, audience, expiry
and not-before are checked; ``alg: none`` and HMAC algorithms never pass
(an HMAC "signed" with the public key is the classic forgery). Every refusal
is a 401 whose message says what was wrong, never the token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import jwt

from serving.admission.keys import Principal, TenantRecord, person_principal
from serving.config import OidcConfig
from serving.errors import AuthenticationError, PermissionDeniedError

logger = logging.getLogger("seed_serve.auth")

FetchJson = Callable[[str], Awaitable[Any]]
_CACHE_MAX = 10_000  # verified tokens kept (CI jobs reuse theirs for minutes)
_FETCH_TIMEOUT_S = 10.0


def looks_like_jwt(credential: str) -> bool:
    """Three base64url parts (an API key has none of its dots)."""
    return credential.count(".") == 2 and credential.startswith("eyJ")


async def _json_over_http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> Any:
    """One request to the provider (GET, or POST with ``data``), its JSON
    answer; off the event loop (standard library TLS)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an HTTP(S) URL: {url!r}")
    request = urllib.request.Request(
        url, data=data, headers={"Accept": "application/json", **(headers or {})}
    )

    def send() -> Any:
        with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(send)


async def fetch_json(url: str) -> Any:
    """GET ``url`` as JSON."""
    return await _json_over_http(url)


def _refused(message: str) -> AuthenticationError:
    return AuthenticationError(message, code="invalid_token")


class SigningKeys:
    """The provider's signing keys, fetched through its discovery document."""

    def __init__(
        self, config: OidcConfig, fetch: FetchJson, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self.discovery: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key ``kid`` names (a token without a kid: the only key there is)."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self.config.jwks_refresh_s
        if stale or (kid not in self._keys and self._may_refetch(now)):
            await self._refresh(now)
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            found = next(iter(self._keys.values()))
        if found is None:
            named = f"kid {kid!r}" if kid is not None else "no kid, and the issuer has several keys"
            raise _refused(f"Bearer token signed by a key the issuer does not publish ({named}).")
        return found

    async def endpoint(self, name: str) -> str:
        """An endpoint the discovery document names (authorization_endpoint, ...)."""
        if not self.discovery:
            await self._refresh(self._clock())
        value = self.discovery.get(name)
        if not isinstance(value, str):
            raise AuthenticationError(
                f"The identity provider names no {name}.", code="idp_unavailable"
            )
        return value

    def _may_refetch(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.config.jwks_min_refetch_s

    async def _refresh(self, now: float) -> None:
        async with self._lock:
            if self._fetched_at is not None and self._fetched_at >= now:
                return  # another request refreshed them meanwhile
            try:
                discovery = await self._fetch(
                    self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                jwks = await self._fetch(str(discovery["jwks_uri"]))
                self.discovery = dict(discovery)
                keys: dict[str | None, jwt.PyJWK] = {}
                for entry in jwks.get("keys", []):
                    try:
                        key = jwt.PyJWK(entry)
                    except (jwt.PyJWKError, jwt.InvalidKeyError):
                        continue  # a key type or curve we do not use
                    keys[entry.get("kid")] = key
            except Exception as exc:
                logger.error("signing keys of %s unavailable: %s", self.config.issuer, exc)
                if not self._keys:
                    raise AuthenticationError(
                        "The identity provider's signing keys are unavailable; try again.",
                        code="idp_unavailable",
                    ) from None
                return  # keep the keys we had
            self._keys = keys
            self._fetched_at = self._clock()
            self.fetches += 1


class JwtAuthenticator:
    """Bearer JWT -> Principal (tenant and role from the groups claim)."""

    def __init__(
        self,
        config: OidcConfig,
        tenants: Callable[[str], TenantRecord],
        fetch: FetchJson = fetch_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tenants = tenants  # a tenant's record in the keys file (its limits)
        self.keys = SigningKeys(config, fetch)
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, token: str) -> Principal:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None and now < cached[0]:
            return cached[1]
        claims = await self.verify(token)
        principal = self._principal(claims)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (float(claims["exp"]) + self.config.leeway_s, principal)
        return principal

    async def verify(self, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
        """The token's claims, if it is valid; else AuthenticationError saying why."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _refused("Malformed bearer token: not a JWT.") from None
        algorithm = header.get("alg")
        if algorithm not in self.config.algorithms:
            raise _refused(
                f"Bearer token signed with alg {algorithm!r}, which this server does not "
                f"accept (allowed: {', '.join(self.config.algorithms)})."
            )
        key = await self.keys.key(header.get("kid"))
        audiences = audiences or self.config.accepted_audiences()
        try:
            return dict(
                jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[algorithm],
                    audience=audiences,
                    issuer=self.config.issuer,
                    leeway=self.config.leeway_s,
                    options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                )
            )
        except jwt.ExpiredSignatureError:
            raise _refused("Bearer token expired: get a new one from the provider.") from None
        except jwt.ImmatureSignatureError:
            raise _refused("Bearer token is not valid yet (nbf / iat in the future).") from None
        except jwt.InvalidAudienceError:
            raise _refused(
                f"Bearer token is for another audience (aud must be one of: {', '.join(audiences)})."
            ) from None
        except jwt.InvalidIssuerError:
            raise _refused(
                f"Bearer token is from another issuer (iss must be {self.config.issuer})."
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused(f"Bearer token lacks the claim {exc.claim!r}.") from None
        except jwt.InvalidSignatureError:
            raise _refused("Bearer token signature does not verify.") from None
        except jwt.InvalidTokenError as exc:
            raise _refused(f"Invalid bearer token: {exc}.") from None

    def identity(self, claims: dict[str, Any]) -> tuple[str, str, Literal["user", "admin"]]:
        """(user, tenant, role) of verified claims; 403 if no group maps to a tenant."""
        groups = claims.get(self.config.groups_claim) or []
        groups = {str(g) for g in ([groups] if isinstance(groups, str) else groups)}
        tenant = next((m.tenant for m in self.config.tenants if m.group in groups), None)
        if tenant is None:
            raise PermissionDeniedError(
                "None of your groups is mapped to a tenant of this server "
                f"(claim {self.config.groups_claim!r}; auth.oidc.tenants).",
                code="no_tenant",
            )
        user = next(
            (str(claims[c]) for c in self.config.user_claims if claims.get(c)), str(claims["sub"])
        )
        return user, tenant, "admin" if groups & set(self.config.admin_groups) else "user"

    def _principal(self, claims: dict[str, Any]) -> Principal:
        user, tenant, role = self.identity(claims)
        return person_principal(
            subject=f"{claims['iss']}\0{claims['sub']}",
            user=user,
            tenant=tenant,
            role=role,
            tenant_record=self.tenants(tenant),
            created=dt.datetime.fromtimestamp(float(claims["iat"]), dt.UTC),
            expires=dt.datetime.fromtimestamp(float(claims["exp"]), dt.UTC),
            via="sso",
        )


class OidcSignIn:
    """The console's sign-in: authorization code with PKCE (S256) and a nonce,
    the code exchanged with the client secret, the ID token verified."""

    def __init__(
        self,
        config: OidcConfig,
        verifier: JwtAuthenticator,
        post_form: PostForm | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self._post_form = post_form or post_form_json

    def client_secret(self) -> str:
        path = self.config.client_secret_file
        if not path:
            raise AuthenticationError(
                "SSO sign-in needs auth.oidc.client_secret_file.", code="sso_not_configured"
            )
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()

    async def authorize_url(
        self, *, redirect_uri: str, state: str, challenge: str, nonce: str
    ) -> str:
        endpoint = await self.verifier.keys.endpoint("authorization_endpoint")
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def finish(
        self, *, code: str, code_verifier: str, nonce: str, redirect_uri: str
    ) -> tuple[str, str, Literal["user", "admin"]]:
        """(user, tenant, role) of the person who signed in."""
        endpoint = await self.verifier.keys.endpoint("token_endpoint")
        try:
            tokens = await self._post_form(
                endpoint,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
                (self.config.client_id, self.client_secret()),
            )
        except Exception as exc:
            logger.error("SSO code exchange with %s failed: %s", endpoint, exc)
            raise AuthenticationError(
                "The identity provider did not accept the sign-in; sign in again.",
                code="sso_failed",
            ) from None
        id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
        if not isinstance(id_token, str):
            raise AuthenticationError("The identity provider sent no ID token.", code="sso_failed")
        claims = await self.verifier.verify(id_token, audiences=[self.config.client_id])
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise AuthenticationError("The sign-in's nonce does not match.", code="sso_failed")
        return self.verifier.identity(claims)


PostForm = Callable[[str, dict[str, str], tuple[str, str]], Awaitable[Any]]


async def post_form_json(url: str, form: dict[str, str], basic: tuple[str, str]) -> Any:
    """POST a form with HTTP Basic client authentication; the JSON answer."""
    user, password = (urllib.parse.quote(part, safe="") for part in basic)
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return await _json_over_http(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Basic {credentials}",
        },
    )
