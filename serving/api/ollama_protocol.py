"""Ollama's API types (checked against ollama/ollama ``api/types.go`` and
``docs/api.md``, and what the ``ollama`` Python client, Continue's ``ollama``
provider and Twinny send and read; versions in the README).

Requests ignore fields they do not know, as Ollama does (its clients send
runner options such as ``num_gpu`` or ``mirostat`` that mean nothing here);
a field of the wrong type is a 400 naming it. Answers are built from these
models only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.api.protocol import EngineSeed, TopK

# What GET /api/version answers. Clients show it or check it against a
# minimum (a release with suffix-FIM and /api/show's model_info, both served).
OLLAMA_API_VERSION = "0.12.0"


def created_at() -> str:
    """RFC 3339, UTC, as Ollama writes ``created_at``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _OllamaRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


class OllamaOptions(_OllamaRequest):
    """The ``options`` Seed Serve uses; the rest (``num_ctx``, ``num_gpu``,
    ``mirostat``...) are runner settings of Ollama's own and are ignored."""

    num_predict: int | None = Field(
        default=None, description="Most tokens to generate (-1: the server's default)."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: TopK | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: EngineSeed | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    def sampling(self) -> dict[str, Any]:
        """As vLLM's sampling parameters."""
        out: dict[str, Any] = {}
        for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.frequency_penalty is not None:
            out["frequency_penalty"] = self.frequency_penalty
        if self.repeat_penalty is not None:
            out["repetition_penalty"] = self.repeat_penalty
        if self.seed is not None and self.seed >= 0:  # Ollama: -1 is "random"
            out["seed"] = self.seed
        return out

    def stops(self) -> list[str] | None:
        if self.stop is None:
            return None
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s] or None


class GenerateRequest(_OllamaRequest):
    """POST /api/generate."""

    model: str = Field(default="", description="A model name from /api/tags.")
    prompt: str = Field(default="", description="The text before the cursor (or the prompt).")
    suffix: str = Field(default="", description="The text after the cursor: fill-in-the-middle.")
    system: str | None = None
    template: str | None = None
    context: list[int] | None = Field(default=None, description="Deprecated; refused.")
    stream: bool = Field(default=True, description="NDJSON lines (default) or one object.")
    raw: bool = Field(default=False, description="The prompt is already in the model's format.")
    options: OllamaOptions | None = None
    keep_alive: float | str | None = None  # models stay loaded here: accepted, ignored
    format: Any = None


class ChatMessage(_OllamaRequest):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class ChatRequest(_OllamaRequest):
    """POST /api/chat."""

    model: str = ""
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: bool = True
    options: OllamaOptions | None = None
    keep_alive: float | str | None = None
    format: Any = None


class ShowRequest(_OllamaRequest):
    """POST /api/show (``name`` is the older spelling; Continue sends it)."""

    model: str | None = None
    name: str | None = None
    verbose: bool = False


class _Line(BaseModel):
    """One NDJSON line: the last has ``done`` and the counts (durations in ns)."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None

    def line(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode() + b"\n"


class GenerateChunk(_Line):
    """A line of /api/generate."""

    response: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChunk(_Line):
    """A line of /api/chat."""

    message: AssistantMessage


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "safetensors"
    family: str
    families: list[str]
    parameter_size: str = ""
    quantization_level: str = ""


class TagModel(BaseModel):
    name: str  # Continue and Twinny read `name`
    model: str  # the Python client reads `model`
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagList(BaseModel):
    models: list[TagModel]


class ShowResponse(BaseModel):
    license: str = ""
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]  # always present: the Python client requires the key
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str
