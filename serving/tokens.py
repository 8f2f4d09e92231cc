"""Counting tokens in the gateway (for budgets), with the served model's tokenizer.

A leaf: the registry keeps one counter per model, the tasks count with it.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("seed_serve.tokens")


def count_prompt(counter: TokenCounter, prompt: Any) -> int:
    """The tokens of an engine payload's ``prompt`` (a text, token ids, or a
    batch of either) or chat ``messages`` (their texts; without the chat
    template's own tokens)."""
    if isinstance(prompt, str):
        return counter.count(prompt)
    if not isinstance(prompt, list):
        return 0
    if all(isinstance(item, int) for item in prompt):
        return len(prompt)
    total = 0
    for item in prompt:
        if isinstance(item, dict):  # a chat message: its text, or its text parts
            content = item.get("content")
            parts = content if isinstance(content, list) else [{"text": content}]
            texts = [part.get("text") for part in parts if isinstance(part, dict)]
            total += sum(counter.count(text) for text in texts if isinstance(text, str))
        else:
            total += count_prompt(counter, item)
    return total


class TokenCounter:
    """Exact counts from the model's ``tokenizer.json``; without one, the UTF-8
    byte length, an upper bound for byte-level BPE tokenizers (budgets stay safe)."""

    def __init__(self, tokenizer_json: str | None = None) -> None:
        self._tokenizer = None
        if tokenizer_json:
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_str(tokenizer_json)
            except Exception as exc:  # a tokenizer we cannot load: fall back, loudly
                logger.warning("cannot load tokenizer.json (%s); counting bytes instead", exc)

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._tokenizer is None:
            return len(text.encode("utf-8"))
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def ids(self, text: str) -> list[int] | None:
        """The token ids of ``text`` (no special tokens: an engine's own, such
        as BOS, are its replica's to report); None without the tokenizer."""
        if self._tokenizer is None:
            return None
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def token_id(self, token: str) -> int | None:
        """The id of a single (special) token, if the tokenizer has it."""
        if self._tokenizer is None:
            return None
        value = self._tokenizer.token_to_id(token)
        return int(value) if value is not None else None
