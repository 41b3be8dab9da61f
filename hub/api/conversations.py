"""Conversations and their messages: the inbox list, one thread, replies, notes.

Thin handlers: parse, authorise, call `hub.services.conversations`, shape the answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.contacts import matching_contact_ids
from hub.api.media_out import reply_with_files
from hub.api.schemas import (
    ConversationList,
    ConversationOpen,
    ConversationOut,
    ConversationPatch,
    ConversationQuery,
    MessageIn,
    MessageList,
    MessageOut,
    MessageQuery,
)
from hub.api.templates import template_send
from hub.services import conversations, handoff, search, send_later
from hub.services.campaigns import inbox_media
from hub.shapes import message_view
from hub.store import Store

table = RouteTable()


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


async def visible_conversation(call: Call, conversation_id: str) -> dict[str, Any]:
    """The conversation, if it exists (404) and this agent may see its inbox (403)."""
    doc = await conversations.get(_store(call), conversation_id)
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
    inboxes = call.me.inboxes
    if query.inbox is not None:
        if not call.me.sees(query.inbox):
            raise ApiError(403, "forbidden", f"you do not see inbox {query.inbox}")
        inboxes = frozenset({query.inbox})
    filters: dict[str, Any] = {}
    if query.assignee is not None:
        assignee = {"me": call.me.agent_id, "none": None}.get(query.assignee, query.assignee)
        filters["assignee"] = assignee
    if query.bot is not None:
        filters["bot"] = query.bot
    if query.overdue is not None:
        filters["overdue"] = query.overdue
    if query.q and query.q.strip():  # any message's words, or the contact (hub.services.search)
        items, next_cursor = await search.page(
            _store(call),
            text=query.q,
            status=query.status,
            inboxes=inboxes,
            default_region=call.hub.settings.identity.default_region,
            cursor=query.cursor,
            limit=query.limit,
            **filters,
        )
        return {"items": items, "next_cursor": next_cursor}
    contact_ids = await matching_contact_ids(call, query.q, limit=200) if query.q else []
    items, next_cursor = await conversations.page(
        _store(call),
        status=query.status,
        inboxes=inboxes,
        text=query.q,
        contact_ids=contact_ids,
        cursor=query.cursor,
        limit=query.limit,
        **filters,
    )
    return {"items": items, "next_cursor": next_cursor}


@table.route(
    "POST",
    "/api/conversations",
    summary="Open (or find) a contact's conversation in an inbox, so an agent writes first",
    body=ConversationOpen,
    response=ConversationOut,
    status=201,
)
async def open_conversation(call: Call) -> Any:
    body: ConversationOpen = call.body
    if not call.me.sees(body.inbox):
        raise ApiError(403, "forbidden", f"you do not see inbox {body.inbox}")
    channel = call.hub.adapters.get(body.inbox)
    if channel is None:
        raise not_found("inbox")
    media = inbox_media(channel)
    if body.medium is not None:
        if body.medium not in media:
            raise ApiError(
                422, "no_identity", f"medium: inbox {body.inbox} does not write on {body.medium}"
            )
        media = (body.medium,)
    assert call.hub.ingestor is not None
    try:
        opened = await conversations.open_for_contact(
            _store(call), call.hub.ingestor, body.contact_id, body.inbox, media
        )
    except conversations.NoIdentityFor as error:
        raise ApiError(422, "no_identity", str(error)) from None
    if opened is None:
        raise not_found("contact")
    doc, created = opened
    view = await conversations.view_of(_store(call), doc)
    return view if created else web.json_response(view, status=200)


@table.route("GET", "/api/conversations/{id}", summary="One conversation", response=ConversationOut)
async def get_conversation(call: Call) -> dict[str, Any]:
    doc = await visible_conversation(call, call.param("id"))
    return await conversations.view_of(_store(call), doc)


@table.route(
    "PATCH",
    "/api/conversations/{id}",
    summary="Change a conversation's status (snooze until a time), assignee, labels, unread",
    body=ConversationPatch,
    response=ConversationOut,
)
async def patch_conversation(call: Call) -> dict[str, Any]:
    body: ConversationPatch = call.body
    doc = await visible_conversation(call, call.param("id"))
    given = body.model_fields_set
    change = conversations.Change(
        snooze_until=body.snooze_until,
        labels=body.labels,
        mark_read=body.unread is not None,
        **({"status": body.status} if "status" in given else {}),
        **({"assignee_id": body.assignee_id} if "assignee_id" in given else {}),
    )
    assert call.hub.events is not None
    view = await conversations.update(
        _store(call),
        call.hub.events,
        doc,
        change,
        by=call.me.agent_id,
        inboxes_of=call.accounts.visible_inboxes,
    )
    audited: dict[str, tuple[str, dict[str, Any]]] = {
        "status": ("conversation.status", {"status": body.status, "until": body.snooze_until}),
        "assignee_id": ("conversation.assigned", {"assignee_id": body.assignee_id}),
        "labels": ("conversation.labels", {"labels": body.labels}),
    }
    for field, (action, detail) in audited.items():
        if field in given:
            await call.accounts.audit(call.me.agent_id, action, target=doc["_id"], **detail)
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
    conversation_id = call.param("id")
    await visible_conversation(call, conversation_id)
    items, next_cursor = await conversations.messages(
        _store(call), conversation_id, before=query.before, limit=query.limit
    )
    return {"items": items, "next_cursor": next_cursor}


@table.route(
    "POST",
    "/api/conversations/{id}/messages",
    summary="Reply through the conversation's channel (queued), or add a private note",
    body=MessageIn,
    response=MessageOut,
    status=201,
    multipart=True,
)
async def post_message(call: Call) -> dict[str, Any]:
    body: MessageIn | None = call.body
    conversation_id = call.param("id")
    conversation = await visible_conversation(call, conversation_id)
    if body is None:  # multipart/form-data: a reply or a note with files
        answer = await reply_with_files(call, conversation)
        action = "note.added" if answer.get("kind") == "note" else "message.replied"
        await call.accounts.audit(
            call.me.agent_id, action, target=conversation_id, message=answer["id"], files=True
        )
        return answer
    sender = {"type": "agent", "id": call.me.agent_id}
    if body.send_at is not None:  # send later: scheduled, sent by the scheduler
        if body.private:
            raise ApiError(400, "invalid", "send_at: a private note is not sent")
        assert call.hub.events is not None
        assert body.text is not None  # MessageIn: a text unless a template
        doc = await send_later.schedule(
            _store(call),
            call.hub.events,
            conversation,
            text=body.text,
            sender=sender,
            send_at=body.send_at,
            subject=body.subject,
        )
        await call.accounts.audit(
            call.me.agent_id, "message.replied", target=conversation_id, message=doc["_id"]
        )
        return message_view(doc)
    if body.private:
        assert call.hub.events is not None and body.text is not None
        note = await conversations.add_note(
            _store(call), call.hub.events, conversation, body.text, sender
        )
        await call.accounts.audit(
            call.me.agent_id, "note.added", target=conversation_id, message=note["_id"]
        )
        return message_view(note)
    template, text = None, body.text
    if body.template is not None:  # WhatsApp: checked against the approved list first
        template, text = await template_send(call, conversation, body.template)
    if conversation.get("bot"):
        # An agent's reply takes a bot's conversation over at once (the bot stops).
        await handoff.take_over(call.hub, conversation_id, call.me.agent_id)
    doc = await call.hub.reply(
        conversation_id, text=text, sender=sender, template=template, subject=body.subject
    )
    await call.accounts.audit(
        call.me.agent_id, "message.replied", target=conversation_id, message=doc["_id"]
    )
    return message_view(doc)
