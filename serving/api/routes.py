"""Every route of the gateway, declared once (see ``serving.api.route_table``
for what a declaration says).

Everything that needs to know about routes reads these: the gateway app
routes by them, the front door authenticates, meters and tracks by them, the
access log quiets probes by them, OpenAPI is generated from them, the 404
message lists them, and the metrics' ``task`` label takes their tasks. Adding
a route is adding one declaration here (and its serving call).
"""

from __future__ import annotations

from typing import Any

from serving.api.admin import (
    AdapterAddRequest,
    AdapterRemoveRequest,
    AdminServing,
    ScaleRequest,
)
from serving.api.code_protocol import (
    CodeCompletionRequest,
    CodeCompletionResponse,
    CodeRepairRequest,
    CodeRepairResponse,
    CodeTestsRequest,
    CodeTestsResponse,
    SuggestionEventRequest,
    SuggestionEventResponse,
)
from serving.api.code_serving import CodeServing
from serving.api.console import (
    CallbackParams,
    ConsoleServing,
    KeyRef,
    KeySignIn,
    NewKey,
    TenantParams,
)
from serving.api.dialects import LLAMA_CPP, OLLAMA, TABBY
from serving.api.llamacpp import LlamaCppServing
from serving.api.llamacpp_protocol import InfillRequest, LlamaCompletionRequest
from serving.api.ollama import OllamaServing
from serving.api.ollama_protocol import ChatRequest as OllamaChatRequest
from serving.api.ollama_protocol import (
    GenerateRequest,
    ShowRequest,
    ShowResponse,
    TagList,
    VersionResponse,
)
from serving.api.openai_serving import OpenAIServing
from serving.api.openapi import OpenAPIServing
from serving.api.protocol import ChatCompletionRequest, Completion, CompletionRequest, ModelList
from serving.api.route_table import Access, Route, ServeCall
from serving.api.status import StatusServing
from serving.api.suggestion_events import SuggestionEvents
from serving.api.tabby import (
    TabbyCompletionRequest,
    TabbyCompletionResponse,
    TabbyEvent,
    TabbyHealth,
    TabbyServerSetting,
    TabbyServing,
)
from serving.api.usage import UsageParams, UsageServing

_INVALID = (400, 401, 403, 404, 413, 429)
_MODEL_ERRORS = (*_INVALID, 500, 502, 503)

GATEWAY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", StatusServing.health, "The gateway process is alive.",
          access=Access.OPEN, quiet=True),
    Route("GET", "/ready", StatusServing.ready, "At least one replica can serve.",
          access=Access.OPEN, quiet=True, errors=(503,)),
    Route("GET", "/metrics", StatusServing.metrics,
          "Prometheus metrics (admin key on the main port; open on metrics_port).",
          access=Access.ADMIN, quiet=True, in_schema=False),
    Route("GET", "/metrics/engines", StatusServing.engine_metrics,
          "Every replica's own vLLM metrics, labelled `replica`.",
          access=Access.ADMIN, quiet=True, in_schema=False),
    Route("GET", "/openapi.json", OpenAPIServing.serve, "This API's OpenAPI document.",
          in_schema=False),
    Route("GET", "/v1/models", StatusServing.models, "The served models.",
          response=ModelList, errors=(401, 403)),
    Route("POST", "/v1/completions", OpenAIServing.completions,
          "Text completion; with `suffix`, fill-in-the-middle in the model's format.",
          request=CompletionRequest, response=Completion, task="completion",
          lane="completion", tracked=True, streams=True, errors=_MODEL_ERRORS),
    Route("POST", "/v1/chat/completions", OpenAIServing.chat, "Chat completion.",
          request=ChatCompletionRequest, task="chat", lane="completion",
          tracked=True, streams=True, errors=_MODEL_ERRORS),
    Route("POST", "/v1/code/completions", CodeServing.completion,
          "Completion at the cursor: FIM prompt, post-processed to the line/block.",
          request=CodeCompletionRequest, response=CodeCompletionResponse,
          task="code_completion", lane="completion", tracked=True, streams=True,
          errors=_MODEL_ERRORS),
    Route("POST", "/v1/code/repairs", CodeServing.repair,
          "Fix code given its error; candidates checked, verified against a test.",
          request=CodeRepairRequest, response=CodeRepairResponse, task="repair",
          lane="repair", tracked=True, errors=_MODEL_ERRORS),
    Route("POST", "/v1/code/tests", CodeServing.tests,
          "Unit tests for the code, run against it in the sandbox.",
          request=CodeTestsRequest, response=CodeTestsResponse, task="tests",
          lane="tests", tracked=True, errors=_MODEL_ERRORS),
    Route("POST", "/v1/code/events", SuggestionEvents.report,
          "Report that a completion was shown, accepted or dismissed (same key).",
          request=SuggestionEventRequest, response=SuggestionEventResponse,
          errors=(*_INVALID, 409)),
    # Ollama (Continue's `ollama` provider, Twinny, the `ollama` clients).
    Route("POST", "/api/generate", OllamaServing.generate,
          "Ollama: generate; with `suffix`, fill-in-the-middle (NDJSON unless `stream`: false).",
          request=GenerateRequest, task="code_completion", lane="completion", streams=True,
          errors=_MODEL_ERRORS, dialect=OLLAMA),
    Route("POST", "/api/chat", OllamaServing.chat, "Ollama: chat (NDJSON unless `stream`: false).",
          request=OllamaChatRequest, task="chat", lane="completion", streams=True,
          errors=_MODEL_ERRORS, dialect=OLLAMA),
    Route("GET", "/api/tags", OllamaServing.tags, "Ollama: the served models.",
          response=TagList, errors=(401, 403), dialect=OLLAMA),
    Route("POST", "/api/show", OllamaServing.show, "Ollama: one model's details and template.",
          request=ShowRequest, response=ShowResponse, errors=(400, 401, 403, 404),
          dialect=OLLAMA),
    Route("GET", "/api/version", OllamaServing.version,
          "Ollama: the Ollama API version this front follows.", response=VersionResponse,
          errors=(401, 403), dialect=OLLAMA),
    # llama.cpp server (llama.vscode, llama.vim); its /health is the gateway's.
    Route("POST", "/infill", LlamaCppServing.infill,
          "llama.cpp: fill-in-the-middle with `input_extra` context; `n_predict`: 0 fills the "
          "cache only.", request=InfillRequest, task="code_completion", lane="completion",
          streams=True, errors=_MODEL_ERRORS, dialect=LLAMA_CPP),
    Route("POST", "/completion", LlamaCppServing.completion,
          "llama.cpp: completion of a prompt sent as it is.", request=LlamaCompletionRequest,
          task="completion", lane="completion", streams=True, errors=_MODEL_ERRORS,
          dialect=LLAMA_CPP),
    Route("GET", "/props", LlamaCppServing.props, "llama.cpp: the server's settings.",
          errors=(401, 403), dialect=LLAMA_CPP),
    # Tabby (its agent: VS Code, JetBrains, Vim, Eclipse), under /tabby.
    Route("POST", "/tabby/v1/completions", TabbyServing.completions,
          "Tabby: completion at the cursor with declarations and snippets as context.",
          request=TabbyCompletionRequest, response=TabbyCompletionResponse,
          task="code_completion", lane="completion", tracked=True, errors=_MODEL_ERRORS,
          dialect=TABBY),
    Route("GET", "/tabby/v1/health", TabbyServing.health, "Tabby: what the agent checks.",
          response=TabbyHealth, errors=(401, 403), dialect=TABBY),
    Route("POST", "/tabby/v1/health", TabbyServing.health, "Tabby: what the agent checks.",
          response=TabbyHealth, errors=(401, 403), dialect=TABBY, in_schema=False),
    Route("POST", "/tabby/v1/events", TabbyServing.report,
          "Tabby: view / select / dismiss, counted as suggestion events.", request=TabbyEvent,
          errors=(*_INVALID, 409), dialect=TABBY),
    Route("GET", "/tabby/v1beta/server_setting", TabbyServing.server_setting,
          "Tabby: server settings the agent reads.", response=TabbyServerSetting,
          errors=(401, 403), dialect=TABBY),
    Route("GET", "/v1/admin/replicas", AdminServing.replicas,
          "Replica groups and every replica's state and load (never secrets).",
          access=Access.ADMIN, errors=(401, 403)),
    Route("POST", "/v1/admin/replicas", AdminServing.scale,
          "Add or remove replicas of a group without a restart (removal drains first).",
          access=Access.ADMIN, request=ScaleRequest, errors=(400, 401, 403)),
    Route("GET", "/v1/admin/usage", UsageServing.admin_usage,
          "Usage per day, tenant, user (key owner) and task: requests, tokens, errors, 429s "
          "(JSON, or CSV with `format=csv`).", access=Access.ADMIN, query=UsageParams,
          errors=(400, 401, 403, 503)),
    Route("GET", "/v1/admin/adapters", AdminServing.adapters,
          "Team adapters: registered, whose default, loaded where.",
          access=Access.ADMIN, errors=(401, 403)),
    Route("POST", "/v1/admin/adapters", AdminServing.add_adapter,
          "Register a team adapter (a LoRA folder under adapters.roots).",
          access=Access.ADMIN, request=AdapterAddRequest, errors=(400, 401, 403)),
    Route("DELETE", "/v1/admin/adapters", AdminServing.remove_adapter,
          "Unregister a team adapter (gateways unload it; its files stay).",
          access=Access.ADMIN, request=AdapterRemoveRequest, errors=(400, 401, 403, 404)),
)  # fmt: skip


# The web console (serving.api.console): its page, sign-in, and the JSON it
# reads, let in by a console session (cookie + CSRF token), not by an API key.
def _console(
    method: str, path: str, serve: ServeCall, summary: str, access: Access, **more: Any
) -> Route:
    """A console route: not in the API's OpenAPI document (it is the page's)."""
    return Route(method, path, serve, summary, access=access, in_schema=False,
                 errors=(400, 401, 403, 404), **more)  # fmt: skip


_OPEN, _SESSION, _SESSION_ADMIN = Access.OPEN, Access.SESSION, Access.SESSION_ADMIN
CONSOLE_ROUTES: tuple[Route, ...] = (
    _console("GET", "/console", ConsoleServing.page, "The console.", _OPEN),
    _console("GET", "/console/console.js", ConsoleServing.script, "Its script.", _OPEN),
    _console("GET", "/console/console.css", ConsoleServing.style, "Its style.", _OPEN),
    _console("GET", "/console/login", ConsoleServing.login,
             "Sign in with the identity provider.", _OPEN),
    _console("GET", "/console/callback", ConsoleServing.callback,
             "The provider's redirect back.", _OPEN, query=CallbackParams),
    _console("POST", "/console/login/key", ConsoleServing.key_login,
             "Sign in with an admin key.", _OPEN, request=KeySignIn),
    _console("POST", "/console/logout", ConsoleServing.logout, "Sign out.", _SESSION),
    _console("GET", "/console/api/me", ConsoleServing.me, "Who is signed in.", _SESSION),
    _console("GET", "/console/api/keys", ConsoleServing.list_keys,
             "My keys (admins: a tenant's).", _SESSION, query=TenantParams),
    _console("POST", "/console/api/keys", ConsoleServing.create_key,
             "Create a key of my own.", _SESSION, request=NewKey),
    _console("POST", "/console/api/keys/rotate", ConsoleServing.rotate_key,
             "A new secret for a key; the old one revoked.", _SESSION, request=KeyRef),
    _console("POST", "/console/api/keys/revoke", ConsoleServing.revoke_key, "Revoke a key.",
             _SESSION, request=KeyRef),
    _console("GET", "/console/api/usage", ConsoleServing.usage_view,
             "My usage (admins: everyone's).", _SESSION, query=UsageParams),
    _console("GET", "/console/api/acceptance", ConsoleServing.acceptance,
             "Acceptance rates by tenant and language.", _SESSION, query=UsageParams),
    _console("GET", "/console/api/tenants", ConsoleServing.tenants,
             "Tenants, their limits and keys.", _SESSION_ADMIN),
    _console("GET", "/console/api/replicas", AdminServing.replicas,
             "Replicas, routing policy, queue depth.", _SESSION_ADMIN),
    _console("GET", "/console/api/adapters", AdminServing.adapters, "Team adapters.",
             _SESSION_ADMIN),
)  # fmt: skip

# The internal metrics port: /metrics and /metrics/engines without a key.
METRICS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/metrics", StatusServing.metrics, "Prometheus metrics.", access=Access.OPEN),
    Route("GET", "/metrics/engines", StatusServing.engine_metrics, "The engines' metrics.",
          access=Access.OPEN),
)  # fmt: skip


def gateway_routes(*, metrics_on_main_port: bool, console: bool = True) -> tuple[Route, ...]:
    """The main port's routes: the metrics move to their own port when it is
    set; the console's when it is on."""
    routes = GATEWAY_ROUTES + (CONSOLE_ROUTES if console else ())
    if metrics_on_main_port:
        return routes
    moved = {route.path for route in METRICS_ROUTES}
    return tuple(route for route in routes if route.path not in moved)
