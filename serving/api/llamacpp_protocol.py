"""llama.cpp server's ``/infill`` and ``/completion`` request types (checked
against ggml-org/llama.cpp ``tools/server`` (``params_from_json_cmpl``,
``handle_infill``) and what llama.vscode and llama.vim send; versions in the
README). Unknown fields are ignored, as llama.cpp does (``time`` in
``input_extra`` chunks, ``lora``, ``dry_*``...); a field of the wrong type is
a 400 naming it.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from serving.api.protocol import EngineSeed, TopK


class _LlamaRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False, populate_by_name=True)


class ExtraChunk(_LlamaRequest):
    """A chunk of another file (llama.vscode's and llama.vim's ring buffer)."""

    filename: str = Field(default="tmp", max_length=1024)
    text: str
    time: float | None = Field(default=None, description="When it was collected (ms).")


class _Sampling(_LlamaRequest):
    n_predict: int = Field(
        default=-1,
        ge=-1,
        validation_alias=AliasChoices("n_predict", "max_tokens"),
        description="Tokens to generate (-1: the server's default; 0: only fill the cache).",
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_k: TopK | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: EngineSeed | None = None
    stop: list[str] | None = Field(default=None, max_length=16)
    samplers: list[str] | str | None = None  # the engine's own sampler order: ignored
    stream: bool = False
    cache_prompt: bool = True  # prefix caching is always on here
    id_slot: int = Field(default=-1, ge=-1, description="The client's slot: its cursor.")
    n_indent: int = Field(default=0, ge=0, description="Stop at a new line indented less.")
    t_max_prompt_ms: int | None = None  # accepted; llama.cpp does not implement it either
    t_max_predict_ms: int | None = Field(
        default=None, description="After the first new line, stop after this many ms."
    )
    n_cmpl: int = Field(
        default=1, ge=1, validation_alias=AliasChoices("n_cmpl", "n"), description="Completions."
    )
    response_fields: list[str] | None = None
    model: str | None = None

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("temperature", "top_k", "top_p", "min_p"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.seed is not None and self.seed >= 0:  # -1: random
            out["seed"] = self.seed
        return out


class InfillRequest(_Sampling):
    """POST /infill."""

    input_prefix: str = Field(description="The file's text before the cursor's line.")
    input_suffix: str = Field(description="The text after the cursor.")
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=256)
    prompt: str = Field(default="", description="The cursor's line up to the cursor.")


class LlamaCompletionRequest(_Sampling):
    """POST /completion: a plain prompt, sent as it is."""

    prompt: str = Field(min_length=1)
