"""Tabby's API as a thin front, under the base path ``/tabby`` (Tabby's
``/v1/completions`` would collide with OpenAI's; Tabby's agent builds its URLs
by appending to the configured endpoint, so ``http://host:8000/tabby`` works
unmodified). Checked against TabbyML/tabby's server (``crates/tabby``) and
``tabby-agent`` 1.5.0 (versions in the README).

A completion is a completion at the cursor (``serving.api.cursor``), with the
declarations and snippets the agent collects as repository context; the
agent's view / select / dismiss events are suggestion events.
"""

from __future__ import annotations

import os
import platform
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serving import __version__
from serving.api.code_protocol import SuggestionEventRequest
from serving.api.cursor import CursorCompletions, CursorRequest
from serving.api.protocol import EngineSeed
from serving.api.responses import BodyAnswer
from serving.api.suggestion_events import SuggestionEvents
from serving.request_context import RequestContext
from serving.tasks.repo_snippets import Snippet

_NAMES = {"prefix": "segments.prefix", "context": "segments", "model": "model"}


class _TabbyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Declaration(_TabbyRequest):
    filepath: str = Field(max_length=1024)
    body: str


class ScoredSnippet(Declaration):
    score: float | None = None


class Segments(_TabbyRequest):
    prefix: str
    suffix: str | None = None
    filepath: str | None = Field(default=None, max_length=1024)
    git_url: str | None = Field(default=None, max_length=2048)
    declarations: list[Declaration] | None = Field(default=None, max_length=256)
    relevant_snippets_from_changed_files: list[ScoredSnippet] | None = Field(
        default=None, max_length=256
    )
    relevant_snippets_from_recently_opened_files: list[ScoredSnippet] | None = Field(
        default=None, max_length=256
    )
    clipboard: str | None = None


class TabbyCompletionRequest(_TabbyRequest):
    """POST /tabby/v1/completions."""

    language: str | None = Field(default=None, max_length=64)
    segments: Segments
    user: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: EngineSeed | None = None
    mode: str | None = None


class TabbyChoice(BaseModel):
    index: int
    text: str


class TabbyCompletionResponse(BaseModel):
    id: str
    choices: list[TabbyChoice]


class TabbyEvent(_TabbyRequest):
    """POST /tabby/v1/events."""

    type: Literal["view", "select", "dismiss"]
    completion_id: str = Field(min_length=1, max_length=256)
    choice_index: int = Field(default=0, ge=0)
    view_id: str | None = None
    elapsed: int | None = None


class TabbyVersion(BaseModel):
    build_date: str
    build_timestamp: str
    git_sha: str
    git_describe: str


class TabbyHealth(BaseModel):
    model: str
    device: str
    arch: str
    cpu_info: str
    cpu_count: int
    cuda_devices: list[str]
    version: TabbyVersion


class TabbyServerSetting(BaseModel):
    disable_client_side_telemetry: bool


_EVENTS = {"view": "shown", "select": "accepted", "dismiss": "dismissed"}


def repo_name(git_url: str | None) -> str | None:
    """``https://host/o/r.git`` -> ``r``."""
    if not git_url:
        return None
    name = git_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.removesuffix(".git") or None


class TabbyServing:
    def __init__(self, cursor: CursorCompletions, events: SuggestionEvents, device: str) -> None:
        self.cursor = cursor
        self.events = events
        self.device = device

    async def completions(
        self, request: TabbyCompletionRequest, ctx: RequestContext
    ) -> TabbyCompletionResponse:
        segments = request.segments
        snippets = [
            Snippet(path=d.filepath, text=d.body, kind="declaration", rank=rank)
            for rank, d in enumerate(segments.declarations or ())
        ]
        # Snippets of changed files first (the agent sorts them by score), then
        # of recently opened ones.
        recent = [
            *(segments.relevant_snippets_from_changed_files or ()),
            *(segments.relevant_snippets_from_recently_opened_files or ()),
        ]
        snippets += [
            Snippet(path=s.filepath, text=s.body, kind="snippet", rank=rank)
            for rank, s in enumerate(recent)
        ]
        sampling: dict[str, object] = {"temperature": request.temperature or 0.2}
        if request.seed is not None:
            sampling["seed"] = request.seed
        started = await self.cursor.start(
            CursorRequest(
                prefix=segments.prefix,
                suffix=segments.suffix or "",
                language=request.language,
                path=segments.filepath,
                sampling=sampling,
                context=snippets,
                repo=repo_name(segments.git_url),
                strict_language=False,  # LSP ids such as "plaintext" or "markdown"
                names=_NAMES,
            ),
            ctx,
        )
        async for _ in started.run.deltas():
            pass
        started.note(ctx)
        return TabbyCompletionResponse(
            id=started.id, choices=[TabbyChoice(index=0, text=started.run.texts[0])]
        )

    async def report(self, request: TabbyEvent, ctx: RequestContext) -> BodyAnswer:
        await self.events.report(
            SuggestionEventRequest(completion_id=request.completion_id,
                                   event=_EVENTS[request.type]),  # type: ignore[arg-type]
            ctx,
        )  # fmt: skip
        return BodyAnswer(b"", content_type=None)  # Tabby answers its events with nothing

    async def health(self, ctx: RequestContext) -> TabbyHealth:
        models = self.cursor.registry.models()
        return TabbyHealth(
            model=models[0].name if models else "",
            device=self.device,
            arch=platform.machine(),
            cpu_info=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count() or 1,
            cuda_devices=[],
            # tabby-agent reads version.git_describe (semver) at every health check.
            version=TabbyVersion(
                build_date="",
                build_timestamp="",
                git_sha="",
                git_describe=f"seed-serve-v{__version__}",
            ),
        )

    async def server_setting(self, ctx: RequestContext) -> TabbyServerSetting:
        return TabbyServerSetting(disable_client_side_telemetry=False)
