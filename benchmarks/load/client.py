"""Timed requests against an OpenAI-compatible URL (ours, raw vLLM, a hosted API).

``api="seed-serve"`` uses the task endpoints (``suffix`` on /v1/completions,
/v1/code/repairs, /v1/code/tests); ``api="openai"`` renders every task as a
plain /v1/completions prompt (FIM tokens client-side when a template is given),
for servers without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from benchmarks.load.workload import FimPrompt, RepairPrompt, Task
from serving.fim_templates import fim_template as fim_template_named

Api = Literal["seed-serve", "openai"]


@dataclass
class RequestRecord:
    task: Task
    started: float
    ended: float = 0.0
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    status: int = 0
    error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and not self.cancelled

    @property
    def ttft(self) -> float | None:
        return self.first_token - self.started if self.first_token is not None else None

    @property
    def e2e(self) -> float:
        return self.ended - self.started

    @property
    def tpot(self) -> float | None:
        if self.first_token is None or self.output_tokens < 2:
            return None
        return (self.ended - self.first_token) / (self.output_tokens - 1)

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


class Target:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        model: str,
        key: str | None,
        api: Api = "seed-serve",
        fim_template: str = "none",
        request_timeout_s: float = 300.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.template = fim_template_named(fim_template)

    # ------------------------------------------------------------------ tasks

    async def completion(self, prompt: FimPrompt, record: RequestRecord) -> None:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": prompt.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = dict(self.headers)
        if self.api == "seed-serve":
            body.update(prompt=prompt.prefix, suffix=prompt.suffix)
            headers["x-seed-serve-document"] = prompt.document
        elif self.template is not None:
            body["prompt"] = self.template.render(prompt.prefix, prompt.suffix)
            body["stop"] = list(self.template.stop)[:4] or None
        else:
            body["prompt"] = prompt.prefix
        await self._stream("/completions", body, headers, record)

    async def repair(self, prompt: RepairPrompt, record: RequestRecord) -> None:
        if self.api == "seed-serve":
            body = {
                "model": self.model,
                "code": prompt.code,
                "error": prompt.error,
                "language": "python",
                "n_candidates": 1,
                "temperature": 0.2,
            }
            await self._plain("/code/repairs", body, record)
            return
        text = f"# The code below fails with:\n# {prompt.error.splitlines()[-1]}\n{prompt.code}\n\n# Fixed:\n"
        await self._stream("/completions", self._prompt_body(text, 256), self.headers, record)

    async def tests(self, code: str, record: RequestRecord) -> None:
        if self.api == "seed-serve":
            body = {"model": self.model, "code": code, "n_candidates": 1, "temperature": 0.2}
            await self._plain("/code/tests", body, record)
            return
        text = f"{code}\n\n\n# pytest tests for the code above\nimport pytest\n\n"
        await self._stream("/completions", self._prompt_body(text, 256), self.headers, record)

    def _prompt_body(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    # ------------------------------------------------------------------ HTTP

    async def _stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], record: RequestRecord
    ) -> None:
        with _recording(record):
            async with self.session.post(
                self.base_url + path, json=body, headers=headers, timeout=self.timeout
            ) as response:
                record.status = response.status
                if response.status != 200:
                    record.error = (await response.text())[:300]
                    return
                usage_tokens = None
                async for raw in response.content:
                    line = raw.strip()
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        record.error = str(chunk["error"].get("message"))[:300]
                        continue
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"].get("completion_tokens")
                    if _has_text(chunk):
                        now = time.monotonic()
                        if record.first_token is None:
                            record.first_token = now
                        record.token_times.append(now)
                        record.output_tokens += 1
                if usage_tokens is not None:
                    record.output_tokens = int(usage_tokens)

    async def _plain(self, path: str, body: dict[str, Any], record: RequestRecord) -> None:
        with _recording(record):
            async with self.session.post(
                self.base_url + path, json=body, headers=self.headers, timeout=self.timeout
            ) as response:
                record.status = response.status
                payload = await response.json(content_type=None)
                if response.status != 200:
                    record.error = str(payload)[:300]
                    return
                record.output_tokens = int(payload.get("usage", {}).get("completion_tokens", 0))


@contextlib.contextmanager
def _recording(record: RequestRecord) -> Iterator[None]:
    """Notes how a request ended: cancelled (the developer typed on), failed, or done."""
    try:
        yield
    except asyncio.CancelledError:
        record.cancelled = True
        raise
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        record.ended = time.monotonic()


def _has_text(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return bool(chunk.get("text"))
