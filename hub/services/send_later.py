"""Send later: an agent's reply scheduled for a time (`send_at`).

The message is stored at once with status `scheduled` and a row in
`scheduled_sends` (which, like the outbox, only holds work still to do). Until
it goes it can be edited or cancelled; `queue_due` (run by the scheduler's
send-later job) hands each due one to the outbox.

Exactly once: a message leaves `scheduled` only by one conditional update
(`scheduled` -> `queued`, or -> `cancelled`), so of two hub processes, or an
agent cancelling while the job runs, one wins. The winner then writes the outbox
item, keyed by the message id (a second write of it is refused by the store),
and removes the row. A process that dies between the two leaves the row behind;
the next run finds the message `queued` and writes the item again, which is a
no-op when it exists, and harmless when the message was sent meanwhile (the
dispatcher never sends a settled message).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from hub.model import Event, utcnow
from hub.ports import Channel
from hub.services.contacts import opted_out_of
from hub.services.events import Events
from hub.services.messages import outbound_message_doc
from hub.services.outbox import OutboxError
from hub.shapes import message_view
from hub.store import Store, new_id

# How long a `scheduled_sends` row may wait for the message written after it.
ROW_GRACE = timedelta(seconds=60)
# The latest a reply may be scheduled for.
FURTHEST = timedelta(days=366)


class InvalidSendAt(ValueError):
    """A `send_at` that is not a future time with a time zone."""


class NotScheduled(ValueError):
    """The message is no longer scheduled (sent, queued or cancelled): 409."""


# As `hub.services.replies` refuses an agent's reply there (carriers block it).
OPTED_OUT_SMS = (
    "the contact opted out of SMS (it sent a stop word): carriers block texts to it "
    "until it sends a start word"
)


class NoSuchMessage(LookupError):
    """No such message in this conversation: 404."""


def check_send_at(send_at: datetime, now: datetime) -> datetime:
    """`send_at` in UTC, if it is a future time with a time zone."""
    if send_at.utcoffset() is None:
        raise InvalidSendAt("send_at: give a time zone (Z for UTC)")
    try:
        at = send_at.astimezone(UTC)
    except OverflowError:
        raise InvalidSendAt("send_at: must be in years 1-9999 in UTC") from None
    if at <= now:
        raise InvalidSendAt("send_at: must be in the future")
    if at - now > FURTHEST:
        raise InvalidSendAt("send_at: at most a year ahead")
    return at


async def schedule(
    store: Store,
    events: Events,
    conversation: dict[str, Any],
    *,
    text: str,
    sender: dict[str, Any],
    send_at: datetime,
    subject: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store a reply to be sent at `send_at` (status `scheduled`); its document.
    OutboxError when it could never go (an SMS contact who opted out)."""
    now = now or utcnow()
    at = check_send_at(send_at, now)
    if await _opted_out_sms(store, conversation):
        raise OutboxError(OPTED_OUT_SMS)
    message_id = new_id()
    # The row first: a message is never scheduled without the row that sends it.
    await store.scheduled_sends.insert_one(
        {
            "_id": message_id,
            "send_at": at,
            "conversation_id": conversation["_id"],
            "created_at": now,
        }
    )
    doc = outbound_message_doc(
        message_id, conversation, text=text, sender=sender, subject=subject, now=now
    )
    doc |= {"status": "scheduled", "send_at": at}
    await store.messages.insert_one(doc)
    await events.publish([Event("message.created", message_view(doc))])
    return doc


async def _refuse_settled(store: Store, conversation_id: str, message_id: str) -> NoReturn:
    """Why a message could not be changed: NoSuchMessage, or NotScheduled."""
    current = await store.messages.find_one(
        {"_id": message_id}, {"conversation_id": 1, "status": 1}
    )
    if current is None or current.get("conversation_id") != conversation_id:
        raise NoSuchMessage("no such message")  # the API's 404 says just this
    raise NotScheduled(
        f"the message is {current.get('status')}: only a scheduled one can be changed"
    )


async def edit(
    store: Store,
    events: Events,
    conversation_id: str,
    message_id: str,
    *,
    text: str | None = None,
    send_at: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Change a scheduled message's text or time; NotScheduled once it went."""
    now = now or utcnow()
    fields: dict[str, Any] = {}
    if text is not None:
        fields["text"] = text
    if send_at is not None:
        fields["send_at"] = check_send_at(send_at, now)
    if not fields:
        raise InvalidSendAt("give text or send_at")
    doc = await store.messages.find_one_and_update(
        {"_id": message_id, "conversation_id": conversation_id, "status": "scheduled"},
        {"$set": fields},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        await _refuse_settled(store, conversation_id, message_id)
    if "send_at" in fields:
        # The message is the truth (the job compares its `send_at`); the row only
        # tells the job when to look.
        await store.scheduled_sends.update_one(
            {"_id": message_id}, {"$set": {"send_at": fields["send_at"]}}
        )
    await events.publish([Event("message.updated", message_view(doc))])
    return doc


async def cancel(
    store: Store,
    events: Events,
    conversation_id: str,
    message_id: str,
    *,
    by: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Cancel a scheduled message (status `cancelled`); NotScheduled once it went."""
    now = now or utcnow()
    doc = await store.messages.find_one_and_update(
        {"_id": message_id, "conversation_id": conversation_id, "status": "scheduled"},
        {"$set": {"status": "cancelled", "cancelled_at": now, "cancelled_by": by}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        await _refuse_settled(store, conversation_id, message_id)
    await store.scheduled_sends.delete_one({"_id": message_id})
    await events.publish([Event("message.updated", message_view(doc))])
    return doc


async def _hand_to_outbox(store: Store, message: dict[str, Any]) -> None:
    """The outbox item of a message that left `scheduled`; once, by its id. Its
    times are the clock's (the dispatcher compares them with it)."""
    now = utcnow()
    # Written already when a run was cut short after it, or by another process.
    with contextlib.suppress(DuplicateKeyError):
        await store.outbox.insert_one(
            {
                "_id": message["_id"],
                "inbox": message["inbox"],
                "conversation_id": message["conversation_id"],
                "state": "queued",
                "attempts": 0,
                "next_attempt_at": now,
                "at_most_once": False,
                "lease_owner": None,
                "lease_until": None,
                "created_at": now,
            }
        )


async def queue_due(
    store: Store,
    events: Events,
    channels: Mapping[str, Channel],
    now: datetime,
    *,
    limit: int = 500,
) -> int:
    """Hand every scheduled message due at `now` to the outbox; how many were queued.

    One whose channel refuses it now (a closed WhatsApp window, say) is `failed`
    with the reason, as a reply refused at once would have been told.
    """
    rows = (
        await store.scheduled_sends.find({"send_at": {"$lte": now}})
        .sort("send_at", 1)
        .limit(limit)
        .to_list()
    )
    queued = 0
    published: list[Event] = []
    for row in rows:
        message_id = row["_id"]
        # When it went, by the clock (`now` only says what is due: a test's may lead it).
        at = utcnow()
        doc = await store.messages.find_one_and_update(
            {"_id": message_id, "status": "scheduled", "send_at": {"$lte": now}},
            {"$set": {"status": "queued", "queued_at": at, "created_at": at}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            await _settle_row(store, row, now)
            continue
        conversation = await store.conversations.find_one({"_id": doc["conversation_id"]})
        refusal = _refusal(conversation, channels, doc)
        if refusal is None and await _opted_out_sms(store, conversation):
            refusal = OPTED_OUT_SMS
        if refusal is not None:
            failed = {"status": "failed", "error": refusal}
            await store.messages.update_one({"_id": message_id}, {"$set": failed})
            await store.scheduled_sends.delete_one({"_id": message_id})
            published.append(Event("message.updated", message_view({**doc, **failed})))
            continue
        await _hand_to_outbox(store, doc)
        assert conversation is not None
        summary: dict[str, Any] = {
            "last_message": {
                "id": message_id,
                "text": doc.get("text"),
                "kind": doc.get("kind"),
                "direction": "out",
                "at": at,
            },
            "last_activity_at": at,
        }
        if (doc.get("sender") or {}).get("type") == "agent":
            summary |= {"last_agent_reply_at": at, "sla_overdue": False}
        await store.conversations.update_one({"_id": conversation["_id"]}, {"$set": summary})
        await store.scheduled_sends.delete_one({"_id": message_id})
        published.append(Event("message.updated", message_view(doc)))
        queued += 1
    if published:
        await events.publish(published)
    return queued


def _refusal(
    conversation: dict[str, Any] | None, channels: Mapping[str, Channel], doc: dict[str, Any]
) -> str | None:
    if conversation is None:
        return "the conversation is gone"
    channel = channels.get(str(conversation.get("inbox")))
    if channel is None:
        return f"inbox {conversation.get('inbox')} is not configured"
    return channel.reply_refusal_on(
        conversation.get("channel"), conversation.get("last_inbound_at"), bool(doc.get("template"))
    )


async def _opted_out_sms(store: Store, conversation: dict[str, Any] | None) -> bool:
    if conversation is None or conversation.get("channel") != "sms":
        return False
    return await opted_out_of(store, str(conversation.get("contact_id")), "sms")


async def _settle_row(store: Store, row: dict[str, Any], now: datetime) -> None:
    """A due row whose message did not move: see why, and tidy up."""
    message_id = row["_id"]
    current = await store.messages.find_one({"_id": message_id})
    if current is None:
        created = row.get("created_at")
        if created is None or now - _aware(created) > ROW_GRACE:
            await store.scheduled_sends.delete_one({"_id": message_id})
        return
    status = current.get("status")
    if status == "scheduled":
        # Moved later by an edit that wrote the message but not (yet) the row.
        await store.scheduled_sends.update_one(
            {"_id": message_id}, {"$set": {"send_at": current.get("send_at")}}
        )
        return
    if status == "queued" and current.get("queued_at") is not None:
        # Queued by a run that stopped before the outbox item was written.
        await _hand_to_outbox(store, current)
    await store.scheduled_sends.delete_one({"_id": message_id})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
