"""Campaigns: create, count an audience, start/pause/cancel, statistics and the
per-recipient list. Supervisors and admins manage campaigns; agents get 403.

Thin handlers: parse, authorise, call `hub.services.campaigns`, shape the answer.
The scheduler's campaigns job does the planning and sending.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from hub.api.base import Call, RouteTable, not_found
from hub.api.schemas import AttributeKey, Input, Label, Output
from hub.model import utcnow
from hub.services import campaigns
from hub.store import Store

table = RouteTable()

ROLE = "supervisor"  # supervisors and admins

Scalar = StrictBool | StrictInt | StrictFloat | Annotated[str, Field(max_length=256)]
Comparison = dict[
    Literal["eq", "ne", "gt", "gte", "lt", "lte", "in"],
    Scalar | Annotated[list[Scalar], Field(max_length=100)],
]
Channel = Literal["sms", "whatsapp", "telegram", "email", "voice", "form"]
HHMM = Annotated[str, Field(max_length=5)]
When = Annotated[str, Field(max_length=40)]


class LastActivityIn(Input):
    after: When | None = None
    before: When | None = None


class AudienceIn(Input):
    labels: Annotated[list[Label], Field(max_length=50)] = []
    channels: Annotated[list[Channel], Field(max_length=6)] = []
    attributes: Annotated[dict[AttributeKey, Scalar | Comparison], Field(max_length=20)] = {}
    last_activity: LastActivityIn | None = None


class TemplateIn(Input):
    name: Annotated[str, Field(max_length=512)] | None = None
    language: Annotated[str, Field(max_length=16)] | None = None
    parameters: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=20)] = []


class MessageIn(Input):
    text: Annotated[str, Field(max_length=campaigns.MAX_TEXT)] | None = None
    template: TemplateIn | None = None


class QuietHoursIn(Input):
    start: HHMM
    end: HHMM


class CampaignIn(Input):
    name: Annotated[str, Field(max_length=200)]
    audience: AudienceIn
    message: MessageIn
    inbox: Annotated[str, Field(max_length=64)] | None = None
    send_at: When | None = None
    local_time: HHMM | None = None
    quiet_hours: QuietHoursIn | None = None


class AudienceCountIn(Input):
    audience: AudienceIn


class AudienceCountOut(Output):
    count: int


class StatsOut(Output):
    targeted: int
    queued: int
    sent: int
    delivered: int
    failed: int
    skipped: int
    unknown: int


class CampaignOut(Output):
    id: str
    name: str
    status: str
    audience: dict[str, Any]
    message: dict[str, Any]
    inbox: str | None
    send_at: str | None
    local_time: str | None
    quiet_hours: dict[str, str] | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    stats: StatsOut | None


class CampaignList(Output):
    items: list[CampaignOut]
    next_cursor: str | None


class ListQuery(Input):
    limit: Annotated[int, Field(ge=1, le=100)] = 25
    cursor: Annotated[str, Field(max_length=64)] | None = None


RecipientStatus = Literal["pending", "queued", "sent", "delivered", "failed", "skipped", "unknown"]


class RecipientQuery(Input):
    status: RecipientStatus | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=64)] | None = None


class RecipientOut(Output):
    contact_id: str
    contact_name: str | None
    channel: str | None
    status: str
    reason: str | None
    message_id: str | None
    sent_at: str | None


class RecipientList(Output):
    items: list[RecipientOut]
    next_cursor: str | None


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


async def _view(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    stats = await campaigns.stats(store, doc)
    return campaigns.campaign_view(doc, stats)


async def _campaign(call: Call) -> dict[str, Any]:
    doc = await campaigns.get(_store(call), call.param("id"))
    if doc is None:
        raise not_found("campaign")
    return doc


@table.route(
    "GET",
    "/api/campaigns",
    summary="Campaigns, newest first, with their statistics",
    role=ROLE,
    query=ListQuery,
    response=CampaignList,
)
async def list_campaigns(call: Call) -> dict[str, Any]:
    query: ListQuery = call.query
    store = _store(call)
    docs, next_cursor = await campaigns.page(store, cursor=query.cursor, limit=query.limit)
    return {"items": [await _view(store, d) for d in docs], "next_cursor": next_cursor}


@table.route(
    "POST",
    "/api/campaigns",
    summary="Create a campaign (a draft until started)",
    role=ROLE,
    body=CampaignIn,
    response=CampaignOut,
    status=201,
)
async def create_campaign(call: Call) -> dict[str, Any]:
    body: CampaignIn = call.body
    store = _store(call)
    doc = await campaigns.parse_campaign(
        store, body.model_dump(exclude_unset=True), inboxes=call.hub.adapters, now=utcnow()
    )
    doc = await campaigns.create(store, doc, agent_id=call.me.agent_id)
    await call.accounts.audit(call.me.agent_id, "campaign.created", target=str(doc["_id"]))
    return await _view(store, doc)


@table.route(
    "POST",
    "/api/campaigns/audience",
    summary="How many contacts an audience holds now (the live count while composing)",
    role=ROLE,
    body=AudienceCountIn,
    response=AudienceCountOut,
)
async def count_audience(call: Call) -> dict[str, Any]:
    body: AudienceCountIn = call.body
    raw = body.audience.model_dump(exclude_unset=True)
    campaigns.parse_conditions(raw.get("attributes"))
    count = await campaigns.count_audience(_store(call), raw)
    return {"count": count}


@table.route(
    "GET",
    "/api/campaigns/{id}",
    summary="One campaign with its statistics",
    role=ROLE,
    response=CampaignOut,
)
async def get_campaign(call: Call) -> dict[str, Any]:
    return await _view(_store(call), await _campaign(call))


async def _controlled(call: Call, action: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The answer to a control that changed the campaign to `doc`, audited. (Each
    handler calls its own service function: what it may refuse is that one's.)"""
    await call.accounts.audit(call.me.agent_id, f"campaign.{action}", target=str(doc["_id"]))
    return await _view(_store(call), doc)


@table.route(
    "POST",
    "/api/campaigns/{id}/start",
    summary="Start a draft (now, or at its send_at), or resume a paused campaign",
    role=ROLE,
    response=CampaignOut,
)
async def start_campaign(call: Call) -> dict[str, Any]:
    # CampaignStateError, or CampaignError: a draft whose send_at has passed.
    doc = await campaigns.start(_store(call), str((await _campaign(call))["_id"]))
    return await _controlled(call, "start", doc)


@table.route(
    "POST",
    "/api/campaigns/{id}/pause",
    summary="Pause a scheduled or running campaign",
    role=ROLE,
    response=CampaignOut,
)
async def pause_campaign(call: Call) -> dict[str, Any]:
    doc = await campaigns.pause(_store(call), str((await _campaign(call))["_id"]))
    return await _controlled(call, "pause", doc)


@table.route(
    "POST",
    "/api/campaigns/{id}/cancel",
    summary="Cancel a campaign: no further messages go",
    role=ROLE,
    response=CampaignOut,
)
async def cancel_campaign(call: Call) -> dict[str, Any]:
    doc = await campaigns.cancel(_store(call), str((await _campaign(call))["_id"]))
    return await _controlled(call, "cancel", doc)


@table.route(
    "GET",
    "/api/campaigns/{id}/recipients",
    summary="A campaign's per-recipient records",
    role=ROLE,
    query=RecipientQuery,
    response=RecipientList,
)
async def list_recipients(call: Call) -> dict[str, Any]:
    query: RecipientQuery = call.query
    doc = await _campaign(call)
    docs, next_cursor = await campaigns.recipients(
        _store(call), str(doc["_id"]), status=query.status, cursor=query.cursor, limit=query.limit
    )
    names = await campaigns.contact_names(_store(call), docs)
    return {
        "items": [campaigns.recipient_view(d, names.get(d["contact_id"])) for d in docs],
        "next_cursor": next_cursor,
    }
