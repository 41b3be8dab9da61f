"""The audit log for admins: `GET /api/audit?agent=&action=&from=&to=&cursor=`
(`hub.services.audit` records it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from hub.api.base import ApiError, Call, RouteTable
from hub.api.schemas import Id, Input, Output
from hub.services import audit

table = RouteTable()


class AuditQuery(Input):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    agent: Id | None = Field(default=None, description='an agent id, or "none" (not logged in)')
    action: Annotated[str, Field(max_length=64, pattern=r"^[a-z_.]+$")] | None = Field(
        default=None, description='an action, or a family ending in "." (e.g. "conversation.")'
    )
    since: datetime | None = Field(default=None, alias="from", description="from (inclusive)")
    until: datetime | None = Field(default=None, alias="to", description="to (exclusive)")
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=300)] | None = None


class AuditAgent(Output):
    id: str
    name: str | None
    email: str | None


class AuditEntry(Output):
    id: str
    at: str | None
    agent: AuditAgent | None = Field(description="null: nobody logged in (a failed login)")
    action: str
    target: str | None
    address: str | None = Field(description="the client's IP address")
    detail: dict[str, Any]


class AuditList(Output):
    items: list[AuditEntry]
    next_cursor: str | None


@table.route(
    "GET",
    "/api/audit",
    summary="The audit log, newest first: who changed what, when and from where (admins)",
    role="admin",
    query=AuditQuery,
    response=AuditList,
)
async def list_audit(call: Call) -> dict[str, Any]:
    query: AuditQuery = call.query
    for name, at in (("from", query.since), ("to", query.until)):
        if at is not None and at.utcoffset() is None:
            raise ApiError(400, "invalid", f"{name}: give a time zone (Z for UTC)")
    assert call.hub.store is not None
    items, next_cursor = await audit.page(
        call.hub.store,
        agent=query.agent,
        action=query.action,
        since=query.since,
        until=query.until,
        cursor=query.cursor,
        limit=query.limit,
    )
    return {"items": items, "next_cursor": next_cursor}
