"""How each protocol the gateway speaks answers an error.

A route declares its dialect (``Route.dialect``); every error on its way (the
front door's refusals, bad bodies, the serving call's errors) is answered in
that dialect, with the same status code and message. OpenAI's envelope is
the default (``serving.errors.ErrorResponse``).
"""

from __future__ import annotations

import json
from typing import Protocol

from serving.api.responses import BodyAnswer, error_answer
from serving.errors import APIError

_COMPACT = (",", ":")


class ErrorDialect(Protocol):
    name: str

    def answer(self, exc: APIError) -> BodyAnswer:
        """The whole error answer."""

    def stream_error(self, exc: APIError) -> bytes:
        """The error as the last piece of a stream that already began."""


class OpenAIErrors:
    """``{"error": {"message", "type", "param", "code"}}``."""

    name = "openai"

    def answer(self, exc: APIError) -> BodyAnswer:
        return error_answer(exc)

    def stream_error(self, exc: APIError) -> bytes:
        return b"data: " + exc.envelope_json() + b"\n\n"


class OllamaErrors:
    """Ollama's ``{"error": "..."}`` (its clients show the string); mid-stream,
    one more NDJSON line of the same shape (Ollama's ``streamResponse``)."""

    name = "ollama"

    def answer(self, exc: APIError) -> BodyAnswer:
        body = json.dumps({"error": exc.message}, separators=_COMPACT).encode()
        return BodyAnswer(body, status=exc.status_code, headers=exc.headers)

    def stream_error(self, exc: APIError) -> bytes:
        return json.dumps({"error": exc.message}, separators=_COMPACT).encode() + b"\n"


# llama.cpp's error types by status (server-common.cpp format_error_response).
_LLAMA_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class LlamaCppErrors:
    """llama.cpp server's ``{"error": {"code", "message", "type"}}`` (compact,
    the status equal to ``code``); mid-stream an ``error:`` SSE field."""

    name = "llama.cpp"

    @staticmethod
    def _body(exc: APIError) -> bytes:
        error = {
            "code": exc.status_code,
            "message": exc.message,
            "type": _LLAMA_TYPES.get(exc.status_code, "server_error"),
        }
        return json.dumps({"error": error}, separators=_COMPACT).encode()

    def answer(self, exc: APIError) -> BodyAnswer:
        return BodyAnswer(self._body(exc), status=exc.status_code, headers=exc.headers)

    def stream_error(self, exc: APIError) -> bytes:
        return b"error: " + self._body(exc) + b"\n\n"


class TabbyErrors:
    """Tabby's server answers errors with a status and a plain-text body (axum's
    extractors) or none; the agent reads the status. Here: the message as
    plain text, so a person reading the agent's log sees the field at fault."""

    name = "tabby"

    def answer(self, exc: APIError) -> BodyAnswer:
        return BodyAnswer(
            exc.message.encode(),
            status=exc.status_code,
            content_type=b"text/plain; charset=utf-8",
            headers=exc.headers,
        )

    def stream_error(self, exc: APIError) -> bytes:  # Tabby's completions never stream
        return b""


OPENAI = OpenAIErrors()
OLLAMA = OllamaErrors()
LLAMA_CPP = LlamaCppErrors()
TABBY = TabbyErrors()
