"""What the gateway knows about one request, filled in as it goes through the
layers (the front door, a protocol, a task, admission, dispatch); the audit
line, the access log and the metrics are written from it when the request ends.

A leaf: every layer may read and fill it, and it imports nothing above config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from serving.config import LimitsConfig


@dataclass
class RequestContext:
    request_id: str
    route: str
    method: str
    client_ip: str
    task: str = "other"
    lane: str = "completion"
    started: float = field(default_factory=time.monotonic)
    key_id: str | None = None  # the caller's API key (None: auth off)
    tenant: str | None = None
    user: str | None = None  # the key's owner (or name), the token's or session's user
    role: str | None = None  # user or admin
    console_sid: str | None = None  # the console session's id (console routes)
    scheme: str = "http"
    # The request's headers, lower-cased names (the console reads its cookies).
    headers: dict[bytes, bytes] = field(default_factory=dict)
    model: str | None = None
    replica: str | None = None
    document: str | None = None
    session: str | None = None
    affinity_text: str | None = None  # the prompt's start, when no document id is given
    status: int = 0
    outcome: str = "ok"  # ok, error, rejected, cancelled, superseded
    error_code: str | None = None
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # An answer cut short has no usage from its engine: what the engine was
    # last asked to read (its payload's prompt or messages), the events relayed
    # to the client, and whether the counts above are the gateway's estimate.
    sent_prompt: Any = None
    relayed_events: int = 0
    usage_estimated: bool = False
    finish_reason: str | None = None
    queue_wait_s: float | None = None
    prompt_text: str | None = None
    completion_text: str | None = None
    response_id: str | None = None  # the answer's id (suggestion events refer to it)
    language: str | None = None
    caps: LimitsConfig | None = None  # the key's per-request caps (None: no key, none)
    default_adapter: str | None = None  # the tenant's team adapter for its base model
    adapter: str | None = None  # the team adapter serving this request (resolved)
    adapter_path: str | None = None
    keep_training_data: bool = False  # the tenant collects accepted suggestions
    # What the model saw (prefix, suffix, path), kept only when keep_training_data.
    training_context: dict[str, Any] | None = None
    audit_extra: dict[str, Any] = field(default_factory=dict)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
