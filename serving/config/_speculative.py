"""Config of speculative decoding on a replica group's engines."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from serving.config._base import Strict

SpeculativeMethod = Literal["off", "ngram", "suffix", "draft_model"]

# Sampling parameters vLLM ignores while it decodes speculatively (its
# SamplingParams warn and drop them): a request that sets them must not reach
# such an engine and silently sample otherwise.
IGNORED_BY_SPECULATION = ("min_p", "logit_bias")


class SpeculativeConfig(Strict):
    """Speculative decoding (vLLM's --speculative-config): cheap guesses of the
    next tokens that the model checks in one step. Code answers repeat their
    input (a repair returns the function, tests quote its names), which
    prompt-lookup (``ngram``) and ``suffix`` decoding guess for free."""

    method: SpeculativeMethod = Field(
        default="off",
        description="off; ngram (prompt lookup: propose the tokens that followed the last "
        "n-gram where it occurred in the prompt); suffix (suffix trees over the prompt and "
        "past answers, needs Arctic Inference); draft_model (a small model of the same "
        "tokenizer proposes). Checked at start-up against the installed vLLM.",
    )
    num_speculative_tokens: int = Field(
        default=4, ge=1, le=32, description="Tokens proposed per step (ngram, draft_model)."
    )
    prompt_lookup_min: int = Field(
        default=2, ge=1, le=32, description="ngram: shortest n-gram looked up in the prompt."
    )
    prompt_lookup_max: int = Field(
        default=4, ge=1, le=32, description="ngram: longest n-gram looked up in the prompt."
    )
    draft_model: str | None = Field(
        default=None,
        min_length=1,
        description="draft_model: the proposing model's folder or Hugging Face id.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) must be <= prompt_lookup_max "
                f"({self.prompt_lookup_max})"
            )
        if self.method == "draft_model" and self.draft_model is None:
            raise ValueError("method draft_model needs draft_model (the proposing model)")
        if self.method != "draft_model" and self.draft_model is not None:
            raise ValueError(f"draft_model is used only by method draft_model, not {self.method}")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "off"

    def engine_json(self) -> str:
        """The value of vLLM's ``--speculative-config``."""
        spec: dict[str, Any] = {"method": self.method}
        if self.method == "ngram":
            spec.update(
                num_speculative_tokens=self.num_speculative_tokens,
                prompt_lookup_min=self.prompt_lookup_min,
                prompt_lookup_max=self.prompt_lookup_max,
            )
        elif self.method == "draft_model":
            spec.update(model=self.draft_model, num_speculative_tokens=self.num_speculative_tokens)
        # suffix sizes its own proposals (up to its tree depth) per step.
        return json.dumps(spec, separators=(",", ":"))
