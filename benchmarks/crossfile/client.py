"""One case's completion from the gateway's /v1/code/completions, with or
without the other file's definition as ``context``."""

from __future__ import annotations

from typing import Any

import aiohttp

from benchmarks.crossfile.cases import Case

MAX_TOKENS = 48


class RequestFailed(Exception):
    """One request's failure: counted, the run goes on."""


class ContextRejected(Exception):
    """The gateway answered 400 naming ``context``: it predates the field."""


def request_body(case: Case, model: str, with_context: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prefix": case.prefix,
        "suffix": case.suffix,
        "language": "python",
        "path": case.path,
        "mode": "line",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": False,
        # Each request is its own document: the gateway lets a newer completion
        # of the same document (by default: the same path and key) supersede
        # an older one, and the two arms of a case, or two cases of one file,
        # may be in flight at once.
        "document": f"{case.path}:{case.line}:{'with' if with_context else 'without'}",
    }
    if with_context:
        body["context"] = [{"path": case.context_path, "text": case.context}]
    return body


def names_context(payload: Any) -> bool:
    """Whether an error answer is about the ``context`` field (an unknown
    argument, or a value an older validator does not take)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "context" in str(payload) and "argument" in str(payload)
    param = str(error.get("param") or "")
    message = str(error.get("message") or "")
    return (
        param == "context"
        or param.startswith(("context[", "context."))
        or ("argument supplied: context" in message)
    )


class Gateway:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str, model: str) -> None:
        self.session = session
        self.endpoint = url.rstrip("/") + "/v1/code/completions"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.model = model

    async def complete(self, case: Case, with_context: bool) -> str:
        body = request_body(case, self.model, with_context)
        try:
            async with self.session.post(self.endpoint, json=body, headers=self.headers) as answer:
                try:
                    payload = await answer.json(content_type=None)
                except ValueError:
                    payload = (await answer.text())[:200]
                status = answer.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
        if status == 200 and isinstance(payload, dict) and isinstance(payload.get("text"), str):
            return str(payload["text"])
        if status == 400 and with_context and names_context(payload):
            raise ContextRejected(f"{status} {str(payload)[:300]}")
        raise RequestFailed(f"{status} {str(payload)[:200]}")
