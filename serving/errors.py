"""Seed Serve's exception hierarchy.

::

    SeedServeError                 anything Seed Serve raises on purpose
    ├── ConfigError                the configuration is invalid (exit before start)
    ├── StartupError               a component could not start (engine, port, Ray)
    └── APIError                   an HTTP error answered in OpenAI's envelope
        ├── BadRequestError        400  invalid_request_error
        ├── AuthenticationError    401  authentication_error
        ├── PermissionDeniedError  403  permission_error
        ├── NotFoundError          404  not_found_error (unknown model: model_not_found)
        ├── ConflictError          409  conflict_error
        ├── PayloadTooLargeError   413  invalid_request_error
        ├── UnprocessableError     422  invalid_request_error
        ├── MethodNotAllowedError  405  invalid_request_error
        ├── RateLimitError         429  rate_limit_exceeded
        ├── InternalServerError    500  server_error
        ├── UpstreamError          502  upstream_error (an engine failed)
        └── ServiceUnavailableError 503 service_unavailable (no ready replica, draining)

The ``openai`` SDKs map these status codes to their own exception classes.
The envelope itself (``ErrorResponse``) is built here only, from an APIError:
the gateway's answers, its mid-stream error events and the engine guard's
refusals all come from :meth:`APIError.envelope`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field


class SeedServeError(Exception):
    """Base class of every error Seed Serve raises on purpose."""


class ConfigError(SeedServeError):
    """The configuration is invalid; ``field`` names where (dotted path)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class StartupError(SeedServeError):
    """A component could not start."""


class ErrorBody(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="The error class (invalid_request_error, ...).")
    param: str | None = Field(default=None, description="The request field at fault.")
    code: str | None = Field(default=None, description="A machine-readable reason.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


class APIError(SeedServeError):
    """An error answered over HTTP in OpenAI's error envelope."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        )

    def envelope_json(self) -> bytes:
        return self.envelope().model_dump_json().encode()


class BadRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(APIError):
    status_code = 404
    error_type = "not_found_error"


class ConflictError(APIError):
    status_code = 409
    error_type = "conflict_error"


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"


class UnprocessableError(APIError):
    status_code = 422
    error_type = "invalid_request_error"


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_exceeded"


class InternalServerError(APIError):
    status_code = 500
    error_type = "server_error"


class UpstreamError(APIError):
    status_code = 502
    error_type = "upstream_error"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable"


_BY_STATUS: dict[int, type[APIError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        MethodNotAllowedError,
        PayloadTooLargeError,
        UnprocessableError,
        RateLimitError,
        InternalServerError,
        UpstreamError,
        ServiceUnavailableError,
    )
}


def api_error_for_status(status: int) -> type[APIError]:
    """The APIError class that answers with ``status`` (500 for unknown ones)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return BadRequestError if 400 <= status < 500 else InternalServerError
