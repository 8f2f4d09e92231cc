"""Authentication and network allow-lists, with a keys file reloaded on change."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from serving.admission.jwt_auth import FetchJson, JwtAuthenticator, fetch_json, looks_like_jwt
from serving.admission.keys import KeysFile, KeyStore, Principal, TenantRecord, load_keys_file
from serving.background import Periodic
from serving.config import AuthConfig
from serving.errors import AuthenticationError, ConfigError, PermissionDeniedError
from serving.observability.metrics import GatewayMetrics

logger = logging.getLogger("seed_serve.auth")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def _in(address: str, networks: list[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class Authenticator:
    def __init__(
        self, config: AuthConfig, metrics: GatewayMetrics, *, fetch: FetchJson = fetch_json
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.path = Path(config.keys_file).expanduser()
        self._allowed = _networks(config.allowed_cidrs)
        self._proxies = _networks(config.trusted_proxies)
        self._tenant_networks: dict[str, list[IPNetwork]] = {}
        self._signature: tuple[int, int, int] | None = None
        self.store = KeyStore(load_keys_file(self.path) if config.enabled else KeysFile())
        self.jwt = (
            JwtAuthenticator(config.oidc, tenants=self.tenant_record, fetch=fetch)
            if config.oidc is not None
            else None
        )
        self._index_networks()
        self._signature = self._file_signature()
        self._watch = Periodic(
            "keys file check",
            self._check_file,
            config.reload_interval_s,
            logger=logger,
            first_at_once=False,
        )

    # ------------------------------------------------------------------ reload

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def tenant_record(self, tenant: str) -> TenantRecord:
        return self.store.file.tenants.get(tenant) or TenantRecord()

    def _index_networks(self) -> None:
        self._tenant_networks = {
            name: _networks(tenant.allowed_cidrs)
            for name, tenant in self.store.file.tenants.items()
        }

    def reload_if_changed(self) -> bool:
        """Swap in the keys file if it changed; a malformed file keeps the last good one."""
        signature = self._file_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            keys = load_keys_file(self.path)
        except ConfigError as exc:
            self.metrics.keys_reloads.labels(result="rejected").inc()
            logger.error(
                "keys file %s is malformed, keeping the previous keys: %s", self.path, exc.problem
            )
            return False
        self.store = KeyStore(keys)
        self._index_networks()
        self.metrics.keys_reloads.labels(result="ok").inc()
        logger.info("keys file reloaded: %d keys, %d tenants", len(keys.keys), len(keys.tenants))
        return True

    async def start(self) -> None:
        if self.config.enabled:
            self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    async def _check_file(self) -> None:
        # A stat (and rarely a small parse): cheap, but off the event loop anyway.
        await asyncio.to_thread(self.reload_if_changed)

    # ------------------------------------------------------------------ checks

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: X-Forwarded-For only when the peer is a trusted proxy."""
        if not forwarded_for or not _in(peer, self._proxies):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        # Walk from the nearest hop outwards past our own proxies.
        for hop in reversed(hops):
            if not _in(hop, self._proxies):
                return hop
        return hops[0] if hops else peer

    def check_network(self, client_ip: str) -> None:
        if self._allowed and not _in(client_ip, self._allowed):
            raise PermissionDeniedError(
                f"Requests from {client_ip} are not allowed by this server.", code="ip_not_allowed"
            )

    def authenticate(self, credential: str | None, client_ip: str) -> Principal:
        if not credential:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer sk-...'.",
                code="missing_api_key",
            )
        principal = self.store.authenticate(credential)
        if principal is None:
            raise AuthenticationError(
                "Incorrect, expired or revoked API key.", code="invalid_api_key"
            )
        self._check_principal_networks(principal, client_ip)
        return principal

    def takes_jwt(self, credential: str | None) -> bool:
        """Whether ``credential`` is for the identity provider's JWT check."""
        return self.jwt is not None and credential is not None and looks_like_jwt(credential)

    async def authenticate_jwt(self, token: str, client_ip: str) -> Principal:
        """A bearer JWT of the identity provider (auth.oidc), its tenant's
        allow-list applied like a key's."""
        assert self.jwt is not None
        principal = await self.jwt.authenticate(token)
        self._check_principal_networks(principal, client_ip)
        return principal

    def _check_principal_networks(self, principal: Principal, client_ip: str) -> None:
        networks = self._tenant_networks.get(principal.tenant_name, [])
        key_networks = _networks(principal.key.allowed_cidrs) if principal.key.allowed_cidrs else []
        for allowed in (networks, key_networks):
            if allowed and not _in(client_ip, allowed):
                raise PermissionDeniedError(
                    f"This key may not be used from {client_ip}.", code="ip_not_allowed"
                )

    @staticmethod
    def credential(headers: dict[bytes, bytes]) -> str | None:
        """The key from Authorization: Bearer, api-key or x-api-key."""
        authorization = headers.get(b"authorization")
        if authorization:
            scheme, _, value = authorization.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        for name in (b"api-key", b"x-api-key"):
            value_bytes = headers.get(name)
            if value_bytes:
                return value_bytes.decode("latin-1").strip()
        return None
