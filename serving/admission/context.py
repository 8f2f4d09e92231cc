"""What the gateway knows about one request, filled in as it goes (the audit
line and the metrics are written from it when the request ends)."""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from serving.admission.keys import Principal
from serving.config import LimitsConfig

# Routes -> task and lane (the admission queue's priority class).
ROUTE_TASKS: dict[str, tuple[str, str]] = {
    "/v1/completions": ("completion", "completion"),
    "/v1/chat/completions": ("chat", "completion"),
    "/v1/code/completions": ("code_completion", "completion"),
    "/v1/code/repairs": ("repair", "repair"),
    "/v1/code/tests": ("tests", "tests"),
}


@dataclass
class RequestContext:
    request_id: str
    route: str
    method: str
    client_ip: str
    task: str = "other"
    lane: str = "completion"
    started: float = field(default_factory=time.monotonic)
    principal: Principal | None = None
    model: str | None = None
    replica: str | None = None
    document: str | None = None
    session: str | None = None
    affinity_text: str | None = None  # the prompt's start, when no document id is given
    status: int = 0
    outcome: str = "ok"  # ok, error, rejected, cancelled, superseded
    error_code: str | None = None
    first_byte: float | None = None
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    queue_wait_s: float | None = None
    prompt_text: str | None = None
    completion_text: str | None = None
    response_id: str | None = None  # the answer's id (suggestion events refer to it)
    language: str | None = None
    caps: LimitsConfig | None = None  # the key's per-request caps, looked up once
    audit_extra: dict[str, Any] = field(default_factory=dict)
    on_finish: list[Callable[[RequestContext], None]] = field(default_factory=list)

    @property
    def key_id(self) -> str | None:
        return self.principal.key.id if self.principal else None

    @property
    def tenant(self) -> str | None:
        return self.principal.tenant_name if self.principal else None

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


def context_of(scope: MutableMapping[str, Any]) -> RequestContext:
    context = scope.get("state", {}).get("ctx")
    if not isinstance(context, RequestContext):
        raise RuntimeError("request context missing: GatewayMiddleware is not installed")
    return context
