"""Config of routing, health, timeouts, draining and autoscaling."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from serving.config._base import Strict


class RoundRobinRouting(Strict):
    """Each ready replica in turn."""

    policy: Literal["round_robin"] = Field(description="Round-robin over ready replicas.")


class LeastLoadedRouting(Strict):
    """The replica with the least work: in flight + engine waiting + KV usage."""

    policy: Literal["least_loaded"] = Field(description="Least-loaded replica first.")
    kv_weight: float = Field(
        default=4.0, ge=0, le=1000, description="Weight of KV-cache usage (0-1) in the load score."
    )


class PrefixAffinityRouting(Strict):
    """Consistent hashing of the document (or the prompt's start), with a load bound."""

    policy: Literal["prefix_affinity"] = Field(
        description="Same document or prompt start -> same replica (its prefix cache hits)."
    )
    prefix_chars: int = Field(
        default=1024,
        ge=16,
        le=1_000_000,
        description="Characters of the prompt's start hashed when no document id is given.",
    )
    load_bound: float = Field(
        default=1.25,
        ge=1.0,
        le=10.0,
        description="A replica takes at most load_bound x the average load before a hot key "
        "spills to the next replica on the ring.",
    )
    virtual_nodes: int = Field(
        default=64, ge=1, le=4096, description="Points per replica on the hash ring."
    )


class SessionRouting(Strict):
    """Sticky sessions by header, else by API key."""

    policy: Literal["session"] = Field(description="Same session -> same replica.")
    header: str = Field(
        default="x-seed-serve-session",
        pattern=r"^[a-z0-9-]{1,64}$",
        description="Request header naming the session (falls back to the API key).",
    )
    load_bound: float = Field(
        default=1.5, ge=1.0, le=10.0, description="Load bound before a session spills over."
    )
    virtual_nodes: int = Field(default=64, ge=1, le=4096, description="Points per replica.")


class KvAwareRouting(Strict):
    """The replica whose KV cache holds the longest prefix of the prompt, as
    its engine reports it (vLLM's KV-cache events), with a load bound."""

    policy: Literal["kv_aware"] = Field(
        description="Longest cached prefix first (from the engines' KV-cache events); "
        "prefix_affinity while a replica's events are missing or nothing is cached."
    )
    load_bound: float = Field(
        default=1.25,
        ge=1.0,
        le=10.0,
        description="A replica takes at most load_bound x the average load; the longest "
        "cached prefix on a replica above it is passed over.",
    )
    prefix_chars: int = Field(
        default=1024,
        ge=16,
        le=1_000_000,
        description="prefix_affinity's fallback: characters of the prompt's start hashed "
        "when no document id is given.",
    )
    virtual_nodes: int = Field(
        default=64, ge=1, le=4096, description="prefix_affinity's fallback: points per replica."
    )
    max_blocks_per_replica: int = Field(
        default=262_144,
        ge=16,
        le=16_777_216,
        description="The index keeps at most this many cached blocks per replica (the "
        "oldest are forgotten first): bounds the gateway's memory if removals are missed.",
    )
    events_buffer_steps: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Engine steps of events each engine keeps to replay to a gateway that "
        "(re)connects (vLLM's kv-events buffer_steps).",
    )


RoutingConfig = Annotated[
    RoundRobinRouting
    | LeastLoadedRouting
    | PrefixAffinityRouting
    | SessionRouting
    | KvAwareRouting,
    Field(discriminator="policy"),
]


class HealthConfig(Strict):
    """Health checks of replicas (by the controller, off the request path)."""

    interval_s: float = Field(default=1.0, gt=0, le=300, description="Seconds between checks.")
    timeout_s: float = Field(
        default=2.0, gt=0, le=300, description="A check slower than this fails."
    )
    failure_threshold: int = Field(
        default=3, ge=1, le=100, description="Failed checks in a row that eject a replica."
    )
    success_threshold: int = Field(
        default=2, ge=1, le=100, description="Passed checks in a row that re-admit it."
    )


class TimeoutsConfig(Strict):
    """How long the gateway waits for an engine."""

    connect_s: float = Field(default=5.0, gt=0, le=600, description="To connect to an engine.")
    first_token_s: float = Field(
        default=60.0, gt=0, le=3600, description="From sending a request to its first token."
    )
    idle_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest gap between two tokens of a stream."
    )
    total_s: float = Field(default=600.0, gt=0, le=86_400, description="A whole request.")
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Other replicas tried when one fails before the first token (never after).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> TimeoutsConfig:
        if self.first_token_s > self.total_s:
            raise ValueError("first_token_s cannot exceed total_s")
        return self


class AutoscalingConfig(Strict):
    """Replica count from load, within bounds (per replica group)."""

    enabled: bool = Field(default=False, description="Scale this group by itself.")
    min_replicas: int = Field(default=1, ge=0, le=1024, description="Never fewer.")
    max_replicas: int = Field(default=4, ge=1, le=1024, description="Never more.")
    target_queue_per_replica: float = Field(
        default=8.0,
        gt=0,
        le=10_000,
        description="Requests (running + waiting, engines and gateway queues) per replica to aim for.",
    )
    scale_up_cooldown_s: float = Field(
        default=30.0, ge=0, le=86_400, description="Wait after a change before scaling up again."
    )
    scale_down_cooldown_s: float = Field(
        default=300.0, ge=0, le=86_400, description="Wait after a change before scaling down."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas cannot exceed max_replicas")
        return self
