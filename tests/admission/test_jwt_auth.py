"""Bearer JWTs of the identity provider: every check the verifier makes, with
keys this test holds (the provider's rotation and forged tokens need them).
The same against a real OIDC provider, through the gateway:
tests/e2e/tiny/test_sso.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from serving.admission.jwt_auth import JwtAuthenticator, looks_like_jwt
from serving.admission.keys import TenantRecord
from serving.config import OidcConfig
from serving.errors import AuthenticationError, PermissionDeniedError

ISSUER = "https://idp.example.com/realms/corp"
CONFIG = OidcConfig.model_validate(
    {
        "issuer": ISSUER,
        "client_id": "seed-serve",
        "tenants": [{"group": "team-a", "tenant": "a"}, {"group": "team-b", "tenant": "b"}],
        "admin_groups": ["platform"],
        "jwks_min_refetch_s": 30,
    }
)


class Provider:
    """The provider's discovery document and JWKS, and tokens it signs."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetched: list[str] = []
        self.down = False
        self.rotate()

    def rotate(self, *, keep_old: bool = False) -> str:
        kid = f"k{len(self.keys) + 1}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = {**(self.keys if keep_old else {}), kid: key}
        self.current = kid
        return kid

    async def fetch(self, url: str) -> Any:
        self.fetched.append(url)
        if self.down:
            raise OSError("connection refused")
        if url == ISSUER + "/.well-known/openid-configuration":
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}
        assert url == ISSUER + "/certs"
        return {
            "keys": [
                {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
                for kid, k in self.keys.items()
            ]
        }

    def token(
        self, *, kid: str | None = "current", headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER, "aud": "seed-serve", "sub": "u-1", "email": "alice@corp",
            "groups": ["team-a"], "iat": now, "exp": now + 300, **claims,
        }  # fmt: skip
        payload = {k: v for k, v in payload.items() if v is not None}
        key_id = self.current if kid == "current" else kid
        signer = self.keys[self.current if key_id not in self.keys else key_id]
        extra = {**({"kid": key_id} if key_id is not None else {}), **(headers or {})}
        return jwt.encode(payload, signer, algorithm="RS256", headers=extra)


def authenticator(provider: Provider, config: OidcConfig = CONFIG) -> JwtAuthenticator:
    tenants = {"a": TenantRecord(rpm=5)}
    return JwtAuthenticator(config, lambda t: tenants.get(t) or TenantRecord(), provider.fetch)


def refused(auth: JwtAuthenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(auth.authenticate(token))
    assert caught.value.status_code == 401
    return caught.value.message


def test_a_valid_token_is_a_principal_of_its_groups_tenant() -> None:
    provider = Provider()
    auth = authenticator(provider)
    token = provider.token()
    assert looks_like_jwt(token) and not looks_like_jwt("sk-seed-0123456789ab-x")
    principal = asyncio.run(auth.authenticate(token))
    assert (principal.tenant_name, principal.user, principal.key.role) == (
        "a",
        "alice@corp",
        "user",
    )
    assert principal.tenant.rpm == 5  # the tenant's limits from the keys file apply
    assert len(principal.key.id) == 12 and principal.key.sha256 == "0" * 64
    # Verified once: the second use is answered from the cache, no fetch.
    fetches = len(provider.fetched)
    assert asyncio.run(auth.authenticate(token)) is principal
    assert len(provider.fetched) == fetches == 2  # discovery + JWKS
    admin = asyncio.run(auth.authenticate(provider.token(groups=["team-b", "platform"])))
    assert (admin.tenant_name, admin.key.role) == ("b", "admin")
    # The same subject is the same "key" (its rate limits follow it across tokens).
    assert admin.key.id == principal.key.id


def test_forged_and_misdirected_tokens_are_refused_with_a_reason() -> None:
    provider = Provider()
    auth = authenticator(provider)
    now = int(time.time())
    real = provider.token()
    header, payload, _ = real.split(".")

    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    assert "alg 'none'" in refused(auth, unsigned)
    # HMAC "signed" with the provider's public key: the classic key-confusion forgery.
    public_pem = (
        provider.keys[provider.current]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = f"{b64({'alg': 'HS256', 'kid': provider.current})}.{payload}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert "alg 'HS256'" in refused(auth, forged)
    tampered = f"{header}.{b64({**jwt.decode(real, options={'verify_signature': False}), 'groups': ['platform', 'team-a']})}.{real.split('.')[2]}"
    assert "signature does not verify" in refused(auth, tampered)
    assert "another audience (aud must be one of: seed-serve)" in refused(
        auth, provider.token(aud="other-app")
    )
    assert "another issuer" in refused(auth, provider.token(iss="https://evil.example.com"))
    assert "expired" in refused(auth, provider.token(iat=now - 900, exp=now - 600))
    assert "not valid yet" in refused(auth, provider.token(nbf=now + 600))
    assert "lacks the claim 'exp'" in refused(auth, provider.token(exp=None))
    assert "not a JWT" in refused(auth, "eyJhbGciOi.not-base64!.x")
    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(auth.authenticate(provider.token(groups=["contractors"])))
    assert caught.value.code == "no_tenant" and caught.value.status_code == 403


def test_rotated_keys_are_fetched_and_unknown_kids_cannot_hammer_the_provider() -> None:
    provider = Provider()
    auth = authenticator(provider, CONFIG.model_copy(update={"jwks_min_refetch_s": 0}))
    asyncio.run(auth.authenticate(provider.token()))
    provider.rotate()  # the provider signs with a new key; the old one is gone
    principal = asyncio.run(auth.authenticate(provider.token(sub="u-2")))
    assert principal.key.owner == "alice@corp" and len(provider.fetched) == 4
    # A token signed by the removed key no longer passes.
    assert "does not publish" in refused(auth, provider.token(kid="k1", sub="u-3"))

    # With the default minimum between refetches, forged kids cost one fetch at most.
    provider = Provider()
    auth = authenticator(provider)
    asyncio.run(auth.authenticate(provider.token()))
    for n in range(5):
        assert "kid 'forged-" in refused(auth, provider.token(kid=f"forged-{n}", sub=f"x{n}"))
    assert len(provider.fetched) == 2


def test_a_token_without_kid_uses_the_only_key_and_an_unreachable_provider_is_a_clear_401() -> None:
    provider = Provider()
    auth = authenticator(provider)
    assert asyncio.run(auth.authenticate(provider.token(kid=None))).tenant_name == "a"
    provider.down = True
    fresh = authenticator(provider)
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(fresh.authenticate(provider.token(sub="u-9")))
    assert caught.value.code == "idp_unavailable"
