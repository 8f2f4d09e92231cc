"""Serving logic of POST /v1/code/events (suggestion feedback), and the hook
that remembers every answer an event may refer to (called by the front door
for the routes the table marks ``tracked``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from serving.adapters import TeamDataStore, TrainingExample
from serving.api.code_protocol import SuggestionEventRequest, SuggestionEventResponse
from serving.errors import BadRequestError, ConflictError, NotFoundError
from serving.observability.metrics import GatewayMetrics
from serving.observability.suggestions import (
    OutcomeConflict,
    SuggestionStore,
    TrackedSuggestion,
)
from serving.observability.usage import UsageRecorder
from serving.request_context import RequestContext
from serving.tasks.languages import UnsupportedLanguage, resolve_language

logger = logging.getLogger("seed_serve.suggestions")

UNKNOWN_LANGUAGE = "unknown"  # none given
OTHER_LANGUAGE = "other"  # given, but not one the code tasks know (markdown, yaml, ...)


def language_label(language: str | None) -> str:
    """A bounded label: a language the gateway knows, ``other`` or ``unknown``."""
    if not language:
        return UNKNOWN_LANGUAGE
    try:
        return resolve_language(language, None)
    except UnsupportedLanguage:
        return OTHER_LANGUAGE


class SuggestionEvents:
    def __init__(
        self,
        store: SuggestionStore | None,
        metrics: GatewayMetrics,
        team_data: TeamDataStore | None = None,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.store = store  # None: telemetry disabled
        self.metrics = metrics
        self.team_data = team_data
        self.usage = usage  # acceptance rates per tenant and language (the console)

    async def track(self, ctx: RequestContext) -> None:
        """Remember a successful answer (called before its last byte is sent, so an
        IDE's event right after the answer finds it)."""
        if (
            self.store is None
            or ctx.response_id is None
            or ctx.status != 200
            or ctx.outcome != "ok"
        ):
            return
        example = None
        if ctx.keep_training_data and ctx.training_context and ctx.completion_text:
            example = {**ctx.training_context, "shown": ctx.completion_text}
        completion = TrackedSuggestion(
            key_id=ctx.key_id,
            tenant=ctx.tenant or "anonymous",
            task=ctx.task,
            model=ctx.model or "unknown",
            language=language_label(ctx.language),
            chars=len(ctx.completion_text) if ctx.completion_text is not None else None,
            adapter=ctx.adapter,
            example=example,
        )
        try:
            await self.store.remember(ctx.response_id, completion)
        except Exception as exc:  # the answer must not fail for its telemetry
            logger.warning("could not remember completion for events: %s", exc)

    async def report(
        self, request: SuggestionEventRequest, ctx: RequestContext
    ) -> SuggestionEventResponse:
        if self.store is None:
            raise NotFoundError(
                "Suggestion events are disabled on this server (telemetry.enabled).",
                code="telemetry_disabled",
            )
        if request.accepted_chars is not None and request.event != "accepted":
            raise BadRequestError(
                "'accepted_chars' is only valid with event 'accepted'.", param="accepted_chars"
            )
        completion = await self.store.get(request.completion_id)
        # Another key's completion answers exactly like an unknown one.
        if completion is None or completion.key_id != ctx.key_id:
            raise NotFoundError(
                f"No completion '{request.completion_id}' of this key is known (ids are kept "
                "for a limited time after the completion).",
                param="completion_id",
                code="completion_not_found",
            )
        if (
            request.accepted_chars is not None
            and completion.chars is not None
            and request.accepted_chars > completion.chars
        ):
            raise BadRequestError(
                f"'accepted_chars' is {request.accepted_chars}, but the completion has "
                f"{completion.chars} characters.",
                param="accepted_chars",
            )
        language = completion.language
        if language == UNKNOWN_LANGUAGE:
            language = language_label(request.language)
        try:
            outcome = await self.store.mark(request.completion_id, request.event)
        except OutcomeConflict as exc:
            raise ConflictError(
                f"Completion '{request.completion_id}' was already reported as {exc.earlier}.",
                param="event",
                code="outcome_already_reported",
            ) from None
        recorded = outcome == "recorded"
        if recorded:
            labels = {"task": completion.task, "tenant": completion.tenant, "language": language}
            self.metrics.suggestions.labels(**labels, event=request.event).inc()
            if self.usage is not None:
                self.usage.record_suggestion(
                    tenant=completion.tenant, language=language, event=request.event
                )
            if request.event == "accepted":
                chars = request.accepted_chars
                if chars is None:
                    chars = completion.chars or 0
                self.metrics.accepted_chars.labels(**labels).inc(chars)
        kept = False
        if recorded and request.event == "accepted":
            kept = await self._keep(request, completion, language, ctx)
        ctx.model = completion.model
        ctx.adapter = completion.adapter
        ctx.audit_extra["suggestion"] = {
            "kept_for_training": kept,
            "completion_id": request.completion_id,
            "event": request.event,
            "task": completion.task,
            "language": language,
            "accepted_chars": request.accepted_chars,
            "recorded": recorded,
        }
        return SuggestionEventResponse(
            completion_id=request.completion_id, event=request.event, recorded=recorded
        )

    async def _keep(
        self,
        request: SuggestionEventRequest,
        completion: TrackedSuggestion,
        language: str,
        ctx: RequestContext,
    ) -> bool:
        """Keep an accepted suggestion for the tenant's adapter training: only
        when the tenant collected when it was made and still does now."""
        if self.team_data is None or completion.example is None or not ctx.keep_training_data:
            return False
        shown = str(completion.example.get("shown", ""))
        accepted = request.accepted_chars if request.accepted_chars is not None else len(shown)
        if accepted <= 0:
            return False
        example = TrainingExample(
            completion_id=request.completion_id,
            time=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            tenant=completion.tenant,
            model=completion.model,
            adapter=completion.adapter,
            language=language,
            path=completion.example.get("path"),
            prefix=str(completion.example.get("prefix", "")),
            suffix=str(completion.example.get("suffix", "")),
            context=str(completion.example.get("context", "")),
            healed=str(completion.example.get("healed", "")),
            shown=shown,
            accepted_chars=min(accepted, len(shown)),
        )
        try:
            await asyncio.to_thread(self.team_data.append, example)
        except (OSError, ValueError) as exc:  # the event is still counted
            logger.error("could not keep an accepted suggestion for training: %s", exc)
            return False
        return True

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
