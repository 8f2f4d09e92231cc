"""Config of who gets in and how much: keys, allow-lists, audit, quotas, lanes."""

from __future__ import annotations

import ipaddress
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from serving.config._base import Strict
from serving.paths import seed_serve_home

# The admission queue's priority classes, highest first: every route names
# one (serving.api.routes), the queue serves them in this order.
Lane = Literal["completion", "repair", "tests"]
LANES: tuple[Lane, ...] = get_args(Lane)


def check_cidrs(values: list[str]) -> list[str]:
    """Each value an IP network (a CIDR, or a bare address)."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (CIDR)") from None
    return values


class TenantMapping(Strict):
    """Members of an identity-provider group belong to a tenant."""

    group: str = Field(min_length=1, max_length=256, description="A value of the groups claim.")
    tenant: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The tenant its members belong to."
    )


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256", "ES256"]


class OidcConfig(Strict):
    """The company's OpenID Connect identity provider: its signed JWTs are
    accepted as bearer tokens (CI jobs, service accounts), their groups mapped
    to tenants and roles."""

    issuer: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="The issuer URL; its /.well-known/openid-configuration names the JWKS.",
    )
    client_id: str = Field(min_length=1, description="This server's client id at the provider.")
    client_secret_file: str | None = Field(
        default=None,
        description="A file holding the client secret (a mounted Secret; never in the config).",
    )
    audiences: list[str] = Field(
        default_factory=list,
        description="Accepted `aud` values of bearer JWTs (empty: the client id).",
    )
    groups_claim: str = Field(
        default="groups", min_length=1, description="The claim listing the user's groups."
    )
    user_claims: list[str] = Field(
        default_factory=lambda: ["email", "preferred_username", "sub"],
        min_length=1,
        description="Claims naming the user, first present wins (usage is counted per user).",
    )
    tenants: list[TenantMapping] = Field(
        default_factory=list,
        description="Group to tenant, first match wins; a user in no mapped group is refused.",
    )
    admin_groups: list[str] = Field(
        default_factory=list, description="Members of these groups are admins."
    )
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=_default_algorithms,
        min_length=1,
        description="Signature algorithms accepted (never `none`, never HMAC).",
    )
    leeway_s: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat."
    )
    jwks_refresh_s: float = Field(
        default=3600.0, gt=0, le=86_400, description="How long fetched signing keys are kept."
    )
    jwks_min_refetch_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="A token signed by an unknown key refetches the keys (rotation), at most "
        "this often.",
    )

    def accepted_audiences(self) -> list[str]:
        return self.audiences or [self.client_id]


class AuthConfig(Strict):
    """API keys and network allow-lists."""

    enabled: bool = Field(
        default=True,
        description="Require an API key on every API route but /health and /ready (the "
        "console signs in on its own; gateway.metrics_port serves /metrics keyless).",
    )
    keys_file: str = Field(
        default_factory=lambda: str(seed_serve_home() / "keys.yaml"),
        min_length=1,
        description="The keys file (hashes only; `seed-serve keys` edits it; reloaded on change).",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, le=3600, description="How often the keys file is checked for changes."
    )
    demo_key_file: str | None = Field(
        default_factory=lambda: str(seed_serve_home() / "demo-key"),
        description="`seed-serve up` creates a key for tenant `demo` on first start and writes "
        "its secret here (mode 0600); null: never.",
    )
    allowed_cidrs: list[str] = Field(
        default_factory=list, description="Client networks allowed at all (empty: any)."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Proxies whose X-Forwarded-For is believed (empty: the header is ignored).",
    )
    oidc: OidcConfig | None = Field(
        default=None,
        description="The company's identity provider (null: API keys only).",
    )

    _check = field_validator("allowed_cidrs", "trusted_proxies")(check_cidrs)


class AuditConfig(Strict):
    """One JSON line per request, whatever its outcome."""

    file: str | None = Field(
        default_factory=lambda: str(seed_serve_home() / "audit" / "audit.jsonl"),
        description="Append-only audit log (null: none).",
    )
    stdout: bool = Field(default=False, description="Also write audit lines to standard output.")
    max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=4096, description="Rotate the file when it grows past this."
    )
    backup_count: int = Field(default=5, ge=0, le=1000, description="Rotated files kept.")
    prompts: Literal["off", "hash", "text"] = Field(
        default="off",
        description="Prompt/completion text in the log: off, a SHA-256 hash, or the text itself.",
    )


class UsageConfig(Strict):
    """Usage records for chargeback: requests, tokens, errors and 429s per day,
    tenant, user (the key's owner) and task."""

    enabled: bool = Field(default=True, description="Keep usage records.")
    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="sqlite: an embedded file (one gateway, or several on one host); redis: "
        "shared by gateways on several hosts (SQLite's locks are not safe on network volumes).",
    )
    sqlite_file: str = Field(
        default_factory=lambda: str(seed_serve_home() / "usage.sqlite3"),
        min_length=1,
        description="The SQLite file of backend sqlite.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL of backend redis (redis://host:6379/0)."
    )
    flush_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often counts kept in memory are added to the store (off the request "
        "path; what is not yet flushed is still answered by queries).",
    )
    retention_days: int = Field(default=400, ge=1, le=36_500, description="Days of records kept.")

    @model_validator(mode="after")
    def _redis_needs_url(self) -> UsageConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self


class LimitsConfig(Strict):
    """Default limits of every key and tenant that sets none itself."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=1, description="Tokens (prompt + completion) per minute."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight at once."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Largest max_tokens of a request."
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Largest prompt of a request, in tokens."
    )
    max_n: int | None = Field(default=None, ge=1, description="Largest n of a request.")


class QuotaConfig(Strict):
    """Where rate limits are counted."""

    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: this gateway process only; redis: shared by every gateway replica.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", min_length=1, description="Redis for shared limits."
    )
    redis_timeout_s: float = Field(
        default=0.25, gt=0, le=30, description="Per-call Redis timeout (it is on the request path)."
    )
    on_redis_failure: Literal["open", "closed"] = Field(
        default="open",
        description="When Redis cannot be reached: open (admit, log and count) or closed (503).",
    )
    key_defaults: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Limits of keys that set none."
    )
    tenant_defaults: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Limits of tenants that set none."
    )


class AdmissionConfig(Strict):
    """The gateway's admission queue: batching, lanes, fairness, supersession."""

    target_inflight_per_replica: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Requests each replica runs at once; more wait in the gateway's queue, where "
        "lanes and fairness order them.",
    )
    adaptive: bool = Field(
        default=True,
        description="Adapt each replica's in-flight target from its waiting count and KV usage.",
    )
    max_queue: int = Field(
        default=512, ge=0, le=1_000_000, description="Requests waiting at most (503 beyond)."
    )
    queue_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait in the queue before a 503."
    )
    lane_priority: dict[str, int] = Field(
        default_factory=lambda: {str(lane): rank for rank, lane in enumerate(LANES)},
        description="vLLM request priority of each lane (lower runs first).",
    )
    supersede: bool = Field(
        default=True,
        description="A new completion for the same document and key cancels the older one.",
    )
    stats_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each replica's in-flight target adapts to its engine's load "
        "(off the request path).",
    )

    @field_validator("lane_priority")
    @classmethod
    def _every_lane(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != set(LANES):
            raise ValueError(f"give exactly the lanes {', '.join(sorted(LANES))}")
        return value
