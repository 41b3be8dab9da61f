"""Send later and reminders: editing or cancelling a scheduled reply, and an
agent's reminders on a conversation (hub.services.send_later, .reminders).

A scheduled reply is made by `POST /api/conversations/{id}/messages` with
`send_at` (hub.api.conversations). Every route here needs an agent who may see
the conversation; a reminder is its agent's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from hub.api.base import ApiError, Call, RouteTable
from hub.api.conversations import visible_conversation
from hub.api.schemas import Input, MessageOut, OkOut, Output
from hub.services import reminders, send_later
from hub.shapes import message_view
from hub.store import Store

table = RouteTable()


class MessagePatch(Input):
    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    send_at: datetime | None = Field(default=None, description="a future time")


class ReminderIn(Input):
    at: datetime = Field(description="when to be reminded: a future time")
    note: Annotated[str, Field(max_length=500)] | None = None


class ReminderOut(Output):
    id: str
    conversation_id: str | None
    inbox: str | None
    agent_id: str | None
    at: str | None
    note: str | None
    status: str = Field(description="pending, or fired")
    fired_at: str | None
    created_at: str | None


class ReminderList(Output):
    items: list[ReminderOut]
    next_cursor: str | None = None


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


@table.route(
    "PATCH",
    "/api/conversations/{id}/messages/{message_id}",
    summary="Change a scheduled reply's text or send_at (409 once it went)",
    body=MessagePatch,
    response=MessageOut,
)
async def patch_scheduled(call: Call) -> dict[str, Any]:
    body: MessagePatch = call.body
    conversation = await visible_conversation(call, call.param("id"))
    if body.text is None and body.send_at is None:
        raise ApiError(400, "invalid", "give text or send_at")
    assert call.hub.events is not None
    doc = await send_later.edit(
        _store(call),
        call.hub.events,
        str(conversation["_id"]),
        call.param("message_id"),
        text=body.text,
        send_at=body.send_at,
    )
    return message_view(doc)


@table.route(
    "DELETE",
    "/api/conversations/{id}/messages/{message_id}",
    summary="Cancel a scheduled reply (status cancelled; 409 once it went)",
    response=MessageOut,
)
async def cancel_scheduled(call: Call) -> dict[str, Any]:
    conversation = await visible_conversation(call, call.param("id"))
    assert call.hub.events is not None
    doc = await send_later.cancel(
        _store(call),
        call.hub.events,
        str(conversation["_id"]),
        call.param("message_id"),
        by=call.me.agent_id,
    )
    return message_view(doc)


@table.route(
    "POST",
    "/api/conversations/{id}/reminders",
    summary="Remind me of this conversation at a time (reminder.due over the WebSocket)",
    body=ReminderIn,
    response=ReminderOut,
    status=201,
)
async def create_reminder(call: Call) -> dict[str, Any]:
    body: ReminderIn = call.body
    conversation = await visible_conversation(call, call.param("id"))
    doc = await reminders.create(
        _store(call), conversation, call.me.agent_id, at=body.at, note=body.note
    )
    return reminders.reminder_view(doc)


@table.route(
    "GET",
    "/api/conversations/{id}/reminders",
    summary="My pending reminders on this conversation, soonest first",
    response=ReminderList,
)
async def list_conversation_reminders(call: Call) -> dict[str, Any]:
    conversation = await visible_conversation(call, call.param("id"))
    docs = await reminders.of_agent(_store(call), call.me.agent_id, str(conversation["_id"]))
    return {"items": [reminders.reminder_view(d) for d in docs], "next_cursor": None}


@table.route(
    "GET",
    "/api/reminders",
    summary="My pending reminders, soonest first",
    response=ReminderList,
)
async def list_reminders(call: Call) -> dict[str, Any]:
    docs = await reminders.of_agent(_store(call), call.me.agent_id)
    return {"items": [reminders.reminder_view(d) for d in docs], "next_cursor": None}


@table.route(
    "DELETE",
    "/api/reminders/{id}",
    summary="Delete one of my reminders",
    response=OkOut,
)
async def delete_reminder(call: Call) -> dict[str, Any]:
    await reminders.delete(_store(call), call.me.agent_id, call.param("id"))
    return {"ok": True}
