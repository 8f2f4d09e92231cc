"""Config of the gateway process: HTTP, code tasks, the sandbox."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serving.config._base import Strict


class GatewayConfig(Strict):
    """The OpenAI-compatible HTTP front door."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Listen address; loopback by default (0.0.0.0 exposes it to the network).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Listen port.")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body accepted (413 above).",
    )
    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` (choices) per request.")
    max_best_of: int = Field(default=8, ge=1, le=128, description="Largest `best_of` per request.")
    max_header_count: int = Field(
        default=64, ge=8, le=1024, description="Most request headers accepted (400 above)."
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest total header size (400 above).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics without a key on this internal port; null: /metrics on the "
        "main port, admin key required.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, description="Listen address of the metrics port."
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM: refuse new requests (503) and let in-flight ones finish this long.",
    )
    replica_refresh_interval_s: float = Field(
        default=0.5,
        gt=0.0,
        le=300.0,
        description="How often the gateway refreshes the replica list, and with it each engine's "
        "load as its replica last read it (a call to the controller, off the request path).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the gateway."
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one JSON object per line with the request id (for log collectors); "
        "text: plain lines for a terminal. Prompts and completions are never logged.",
    )


class ConsoleConfig(Strict):
    """The web console at /console: self-service keys, usage, the endpoint's state."""

    enabled: bool = Field(default=True, description="Serve the console at /console.")
    session_ttl_s: float = Field(
        default=8 * 3600, ge=60, le=7 * 86_400, description="How long a sign-in lasts."
    )
    session_secret_file: str | None = Field(
        default=None,
        description="A file with the secret (32+ bytes) that signs session cookies; gateways "
        "sharing it share sessions (null: a random secret per gateway process).",
    )
    cookie_secure: bool = Field(
        default=True,
        description="Mark cookies Secure (browsers send them over HTTPS and to localhost "
        "only); off only for plain-HTTP tests on other hosts.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The console's external base URL, for the sign-in redirect (null: the "
        "request's own scheme and Host).",
    )
    sign_outs_redis_url: str | None = Field(
        default=None,
        description="Redis that shares sign-outs between gateways, so a signed-out session is "
        "refused by all of them (null: by the gateway that signed it out; others accept the "
        "cookie until it expires).",
    )
    key_ttl_days: int | None = Field(
        default=90, ge=1, le=3650, description="Expiry of self-service keys (null: none)."
    )
    max_keys_per_user: int = Field(
        default=10, ge=1, le=1000, description="Active self-service keys a user may hold."
    )


class TelemetryConfig(Strict):
    """Suggestion feedback (POST /v1/code/events): which completions were shown,
    accepted or dismissed. Completion ids are remembered this long so that an
    IDE can report on them."""

    enabled: bool = Field(default=True, description="Accept suggestion events.")
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where completion ids live: memory (one gateway) or redis (several gateway "
        "replicas behind one load balancer: an event may reach another replica).",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for backend redis (redis://host:6379/0)."
    )
    ttl_s: float = Field(
        default=3600.0,
        ge=10.0,
        le=7 * 24 * 3600.0,
        description="How long after a completion its events are accepted.",
    )
    max_tracked: int = Field(
        default=200_000,
        ge=100,
        le=10_000_000,
        description="Most completion ids remembered in memory (the oldest are forgotten first).",
    )

    @model_validator(mode="after")
    def _redis_needs_url(self) -> TelemetryConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self


class TasksConfig(Strict):
    """The code tasks: completion, repair, test generation."""

    fim_prefix_share: float = Field(
        default=0.7,
        ge=0.1,
        le=0.95,
        description="Share of the prompt budget kept for the prefix when prefix + suffix "
        "+ max_tokens exceed the context (the suffix gets the rest).",
    )
    completion_max_tokens: int = Field(
        default=64, ge=1, le=4096, description="Default max_tokens of /v1/code/completions."
    )
    completion_max_tokens_limit: int = Field(
        default=512, ge=1, le=32768, description="Largest max_tokens /v1/code/completions accepts."
    )
    max_code_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest code (prefix + suffix, or code + test) a code task accepts (400 above).",
    )
    repair_candidates: int = Field(
        default=4, ge=1, le=16, description="Default number of repair candidates generated."
    )
    repair_max_tokens: int = Field(
        default=384, ge=16, le=8192, description="Tokens a repair candidate may take."
    )
    tests_candidates: int = Field(
        default=2, ge=1, le=16, description="Default number of test-file candidates generated."
    )
    tests_max_tokens: int = Field(
        default=512, ge=32, le=8192, description="Tokens a light test file may take (thorough: 2x)."
    )
    tests_regenerations: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Extra rounds when no candidate parses (bounded regeneration).",
    )
    max_candidates: int = Field(
        default=8, ge=1, le=32, description="Largest n_candidates a request may ask for."
    )


class SandboxConfig(Strict):
    """Where generated or user-supplied code runs (never in the gateway)."""

    isolation: Literal["auto", "bwrap", "unshare", "none"] = Field(
        default="auto",
        description="auto: bubblewrap, else unshare namespaces; `none` runs unisolated and "
        "needs allow_unisolated.",
    )
    bwrap: str = Field(
        default="bwrap",
        min_length=1,
        description="The bubblewrap program (name on PATH or absolute path).",
    )
    allow_unisolated: bool = Field(
        default=False,
        description="Allow running code without namespaces when no isolation is available "
        "(otherwise code tasks fail closed with 503).",
    )
    timeout_s: float = Field(default=20.0, gt=0, le=600, description="Wall-clock limit of one run.")
    cpu_seconds: int = Field(default=10, ge=1, le=600, description="CPU-time limit (RLIMIT_CPU).")
    memory_mb: int = Field(
        default=1024, ge=64, le=65536, description="Address-space limit (RLIMIT_AS) in MiB."
    )
    max_processes: int = Field(
        default=32, ge=1, le=4096, description="Process/thread limit inside the sandbox."
    )
    max_file_mb: int = Field(
        default=16, ge=1, le=4096, description="Largest file the code may write (RLIMIT_FSIZE)."
    )
    max_open_files: int = Field(
        default=64, ge=16, le=65536, description="Open-file limit (RLIMIT_NOFILE)."
    )
    max_output_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Output kept per stream."
    )
    concurrency: int = Field(
        default=2, ge=1, le=256, description="Sandbox runs at once per gateway process."
    )

    @model_validator(mode="after")
    def _none_needs_consent(self) -> SandboxConfig:
        if self.isolation == "none" and not self.allow_unisolated:
            raise ValueError("isolation `none` needs allow_unisolated: true")
        return self
