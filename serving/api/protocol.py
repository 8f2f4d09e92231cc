"""OpenAI protocol types the gateway accepts and returns.

Requests are strict: unknown fields are refused (as OpenAI does: "Unrecognized
request argument supplied"), wrong types are refused rather than coerced.
Answers the gateway writes itself (fill-in-the-middle completions and their
stream chunks, usage, the model list) are built from these models only; the
error envelope is ``serving.errors.ErrorResponse`` (the Ray side answers with
it too). Answers relayed from vLLM pass through as vLLM wrote them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.errors import ErrorResponse

NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Request):
    include_usage: bool = Field(default=False, description="Send a final chunk with usage.")


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list):
        if len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not item for item in value):
            raise ValueError("stop sequences must not be empty")
    return value


# Integers the engine receives as they are: vLLM's wire format (msgpack) carries
# -2**63 .. 2**64 - 1, and a larger one failed inside the engine mid-request
# (OverflowError, answered as a 502: found by the OpenAPI fuzzing on /infill).
# Every protocol's seed and top_k use these, so a client gets a 400 naming the field.
EngineSeed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
TopK = Annotated[int, Field(ge=-1, le=2**31 - 1)]  # -1: off; far above any vocabulary


class _SamplingFields(_Request):
    """Sampling parameters shared by completions and chat."""

    model: str = Field(min_length=1, description="A model id from /v1/models.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: EngineSeed | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = Field(default=None, max_length=256)
    # vLLM sampling extensions that IDE assistants commonly send.
    top_k: TopK | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(default=None, ge=0)

    _stop = field_validator("stop")(_check_stop)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="Text, texts, token ids, or lists of token ids."
    )
    suffix: str | None = Field(default=None, description="Text after the insertion point.")
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=128)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("prompt must not be empty")
        elif not value:
            raise ValueError("prompt must not be empty")
        elif any(isinstance(item, str | list) and len(item) == 0 for item in value):
            raise ValueError("prompt must not contain empty items")
        return value

    @model_validator(mode="after")
    def _best_of_covers_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be greater than or equal to n")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    """A /v1/completions answer, or one chunk of its stream (the last chunk
    of a stream that asked for usage has no choices and the usage)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    def json_bytes(self) -> bytes:
        """As OpenAI writes it: a stream chunk without usage has no usage key."""
        exclude = {"usage"} if self.usage is None else None
        return self.model_dump_json(exclude=exclude).encode()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "seed-serve"
    max_model_len: int | None = Field(default=None, description="Context length in tokens.")
    replicas_ready: int = Field(description="Replicas serving this model now.")
    replicas_total: int = Field(description="Replicas configured for this model.")
    chat: bool = Field(
        description="Whether /v1/chat/completions works (model has a chat template)."
    )
    fim: str = Field(description="Fill-in-the-middle template of the model (`none`: no FIM).")
    fim_mode: Literal["native", "prefix-only"] = Field(
        description="How `suffix` is served: the model's FIM format, or prefix-only "
        "generation followed by suffix-aware trimming."
    )
    parent: str | None = Field(
        default=None, description="For a team adapter (`<base>:<adapter>`): the base model."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


__all__ = [
    "ChatCompletionRequest",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "Usage",
]
