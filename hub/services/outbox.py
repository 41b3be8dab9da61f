"""The outbox: every outbound message is stored before it is sent.

`enqueue` writes an `outbox` item and then the message (status `queued`). The
dispatcher claims items with a lease, sends through the inbox's adapter, and
records what the provider said. The `outbox` collection only holds work still to
do, so claiming scans a small collection even when `messages` is large.

Crash semantics (a lease that expired while `sending`):
- replies (agent, bot) are sent again: at-least-once;
- items marked `at_most_once` (campaign and greeting sends) are never sent again:
  their message becomes `unknown`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import DeleteOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from hub.model import (
    STATUS_RANK,
    Attachment,
    ButtonReply,
    Event,
    StatusUpdate,
    utcnow,
)
from hub.services.events import Events
from hub.services.messages import outbound_message_doc
from hub.shapes import message_view
from hub.store import Store, derived_id, find_by_ids, insert_new, new_id

log = logging.getLogger("hub.outbox")


# How long a status for a send not (yet) recorded here is kept.
EARLY_STATUS_KEEP = timedelta(days=1)
# Statuses after which a message is never sent again.
SETTLED = frozenset({"sent", "delivered", "read", "failed", "unknown"})


class OutboxError(ValueError):
    """The message cannot be queued (unknown conversation, nothing to send...)."""


def provider_key(inbox: str, provider_id: str) -> str:
    return derived_id("out", inbox, provider_id)


def _outbox_doc(
    message_id: str,
    inbox: str,
    at_most_once: bool,
    now: datetime,
    *,
    not_before: datetime | None = None,
    recheck_opt_out: bool = False,
    conversation_id: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": message_id,
        "inbox": inbox,
        # The dispatcher reads the message and its conversation together by it.
        "conversation_id": conversation_id,
        "state": "queued",
        "attempts": 0,
        # Queued ahead (a greeting): the dispatcher claims it from this instant on.
        "next_attempt_at": now if not_before is None else not_before,
        "at_most_once": at_most_once,
        "lease_owner": None,
        "lease_until": None,
        # Set by each claim (see the dispatcher), as are the next two: present from the
        # start, the claim's update is one the embedded store applies directly (a
        # field the document lacks takes its slow path, three times the cost). None
        # reads as a missing one.
        "handed": None,
        "claim": None,
        "held_for": None,
        "created_at": now,
    }
    if recheck_opt_out:
        # Queued ahead of its send: the dispatcher checks the contact's opt-out
        # on the conversation's channel again when it sends (`Dispatcher`), by
        # reading the contacts whose opt-outs changed since the item was queued:
        # whoever queues it has checked the contact's opt-out just before.
        doc["recheck_opt_out"] = True
    return doc


async def _insert_outbox(
    store: Store,
    message_id: str,
    inbox: str,
    at_most_once: bool,
    now: datetime,
    conversation_id: str | None = None,
) -> None:
    await store.outbox.insert_one(
        _outbox_doc(message_id, inbox, at_most_once, now, conversation_id=conversation_id)
    )


@dataclass(frozen=True)
class Draft:
    """One message of a bulk enqueue (a campaign's, a greeting run's)."""

    conversation_id: str
    text: str | None
    sender: dict[str, Any]
    at_most_once: bool = False
    campaign_id: str | None = None
    template: dict[str, Any] | None = None
    # A stable id (per campaign and contact) makes queueing it again a no-op.
    message_id: str | None = None
    buttons: tuple[ButtonReply, ...] = ()  # a bot's choices (the channel's own buttons)
    # Queued ahead: not sent before this instant (None: as soon as the pace allows).
    next_attempt_at: datetime | None = None
    # Not sent if the contact opted out of the channel meanwhile (checked at send).
    recheck_opt_out: bool = False


async def enqueue_many(
    store: Store,
    events: Events,
    drafts: Sequence[Draft],
    *,
    conversations: Mapping[str, dict[str, Any]] | None = None,
    also_set: Mapping[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Queue many messages in a few bulk writes; return the ids newly queued.

    Drafts whose conversation does not exist, or whose `message_id` is already
    queued or sent, are left out of the result. `conversations`: the drafts'
    conversations as the caller just read them (not read again; only their
    inbox, channel and identity are used). `also_set`: more fields to set on
    conversations (by id), written with their summaries in the same command.
    """
    if not drafts:
        await _set_fields(store, also_set)
        return []
    if conversations is None:
        conversation_ids = list({d.conversation_id for d in drafts})
        conversations = await find_by_ids(store.conversations, conversation_ids)
    now = utcnow()
    items: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    for draft in drafts:
        conversation = conversations.get(draft.conversation_id)
        if conversation is None or not (draft.text or draft.template):
            continue
        message_id = draft.message_id or new_id()
        items.append(
            _outbox_doc(
                message_id,
                conversation["inbox"],
                draft.at_most_once,
                now,
                not_before=draft.next_attempt_at,
                recheck_opt_out=draft.recheck_opt_out,
                conversation_id=draft.conversation_id,
            )
        )
        docs.append(
            outbound_message_doc(
                message_id,
                conversation,
                text=draft.text,
                sender=draft.sender,
                campaign_id=draft.campaign_id,
                template=draft.template,
                buttons=list(draft.buttons) or None,
                now=now,
            )
        )
    if not docs:
        await _set_fields(store, also_set)
        return []
    refused = await insert_new(store.outbox, items)
    # An item refused as a duplicate is queued already: its message stays as it is.
    docs = [d for d in docs if d["_id"] not in refused]
    settled = await insert_new(store.messages, docs)
    if settled:
        # Their messages exist and their items were gone: sent already. Take back
        # the items just written for them.
        await store.outbox.bulk_write([DeleteOne({"_id": i}) for i in settled], ordered=False)
    docs = [d for d in docs if d["_id"] not in settled]
    if not docs:
        await _set_fields(store, also_set)
        return []
    latest: dict[str, dict[str, Any]] = {d["conversation_id"]: d for d in docs}
    extra = dict(also_set or {})
    summaries = [
        UpdateOne(
            {"_id": conversation_id},
            {
                "$set": {
                    "last_message": {
                        "id": doc["_id"],
                        "text": doc["text"],
                        "kind": doc["kind"],
                        "direction": "out",
                        "at": now,
                    },
                    "last_activity_at": now,
                    **extra.pop(conversation_id, {}),
                }
            },
        )
        for conversation_id, doc in latest.items()
    ]
    summaries += [UpdateOne({"_id": c}, {"$set": fields}) for c, fields in extra.items() if fields]
    # The summaries and the event document that reports the messages go to the
    # store together; the events are delivered once both are in.
    await events.publish(
        [Event("message.created", message_view(d)) for d in docs],
        alongside=store.conversations.bulk_write(summaries, ordered=False),
    )
    return [str(d["_id"]) for d in docs]


async def _set_fields(store: Store, fields: Mapping[str, dict[str, Any]] | None) -> None:
    """Set fields on conversations (by id), in one command."""
    updates = [UpdateOne({"_id": c}, {"$set": f}) for c, f in (fields or {}).items() if f]
    if updates:
        await store.conversations.bulk_write(updates, ordered=False)


async def enqueue(
    store: Store,
    events: Events,
    *,
    conversation_id: str,
    text: str | None,
    sender: dict[str, Any],
    attachments: list[Attachment] | None = None,
    subject: str | None = None,
    at_most_once: bool = False,
    campaign_id: str | None = None,
    kind: str = "text",
    template: dict[str, Any] | None = None,
    buttons: list[ButtonReply] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Store an outbound message for the conversation's channel; return its document.

    With a `key` (e.g. "<call id>:missed-call-sms") the message is queued once per
    conversation and key, however often the caller retries: a repeat returns the
    message already queued (or sent).
    """
    if not text and not attachments and not template:
        raise OutboxError("a message needs text, an attachment or a template")
    conversation = await store.conversations.find_one({"_id": conversation_id})
    if conversation is None:
        raise OutboxError(f"no conversation {conversation_id}")
    now = utcnow()
    message_id = new_id() if key is None else derived_id("keyed", conversation_id, key)
    if key is not None:
        existing = await store.messages.find_one({"_id": message_id})
        if existing is not None:
            return existing
    try:
        await _insert_outbox(
            store, message_id, conversation["inbox"], at_most_once, now, conversation_id
        )
    except DuplicateKeyError:
        if key is None:
            raise
        # A concurrent call with the same key is writing it.
        return await store.messages.find_one({"_id": message_id}) or {"_id": message_id}
    doc = outbound_message_doc(
        message_id,
        conversation,
        text=text,
        sender=sender,
        kind=kind,
        attachments=attachments,
        campaign_id=campaign_id,
        template=template,
        buttons=buttons,
        subject=subject,
        now=now,
    )
    await store.messages.insert_one(doc)
    # An agent's reply answers the customer: the first-response SLA (hub.services.sla).
    answered = {"last_agent_reply_at": now, "sla_overdue": False}
    await store.conversations.update_one(
        {"_id": conversation_id},
        {
            "$set": {
                "last_message": {
                    "id": message_id,
                    "text": text,
                    "kind": kind,
                    "direction": "out",
                    "at": now,
                },
                "last_activity_at": now,
                **(answered if sender.get("type") == "agent" else {}),
            }
        },
    )
    await events.publish([Event("message.created", message_view(doc))])
    return doc


async def record_statuses(store: Store, events: Events, updates: list[StatusUpdate]) -> int:
    """Apply provider status callbacks; return how many messages moved.

    A callback never moves a message backwards (providers send them out of order).
    One that arrives before the send recorded its provider id is kept and applied
    when it is recorded.
    """
    moved = 0
    published: list[Event] = []
    for update in updates:
        key = provider_key(update.inbox, update.provider_id)
        rank = STATUS_RANK[update.status]
        earlier = [s for s, r in STATUS_RANK.items() if r < rank]
        fields: dict[str, Any] = {"status": update.status, f"{update.status}_at": update.at}
        if update.status == "failed":
            fields["error"] = failure_reason(update.error, update.error_code)
        doc = await store.messages.find_one_and_update(
            {"provider_key": key, "status": {"$in": earlier}},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            exists = await store.messages.find_one({"provider_key": key}, {"_id": 1})
            if exists is None:
                await _keep_early_status(store, key, update, rank)
                # The send may have recorded its id between our look and our keep,
                # and looked for early statuses before we kept this one: look again,
                # so that one of the two always applies it.
                if await store.messages.find_one({"provider_key": key}, {"_id": 1}):
                    kept = await store.early_statuses.find_one_and_delete({"_id": key})
                    if kept is not None:
                        moved += await record_statuses(
                            store, events, [StatusUpdate.model_validate(kept["update"])]
                        )
            continue
        moved += 1
        published.append(Event("message.updated", message_view(doc)))
    await events.publish(published)
    return moved


async def _keep_early_status(store: Store, key: str, update: StatusUpdate, rank: int) -> None:
    """Keep the furthest status seen for a send whose provider id is not recorded yet."""
    kept = await store.early_statuses.find_one({"_id": key}, {"rank": 1})
    if kept is not None and int(kept.get("rank", -1)) >= rank:
        return
    await store.early_statuses.replace_one(
        {"_id": key},
        {"rank": rank, "update": update.model_dump(mode="json"), "at": utcnow()},
        upsert=True,
    )


def failure_reason(error: str | None, code: str | None) -> str:
    if error and code:
        return f"{error} (code {code})"
    return error or (f"provider error {code}" if code else "failed")
