"""Rate limits per key and per tenant: token buckets and concurrency counters,
in process (one gateway) or in Redis (shared by every gateway replica).

Requests per minute: a bucket of ``rpm`` requests refilled continuously; a
request takes one. Tokens per minute: a bucket of ``tpm`` tokens; a request
is admitted while the bucket is above zero and its real usage (prompt +
completion) is taken when it ends, so the bucket may go below zero and the
next requests wait until it refills. Concurrency: a counter per key/tenant.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from serving.admission.keys import Principal
from serving.config import LimitsConfig, QuotaConfig
from serving.errors import RateLimitError, ServiceUnavailableError
from serving.observability.metrics import GatewayMetrics

logger = logging.getLogger("seed_serve.quotas")

_WINDOW_S = 60.0
_CONCURRENCY_TTL_S = 3600  # a crashed gateway's counts expire in Redis


@dataclass(frozen=True)
class Scope:
    kind: str  # "key" or "tenant"
    name: str
    limits: LimitsConfig

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


class QuotaStore(Protocol):
    async def take(self, bucket: str, capacity: int, amount: int) -> float:
        """Take ``amount`` if the bucket holds at least that; else return seconds to wait."""

    async def admit_tokens(self, bucket: str, capacity: int) -> float:
        """0 if the bucket is above zero; else seconds until it is."""

    async def charge(self, bucket: str, capacity: int, amount: int) -> None:
        """Take ``amount`` unconditionally (may go below zero)."""

    async def acquire(self, counter: str, limit: int) -> bool: ...

    async def release(self, counter: str) -> None: ...

    async def close(self) -> None: ...


class MemoryQuotaStore:
    """Buckets in this process (the embedded default)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # level, last update
        self._counters: dict[str, int] = {}

    def _level(self, bucket: str, capacity: int) -> float:
        now = time.monotonic()
        level, last = self._buckets.get(bucket, (float(capacity), now))
        level = min(float(capacity), level + (now - last) * capacity / _WINDOW_S)
        self._buckets[bucket] = (level, now)
        return level

    async def take(self, bucket: str, capacity: int, amount: int) -> float:
        level = self._level(bucket, capacity)
        if level >= amount:
            self._buckets[bucket] = (level - amount, self._buckets[bucket][1])
            return 0.0
        return (amount - level) * _WINDOW_S / capacity

    async def admit_tokens(self, bucket: str, capacity: int) -> float:
        level = self._level(bucket, capacity)
        return 0.0 if level > 0 else (1 - level) * _WINDOW_S / capacity

    async def charge(self, bucket: str, capacity: int, amount: int) -> None:
        level = self._level(bucket, capacity)
        self._buckets[bucket] = (level - amount, self._buckets[bucket][1])

    async def acquire(self, counter: str, limit: int) -> bool:
        current = self._counters.get(counter, 0)
        if current >= limit:
            return False
        self._counters[counter] = current + 1
        return True

    async def release(self, counter: str) -> None:
        self._counters[counter] = max(0, self._counters.get(counter, 0) - 1)

    async def close(self) -> None:
        return None


# One atomic script per operation: read the level, refill, decide, write.
_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local mode = ARGV[3]
local now = tonumber(redis.call('TIME')[1]) + tonumber(redis.call('TIME')[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
local level = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
level = math.min(capacity, level + (now - ts) * capacity / 60.0)
local wait = 0
if mode == 'take' then
  if level >= amount then level = level - amount else wait = (amount - level) * 60.0 / capacity end
elseif mode == 'admit' then
  if level <= 0 then wait = (1 - level) * 60.0 / capacity end
else
  level = level - amount
end
redis.call('HSET', KEYS[1], 'level', level, 'ts', now)
redis.call('EXPIRE', KEYS[1], 120)
return tostring(wait)
"""

_ACQUIRE_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class RedisQuotaStore:
    """Buckets in Redis, shared by every gateway that points at it."""

    def __init__(self, config: QuotaConfig) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            config.redis_url,
            socket_timeout=config.redis_timeout_s,
            socket_connect_timeout=config.redis_timeout_s,
            retry_on_timeout=False,
        )
        self._bucket = self._redis.register_script(_BUCKET_LUA)
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)

    async def take(self, bucket: str, capacity: int, amount: int) -> float:
        return float(await self._bucket(keys=[bucket], args=[capacity, amount, "take"]))

    async def admit_tokens(self, bucket: str, capacity: int) -> float:
        return float(await self._bucket(keys=[bucket], args=[capacity, 0, "admit"]))

    async def charge(self, bucket: str, capacity: int, amount: int) -> None:
        await self._bucket(keys=[bucket], args=[capacity, amount, "charge"])

    async def acquire(self, counter: str, limit: int) -> bool:
        return bool(await self._acquire(keys=[counter], args=[limit, _CONCURRENCY_TTL_S]))

    async def release(self, counter: str) -> None:
        await self._redis.decr(counter)

    async def close(self) -> None:
        await self._redis.aclose()


def _limited(retry_after: float, scope: Scope, what: str) -> RateLimitError:
    seconds = max(1, math.ceil(retry_after))
    return RateLimitError(
        f"Rate limit reached for {scope.label}: {what}. Retry in {seconds}s.",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


def _merged(own: LimitsConfig, defaults: LimitsConfig) -> LimitsConfig:
    """``own``'s limits, each unset one from ``defaults`` (both validated already)."""
    return LimitsConfig.model_construct(
        **{
            name: value
            if (value := getattr(own, name, None)) is not None
            else getattr(defaults, name)
            for name in LimitsConfig.model_fields
        }
    )


class Quotas:
    def __init__(
        self, config: QuotaConfig, metrics: GatewayMetrics, store: QuotaStore | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        if store is not None:
            self.store: QuotaStore = store
        elif config.backend == "redis":
            self.store = RedisQuotaStore(config)
        else:
            self.store = MemoryQuotaStore()
        self._store_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        # key id -> (its key record, its tenant record, their scopes, request caps)
        self._scopes: dict[str, tuple[object, object, list[Scope], LimitsConfig]] = {}
        if config.backend == "redis":
            import redis.exceptions

            self._store_errors += (redis.exceptions.RedisError,)

    def scopes(self, principal: Principal) -> list[Scope]:
        """The key's and the tenant's limits, each filled in from the defaults.

        Kept per key while its records are the same objects (a keys-file reload
        makes new ones): merged anew three times a request, they cost ~10% of
        the gateway's CPU per streamed request (1.65 -> 1.49 ms at 400 req/s,
        AMD EPYC, the peers benchmark's gateway; found with py-spy)."""
        return self._limits(principal)[0]

    def _limits(self, principal: Principal) -> tuple[list[Scope], LimitsConfig]:
        cached = self._scopes.get(principal.key.id)
        if cached is not None and cached[0] is principal.key and cached[1] is principal.tenant:
            return cached[2], cached[3]
        scopes = [
            Scope("key", principal.key.id, _merged(principal.key, self.config.key_defaults)),
            Scope(
                "tenant",
                principal.tenant_name,
                _merged(principal.tenant, self.config.tenant_defaults),
            ),
        ]
        caps: dict[str, int | None] = {}
        for field in ("max_tokens", "max_prompt_tokens", "max_n"):
            present = [v for v in (getattr(s.limits, field) for s in scopes) if v is not None]
            caps[field] = min(present) if present else None
        limits = LimitsConfig(**caps)
        self._scopes[principal.key.id] = (principal.key, principal.tenant, scopes, limits)
        return scopes, limits

    def _store_failed(self, exc: BaseException) -> None:
        self.metrics.quota_store_errors.labels(mode=self.config.on_redis_failure).inc()
        logger.warning(
            "quota store unreachable (%s): failing %s", exc, self.config.on_redis_failure
        )
        if self.config.on_redis_failure == "closed":
            raise ServiceUnavailableError(
                "Rate limits cannot be checked right now; retry shortly.",
                code="quota_store_unavailable",
                headers={"Retry-After": "5"},
            ) from None

    async def admit(self, principal: Principal) -> list[str]:
        """Check rpm/tpm and take a concurrency slot; return the slots to release."""
        taken: list[str] = []
        try:
            for scope in self.scopes(principal):
                limits = scope.limits
                prefix = f"seed-serve:{scope.kind}:{scope.name}"
                if limits.rpm:
                    wait = await self.store.take(f"{prefix}:rpm", limits.rpm, 1)
                    if wait > 0:
                        raise _limited(wait, scope, f"{limits.rpm} requests per minute")
                if limits.tpm:
                    wait = await self.store.admit_tokens(f"{prefix}:tpm", limits.tpm)
                    if wait > 0:
                        raise _limited(wait, scope, f"{limits.tpm} tokens per minute")
                if limits.max_concurrency:
                    counter = f"{prefix}:inflight"
                    if not await self.store.acquire(counter, limits.max_concurrency):
                        raise _limited(1, scope, f"{limits.max_concurrency} requests at once")
                    taken.append(counter)
        except RateLimitError:
            await self.release(taken)
            raise
        except self._store_errors as exc:
            await self.release(taken)
            self._store_failed(exc)
            return []
        return taken

    async def release(self, counters: list[str]) -> None:
        for counter in counters:
            try:
                await self.store.release(counter)
            except self._store_errors as exc:
                logger.warning("could not release %s: %s", counter, exc)

    async def charge(self, principal: Principal, tokens: int) -> None:
        if tokens <= 0:
            return
        try:
            for scope in self.scopes(principal):
                if scope.limits.tpm:
                    await self.store.charge(
                        f"seed-serve:{scope.kind}:{scope.name}:tpm", scope.limits.tpm, tokens
                    )
        except self._store_errors as exc:
            self.metrics.quota_store_errors.labels(mode=self.config.on_redis_failure).inc()
            logger.warning("could not charge %d tokens: %s", tokens, exc)

    def request_caps(self, principal: Principal) -> LimitsConfig:
        """The strictest per-request caps of key and tenant (kept with the scopes:
        validating them anew each request cost ~2% of the gateway's CPU, py-spy)."""
        return self._limits(principal)[1]

    async def close(self) -> None:
        await self.store.close()
