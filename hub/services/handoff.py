"""Handoff: a bot's conversation passed to people, and an agent taking one over.

A conversation a bot serves has `bot` set (its bot's id) and status `pending`.

- `hand_off` (the bot gives up, fails, or the customer asks for a person) makes it
  `open`, `bot` null, assigns it by the inbox's `assignment`
  (`hub.services.assignment`), stores a `system` message with the reason, and
  publishes `conversation.updated`.
- `take_over` (an agent's reply, or the inbox's "Take over" button) makes it
  `open`, `bot` null, assigned to that agent.

Both are one conditional update on `bot` being set, so of two hub processes, or a
handoff and a takeover at the same moment, exactly one changes the conversation.

A bot's reply is queued only while the conversation is still the bot's (the bot
runtime checks with `still_bot` before and after queueing a turn's replies and
calls `withdraw_bot_replies`; `reply_as_bot` does both for one reply), and taken back
(while it is still queued) when an agent took the conversation over meanwhile; a
takeover takes back the bot's replies still queued. So a customer never gets the
bot's answer after a person has taken over.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument

from hub.model import Event, utcnow
from hub.services import assignment
from hub.services.conversations import view_of
from hub.shapes import message_view
from hub.store import Store, new_id

if TYPE_CHECKING:
    from hub.services.events import Events
    from hub.services.runtime import Hub

log = logging.getLogger("hub.handoff")

MAX_REASON = 1000  # characters of a handoff's reason kept in the thread (a bot's text)

# What a conversation becomes when people take it from its bot.
_TO_PEOPLE = {"bot": None, "status": "open", "snooze_until": None, "resolved_at": None}


def _parts(hub: Hub) -> tuple[Store, Events]:
    assert hub.store is not None and hub.events is not None
    return hub.store, hub.events


def system_message_doc(conversation: dict[str, Any], text: str) -> dict[str, Any]:
    """A line in the thread from the hub itself (`sender.type` system, kind event):
    shown to agents, never sent to the customer."""
    return {
        "_id": new_id(),
        "conversation_id": conversation["_id"],
        "inbox": conversation.get("inbox"),
        "channel": conversation.get("channel"),
        "direction": "out",
        "kind": "event",
        "text": text,
        "sender": {"type": "system", "id": None},
        "status": None,
        "error": None,
        "attachments": [],
        "provider_id": None,
        "provider_key": None,
        "created_at": utcnow(),
    }


async def hand_off(
    hub: Hub, conversation_id: str, *, reason: str | None, by: str | None = None
) -> bool:
    """Hand a bot's conversation to people: `open`, `bot` null, assigned by the
    inbox's `assignment`, a `system` message with `reason` (when given), and
    `conversation.updated`. False (and nothing done) when it has no bot any more
    (handed off or taken over already, here or in another hub process)."""
    store, events = _parts(hub)
    before = await store.conversations.find_one_and_update(
        {"_id": conversation_id, "bot": {"$ne": None}},
        {"$set": _TO_PEOPLE},
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        return False
    doc = {**before, **_TO_PEOPLE}
    assignee = await assignment.assign(hub, doc)
    if assignee is not None:
        doc["assignee_id"] = assignee
    published: list[Event] = []
    if reason:
        message = system_message_doc(doc, reason[:MAX_REASON])
        await store.messages.insert_one(message)
        published.append(Event("message.created", message_view(message)))
    fresh = await store.conversations.find_one({"_id": conversation_id}) or doc
    view = await view_of(store, fresh)
    published.append(Event("conversation.updated", {**view, "changed_by": by}))
    await events.publish(published)
    log.info(
        "conversation handed off",
        extra={
            "conversation_id": conversation_id,
            "bot": before.get("bot"),
            "reason": reason,
            "assignee": assignee,
        },
    )
    return True


async def take_over(hub: Hub, conversation_id: str, agent_id: str) -> dict[str, Any] | None:
    """An agent takes a bot's conversation: `open`, `bot` null, assigned to the
    agent, the bot's replies still queued taken back, `conversation.updated`.
    Returns the conversation's view, or None when it had no bot any more."""
    store, events = _parts(hub)
    # `taken_over_at`: the dispatcher cancels, at its turn, a bot answer queued
    # before it that a dispatcher had already claimed (so it could not be withdrawn).
    fields = {**_TO_PEOPLE, "assignee_id": agent_id, "taken_over_at": utcnow()}
    doc = await store.conversations.find_one_and_update(
        {"_id": conversation_id, "bot": {"$ne": None}},
        {"$set": fields},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return None
    await withdraw_bot_replies(hub, conversation_id)
    view = await view_of(store, doc)
    await events.publish([Event("conversation.updated", {**view, "changed_by": agent_id})])
    log.info(
        "conversation taken over", extra={"conversation_id": conversation_id, "agent": agent_id}
    )
    return view


async def still_bot(hub: Hub, conversation_id: str, bot_id: str) -> bool:
    """Whether the conversation is still served by the bot `bot_id`."""
    store, _ = _parts(hub)
    found = await store.conversations.find_one({"_id": conversation_id, "bot": bot_id}, {"_id": 1})
    return found is not None


async def reply_as_bot(
    hub: Hub, conversation_id: str, bot_id: str, **reply: Any
) -> dict[str, Any] | None:
    """Queue the bot's reply (`Hub.reply`'s keywords, without `sender`) while the
    conversation is still the bot's; None when it is not (handed off, taken over),
    also when that happened while the reply was being queued (it is taken back)."""
    if not await still_bot(hub, conversation_id, bot_id):
        return None
    doc = await hub.reply(conversation_id, sender={"type": "bot", "id": bot_id}, **reply)
    if await still_bot(hub, conversation_id, bot_id):
        return doc
    await _withdraw(hub, str(doc["_id"]))
    return None


async def withdraw_bot_replies(hub: Hub, conversation_id: str) -> int:
    """Take back the bot's replies in the conversation that are still queued (not
    yet taken by a dispatcher); they become `cancelled`. The number taken back."""
    store, _ = _parts(hub)
    queued = await store.messages.find(
        {"conversation_id": conversation_id, "status": "queued"}, {"sender": 1}
    ).to_list(1000)
    taken = 0
    for message in queued:
        if (message.get("sender") or {}).get("type") == "bot":
            taken += await _withdraw(hub, str(message["_id"]))
    return taken


async def _withdraw(hub: Hub, message_id: str) -> int:
    store, events = _parts(hub)
    removed = await store.outbox.delete_one({"_id": message_id, "state": "queued"})
    if removed.deleted_count == 0:
        return 0  # a dispatcher has it: it is being sent (it was queued before the takeover)
    doc = await store.messages.find_one_and_update(
        {"_id": message_id, "status": "queued"},
        {"$set": {"status": "cancelled", "error": "taken back: people took the conversation"}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is not None:
        await events.publish([Event("message.updated", message_view(doc))])
    return 1
