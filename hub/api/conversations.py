"""Conversations and their messages: the inbox list, one thread, replies, notes."""

from __future__ import annotations

import re
from typing import Any

from hub.api.base import ApiError, Call, RouteTable, not_found, page_by_time
from hub.api.contacts import matching_contact_ids
from hub.api.schemas import (
    ConversationList,
    ConversationOut,
    ConversationPatch,
    ConversationQuery,
    MessageIn,
    MessageList,
    MessageOut,
    MessageQuery,
)
from hub.events import Event
from hub.model import utcnow
from hub.outbox import OutboxError
from hub.store import Store, find_by_ids, new_id
from hub.views import conversation_view, iso, message_view

table = RouteTable()


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


def full_view(doc: dict[str, Any], contact: dict[str, Any] | None) -> dict[str, Any]:
    view = conversation_view(doc, contact)
    view["snooze_until"] = iso(doc.get("snooze_until"))
    return view


async def visible_conversation(call: Call, conversation_id: str) -> dict[str, Any]:
    """The conversation, if it exists (404) and this agent may see its inbox (403)."""
    doc = await _store(call).conversations.find_one({"_id": conversation_id})
    if doc is None:
        raise not_found("conversation")
    if not call.me.sees(doc.get("inbox")):
        raise ApiError(403, "forbidden", "this conversation is in an inbox you do not see")
    return doc


@table.route(
    "GET",
    "/api/conversations",
    summary="The inbox: conversations, newest activity first",
    query=ConversationQuery,
    response=ConversationList,
)
async def list_conversations(call: Call) -> dict[str, Any]:
    query: ConversationQuery = call.query
    store = _store(call)
    clauses: list[dict[str, Any]] = []
    if query.status is not None:
        clauses.append({"status": query.status})
    visible = call.me.inboxes
    if query.inbox is not None:
        if not call.me.sees(query.inbox):
            raise ApiError(403, "forbidden", f"you do not see inbox {query.inbox}")
        clauses.append({"inbox": query.inbox})
    elif visible is not None:
        if not visible:
            return {"items": [], "next_cursor": None}
        names = sorted(visible)
        clauses.append({"inbox": names[0] if len(names) == 1 else {"$in": names}})
    if query.assignee is not None:
        assignee = {"me": call.me.agent_id, "none": None}.get(query.assignee, query.assignee)
        clauses.append({"assignee_id": assignee})
    if query.q:
        contact_ids = await matching_contact_ids(call, query.q, limit=200)
        text = {"last_message.text": {"$regex": re.escape(query.q), "$options": "i"}}
        clauses.append(
            {"$or": [{"contact_id": {"$in": contact_ids}}, text]} if contact_ids else text
        )
    docs, next_cursor = await page_by_time(
        store.conversations, clauses, "last_activity_at", query.cursor, query.limit
    )
    contacts = await find_by_ids(
        store.contacts, list(dict.fromkeys(d.get("contact_id") for d in docs))
    )
    items = [full_view(d, contacts.get(d.get("contact_id"))) for d in docs]
    return {"items": items, "next_cursor": next_cursor}


@table.route("GET", "/api/conversations/{id}", summary="One conversation", response=ConversationOut)
async def get_conversation(call: Call) -> dict[str, Any]:
    doc = await visible_conversation(call, call.param("id"))
    contact = await _store(call).contacts.find_one({"_id": doc.get("contact_id")})
    return full_view(doc, contact)


@table.route(
    "PATCH",
    "/api/conversations/{id}",
    summary="Change a conversation's status (snooze until a time), assignee, labels, unread",
    body=ConversationPatch,
    response=ConversationOut,
)
async def patch_conversation(call: Call) -> dict[str, Any]:
    body: ConversationPatch = call.body
    store = _store(call)
    conversation_id = call.param("id")
    doc = await visible_conversation(call, conversation_id)
    given = body.model_fields_set
    fields: dict[str, Any] = {}
    if "status" in given and body.status is None:
        raise ApiError(400, "invalid", "status: cannot be null")
    if body.status == "snoozed":
        until = body.snooze_until
        if until is None:
            raise ApiError(400, "invalid", "snooze_until: required to snooze")
        if until.tzinfo is None:
            raise ApiError(400, "invalid", "snooze_until: give a time zone (Z for UTC)")
        if until <= utcnow():
            raise ApiError(400, "invalid", "snooze_until: must be in the future")
        fields.update(status="snoozed", snooze_until=until)
    elif body.status is not None:
        if body.snooze_until is not None:
            raise ApiError(400, "invalid", "snooze_until: only with status snoozed")
        fields.update(status=body.status, snooze_until=None)
    if "status" in fields and fields["status"] != doc.get("status"):
        # When it was resolved (the reports' resolution time), and no longer once
        # it is open again.
        fields["resolved_at"] = utcnow() if fields["status"] == "resolved" else None
    elif body.snooze_until is not None:
        raise ApiError(400, "invalid", "snooze_until: only with status snoozed")
    if "assignee_id" in given:
        if body.assignee_id is not None:
            agent = await store.agents.find_one({"_id": body.assignee_id})
            if agent is None or not agent.get("active", True):
                raise ApiError(400, "invalid", "assignee_id: no such active agent")
            inboxes = await call.accounts.visible_inboxes(agent)
            if inboxes is not None and doc.get("inbox") not in inboxes:
                raise ApiError(422, "no_access", "the assignee does not see this inbox")
        fields["assignee_id"] = body.assignee_id
    if body.labels is not None:
        fields["labels"] = list(dict.fromkeys(body.labels))
    if body.unread is not None:
        fields["unread"] = 0
    if fields:
        await store.conversations.update_one({"_id": conversation_id}, {"$set": fields})
        doc = await store.conversations.find_one({"_id": conversation_id}) or {**doc, **fields}
    contact = await store.contacts.find_one({"_id": doc.get("contact_id")})
    view = full_view(doc, contact)
    if fields:
        changed = {**view, "changed_by": call.me.agent_id}
        await call.hub.publish([Event("conversation.updated", changed)])
    return view


@table.route(
    "GET",
    "/api/conversations/{id}/messages",
    summary="A conversation's messages, newest first; `before` is a message id",
    query=MessageQuery,
    response=MessageList,
)
async def list_messages(call: Call) -> dict[str, Any]:
    query: MessageQuery = call.query
    store = _store(call)
    conversation_id = call.param("id")
    await visible_conversation(call, conversation_id)
    filt: dict[str, Any] = {"conversation_id": conversation_id}
    if query.before is not None:
        anchor = await store.messages.find_one({"_id": query.before})
        if anchor is None or anchor.get("conversation_id") != conversation_id:
            raise ApiError(400, "invalid", "before: not a message of this conversation")
        at = anchor.get("created_at")
        filt["$or"] = [
            {"created_at": {"$lt": at}},
            {"created_at": at, "_id": {"$lt": anchor["_id"]}},
        ]
    docs = (
        await store.messages.find(filt)
        .sort([("created_at", -1), ("_id", -1)])
        .limit(query.limit + 1)
        .to_list()
    )
    more = len(docs) > query.limit
    docs = docs[: query.limit]
    return {
        "items": [message_view(d) for d in docs],
        "next_cursor": str(docs[-1]["_id"]) if more and docs else None,
    }


@table.route(
    "POST",
    "/api/conversations/{id}/messages",
    summary="Reply through the conversation's channel (queued), or add a private note",
    body=MessageIn,
    response=MessageOut,
    status=201,
)
async def post_message(call: Call) -> dict[str, Any]:
    body: MessageIn = call.body
    store = _store(call)
    conversation_id = call.param("id")
    conversation = await visible_conversation(call, conversation_id)
    sender = {"type": "agent", "id": call.me.agent_id}
    if body.private:
        # A note is stored in the thread and never enters the outbox.
        doc: dict[str, Any] = {
            "_id": new_id(),
            "conversation_id": conversation_id,
            "inbox": conversation.get("inbox"),
            "channel": conversation.get("channel"),
            "direction": "out",
            "kind": "note",
            "text": body.text,
            "sender": sender,
            "status": None,
            "error": None,
            "attachments": [],
            "provider_id": None,
            "provider_key": None,
            "created_at": utcnow(),
        }
        await store.messages.insert_one(doc)
        await call.hub.publish([Event("message.created", message_view(doc))])
        return message_view(doc)
    try:
        doc = await call.hub.reply(
            conversation_id, text=body.text, sender=sender, subject=body.subject
        )
    except OutboxError as error:
        raise ApiError(409, "reply_refused", str(error)) from None
    return message_view(doc)
