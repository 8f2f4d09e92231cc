"""GET /v1/admin/usage: usage records per day, tenant, user and task, as JSON
or CSV, for chargeback scripts (serving.observability.usage keeps them)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.api.responses import BodyAnswer, json_answer
from serving.errors import ServiceUnavailableError
from serving.observability.usage import UsageQuery, UsageRecorder, usage_csv
from serving.request_context import RequestContext

DEFAULT_DAYS = 30
MAX_DAYS = 366


class UsageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: dt.date | None = Field(
        default=None, description=f"First day, YYYY-MM-DD (UTC; default: {DEFAULT_DAYS} days ago)."
    )
    until: dt.date | None = Field(
        default=None, description="Last day, YYYY-MM-DD (default: today)."
    )
    tenant: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Only this tenant."
    )
    user: str | None = Field(
        default=None, min_length=1, max_length=256, description="Only this user (key owner)."
    )
    format: Literal["json", "csv"] = Field(default="json", description="json or csv.")

    @model_validator(mode="after")
    def _a_range(self) -> UsageParams:
        if self.since is not None and self.until is not None:
            if self.since > self.until:
                raise ValueError("since is after until")
            if (self.until - self.since).days >= MAX_DAYS:
                raise ValueError(f"ask for at most {MAX_DAYS} days at once")
        return self

    def query(self, today: dt.date) -> UsageQuery:
        until = self.until or today
        since = self.since or min(until, today) - dt.timedelta(days=DEFAULT_DAYS - 1)
        return UsageQuery(since=since, until=until, tenant=self.tenant, user=self.user)


def recorder_of(recorder: UsageRecorder | None) -> UsageRecorder:
    """The gateway's usage records, or a 503 saying they are off."""
    if recorder is None:
        raise ServiceUnavailableError(
            "Usage records are off on this gateway (usage.enabled).", code="usage_off"
        )
    return recorder


class UsageServing:
    def __init__(self, recorder: UsageRecorder | None) -> None:
        self.recorder = recorder

    async def admin_usage(self, params: UsageParams, ctx: RequestContext) -> BodyAnswer:
        """Every tenant's usage (admins), as JSON or CSV."""
        query = params.query(dt.datetime.now(dt.UTC).date())
        rows = await recorder_of(self.recorder).query(query)
        if params.format == "csv":
            name = f"usage-{query.since.isoformat()}-{query.until.isoformat()}.csv"
            return BodyAnswer(
                usage_csv(rows).encode(),
                content_type=b"text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="{name}"'},
            )
        return json_answer(
            {
                "object": "list",
                "since": query.since.isoformat(),
                "until": query.until.isoformat(),
                "data": rows,
            }
        )
