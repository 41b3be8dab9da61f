"""Reports: volumes per channel per day, first response and resolution times, per agent."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from pydantic import Field, field_validator, model_validator

from hub.api.base import Call, RouteTable
from hub.api.schemas import Input, Output
from hub.model import utcnow
from hub.services.reports import FIRST_DAY, LAST_DAY, MAX_DAYS, summary

table = RouteTable()


class SummaryQuery(Input):
    from_: date | None = Field(
        default=None,
        alias="from",
        description=f"first UTC day (YYYY-MM-DD, {FIRST_DAY} or later); default: 6 days "
        "before `to`",
    )
    to: date | None = Field(
        default=None,
        description=f"last UTC day, included ({LAST_DAY} or earlier); default: today",
    )

    @field_validator("from_", "to")
    @classmethod
    def _on_the_calendar(cls, value: date | None) -> date | None:
        # Beyond these, the bounds of the days in UTC are not datetimes.
        if value is not None and not FIRST_DAY <= value <= LAST_DAY:
            raise ValueError(f"must be a day from {FIRST_DAY} to {LAST_DAY}")
        return value

    @model_validator(mode="after")
    def _range(self) -> SummaryQuery:
        end = self.to or utcnow().date()
        start = self.from_ or end - timedelta(days=min(6, (end - FIRST_DAY).days))
        if start > end:
            raise ValueError("from must not be after to")
        if (end - start).days + 1 > MAX_DAYS:
            raise ValueError(f"the range may span at most {MAX_DAYS} days")
        self.from_, self.to = start, end
        return self


class Timing(Output):
    count: int
    median: float | None = Field(description="seconds")
    p90: float | None = Field(description="seconds")


class FirstResponse(Timing):
    unanswered: int = Field(description="conversations opened in the range with no reply yet")


class Resolution(Timing):
    estimated: int = Field(description="resolved conversations timed to their last activity")


class Volume(Output):
    conversations: int = Field(description="conversations opened")
    messages_in: int
    messages_out: int = Field(description="outbound messages (private notes excluded)")


class Day(Output):
    date: str
    channels: dict[str, Volume]


class Totals(Volume):
    by_channel: dict[str, Volume]


class AgentReport(Output):
    id: str
    name: str | None
    email: str | None
    replies: int
    notes: int
    conversations_assigned: int
    conversations_resolved: int
    first_response: Timing
    resolution: Timing


class SlaCounts(Output):
    breaches: int = Field(description="first responses late (stage assignee)")
    escalations: int = Field(description="still unanswered escalate_after later (supervisors)")


class SlaReport(SlaCounts):
    by_inbox: dict[str, SlaCounts]
    by_agent: dict[str, SlaCounts] = Field(
        description="by the assignee when it breached (agent id, or unassigned)"
    )


class SummaryOut(Output):
    from_: str = Field(alias="from")
    to: str
    timezone: str
    days: list[Day]
    totals: Totals
    first_response: FirstResponse
    resolution: Resolution
    agents: list[AgentReport]
    sla: SlaReport | None = None


@table.route(
    "GET",
    "/api/reports/summary",
    summary="Volumes per channel per day, first response and resolution times, per agent",
    role="supervisor",
    query=SummaryQuery,
    response=SummaryOut,
)
async def report_summary(call: Call) -> dict[str, Any]:
    query: SummaryQuery = call.query
    assert call.hub.store is not None and query.from_ is not None and query.to is not None
    return await summary(call.hub.store, query.from_, query.to)
