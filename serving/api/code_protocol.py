"""Request and response types of the code-task routes (/v1/code/*)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.api.protocol import EngineSeed, Usage


def _utf8(value: str | None) -> str | None:
    """JSON may carry lone surrogates (\\ud800); they are not text we can run or show."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


class _CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None, min_length=1, description="A model id from /v1/models (default: the first)."
    )


class ContextFile(BaseModel):
    """A snippet of another file of the repository."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str = Field(min_length=1, max_length=1024, description="Its path in the repository.")
    text: str = Field(description="Its text (a definition, a few lines, or the whole file).")

    _text = field_validator("path", "text")(_utf8)


class CodeCompletionRequest(_CodeRequest):
    """POST /v1/code/completions: an IDE's completion at the cursor."""

    prefix: str = Field(description="The file's text before the cursor.")
    suffix: str = Field(default="", description="The file's text after the cursor.")
    language: str | None = Field(
        default=None, description="Language id (python, typescript, go, ...)."
    )
    path: str | None = Field(
        default=None, max_length=1024, description="File path (language by extension)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    mode: Literal["auto", "line", "block"] = Field(
        default="auto",
        description="line: finish the line; block: the current block; auto: by cursor.",
    )
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: EngineSeed | None = None
    stop: list[str] | None = Field(default=None, max_length=4)
    stream: bool = False
    document: str | None = Field(
        default=None, max_length=512, description="Document identity (editor buffer id)."
    )
    context: list[ContextFile] | None = Field(
        default=None,
        max_length=64,
        description="Snippets of other files, most relevant first: rendered into the prompt "
        "in the model's repository format, as far as the context holds them after the "
        "prefix and suffix.",
    )

    _text = field_validator("prefix", "suffix")(_utf8)


class CodeCompletionChunk(BaseModel):
    """One piece of a streamed /v1/code/completions answer (the last chunk is
    the whole answer's fields, without its text, as ``code.completion.chunk``)."""

    id: str
    object: Literal["code.completion.chunk"] = "code.completion.chunk"
    created: int
    model: str
    text: str
    finish_reason: None = None


class CodeCompletionResponse(BaseModel):
    id: str
    object: Literal["code.completion", "code.completion.chunk"] = "code.completion"
    created: int
    model: str
    text: str
    finish_reason: str
    mode: Literal["line", "block"]
    language: str
    fim: Literal["native", "prefix-only"] = Field(description="How the suffix was used.")
    prompt_trimmed: bool = Field(description="Whether prefix/suffix were cut to fit the context.")
    usage: Usage


class CodeRepairRequest(_CodeRequest):
    """POST /v1/code/repairs: fix code given the error it produces."""

    code: str = Field(min_length=1, description="The code to fix.")
    error: str = Field(min_length=1, description="Compiler/interpreter message or traceback.")
    language: str = Field(min_length=1, description="Language id of the code.")
    path: str | None = Field(default=None, max_length=1024)
    test: str | None = Field(
        default=None, description="Test code (pytest) the fix must pass; Python only."
    )
    n_candidates: int | None = Field(default=None, ge=1, description="Candidates to generate.")
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    seed: EngineSeed | None = None

    _text = field_validator("code", "error", "test")(_utf8)


class LineRange(BaseModel):
    start: int = Field(description="First line (1-based) of the original the fix touches.")
    end: int = Field(description="Last line (1-based, inclusive).")


class CodeRepairResponse(BaseModel):
    id: str
    object: Literal["code.repair"] = "code.repair"
    model: str
    fixed_code: str
    diff: str = Field(description="Unified diff from the original to fixed_code.")
    location: LineRange | None = Field(description="Lines of the original the fix touches.")
    verified: bool = Field(description="True only if the given test passed in the sandbox.")
    syntax_ok: bool
    candidates_tried: int
    test_output: str | None = None
    usage: Usage


class CodeTestsRequest(_CodeRequest):
    """POST /v1/code/tests: write unit tests for the given code."""

    code: str = Field(min_length=1, description="The code to test (imported as module `solution`).")
    language: str = Field(default="python")
    framework: str = Field(default="pytest")
    strength: Literal["light", "thorough"] = Field(
        default="light", description="thorough: more tests, more boundary cases."
    )
    n_candidates: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    seed: EngineSeed | None = None

    _text = field_validator("code")(_utf8)


class TestFailureInfo(BaseModel):
    name: str
    message: str


class CodeTestsResponse(BaseModel):
    id: str
    object: Literal["code.tests"] = "code.tests"
    model: str
    tests: str
    syntax_ok: bool
    test_count: int
    passed: int
    passed_on_given_code: bool = Field(description="Every test passed against the given code.")
    failures: list[TestFailureInfo]
    candidates_tried: int
    usage: Usage


class SuggestionEventRequest(BaseModel):
    """POST /v1/code/events: what the developer did with a completion."""

    model_config = ConfigDict(extra="forbid", strict=True)

    completion_id: str = Field(
        min_length=1, max_length=256, description="The `id` of the completion reported on."
    )
    event: Literal["shown", "accepted", "dismissed"] = Field(
        description="shown: displayed to the developer; accepted / dismissed: the outcome."
    )
    accepted_chars: int | None = Field(
        default=None, ge=0, description="With `accepted`: characters kept (partial accepts)."
    )
    language: str | None = Field(
        default=None,
        max_length=64,
        description="Language id, when the completion request did not give one.",
    )


class SuggestionEventResponse(BaseModel):
    object: Literal["code.event"] = "code.event"
    completion_id: str
    event: str
    recorded: bool = Field(description="False when this event was already reported (not counted).")
