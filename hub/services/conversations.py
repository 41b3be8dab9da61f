"""Conversations: opening, finding, changing (status, snooze, assignee, labels),
private notes, and the screen-pop of a call.

The rules live here, not in the API's handlers: a bot handing off, a scheduled
job waking a snoozed conversation and an agent's PATCH all change a conversation
the same way.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.model import Attachment, ConversationStatus, Event, IdentityRef, utcnow
from hub.services.contacts import contact_card
from hub.services.events import Events
from hub.services.ingest import Ingestor, conversation_id_for
from hub.services.messages import note_doc
from hub.services.outbox import provider_key
from hub.services.paging import page_by_time
from hub.shapes import conversation_view, iso, message_view
from hub.store import VALUES_PER_IN, Store, find_by_ids, identity_id, new_id

_UNSET: Any = object()
# The statuses in which a conversation waits for an agent's first response
# (hub.services.sla): resolved or snoozed, it is not overdue.
SLA_WAITING = ("open", "pending")


class InvalidChange(ValueError):
    """A change that breaks a conversation rule; the message names the field."""


class AssigneeCannotSee(ValueError):
    """The agent a conversation is assigned to does not see its inbox."""


@dataclass(frozen=True)
class Change:
    """What to change in a conversation; a field left out is left as it is."""

    status: ConversationStatus | Any | None = _UNSET
    snooze_until: datetime | None = None
    assignee_id: str | Any | None = _UNSET
    labels: list[str] | None = None
    mark_read: bool = False


def full_view(doc: dict[str, Any], contact: dict[str, Any] | None) -> dict[str, Any]:
    """The conversation as the API and the realtime feed show it."""
    view = conversation_view(doc, contact)
    view["snooze_until"] = iso(doc.get("snooze_until"))
    view["sla_breached_at"] = iso(doc.get("sla_breached_at"))
    view["overdue"] = bool(doc.get("sla_overdue")) and doc.get("status") in SLA_WAITING
    return view


async def get(store: Store, conversation_id: str) -> dict[str, Any] | None:
    return await store.conversations.find_one({"_id": conversation_id})


async def view_of(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    contact = await store.contacts.find_one({"_id": doc.get("contact_id")})
    return full_view(doc, contact)


def _status_fields(doc: dict[str, Any], change: Change) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    status_given = change.status is not _UNSET
    if status_given and change.status is None:
        raise InvalidChange("status: cannot be null")
    if change.status == "snoozed":
        until = change.snooze_until
        if until is None:
            raise InvalidChange("snooze_until: required to snooze")
        if until.utcoffset() is None:
            raise InvalidChange("snooze_until: give a time zone (Z for UTC)")
        try:
            # Stored (and compared) in UTC: a time in years 1-9999 there, which
            # is what Python and, as Python reads them, the store hold.
            until = until.astimezone(UTC)
        except OverflowError:
            raise InvalidChange("snooze_until: must be in years 1-9999 in UTC") from None
        if until <= utcnow():
            raise InvalidChange("snooze_until: must be in the future")
        fields.update(status="snoozed", snooze_until=until)
    elif status_given:
        if change.snooze_until is not None:
            raise InvalidChange("snooze_until: only with status snoozed")
        fields.update(status=change.status, snooze_until=None)
    if "status" in fields and fields["status"] != doc.get("status"):
        # When it was resolved (the reports' resolution time), and no longer once
        # it is open again.
        fields["resolved_at"] = utcnow() if fields["status"] == "resolved" else None
    elif change.snooze_until is not None and not status_given:
        raise InvalidChange("snooze_until: only with status snoozed")
    return fields


async def update(
    store: Store,
    events: Events,
    doc: dict[str, Any],
    change: Change,
    *,
    by: str | None,
    inboxes_of: Callable[[dict[str, Any]], Awaitable[frozenset[str] | None]],
) -> dict[str, Any]:
    """Apply `change` to the conversation `doc` by the rules, publish
    `conversation.updated` when something changed, and return its view.
    `inboxes_of(agent)` tells which inboxes an agent sees (None: all)."""
    fields = _status_fields(doc, change)
    if change.assignee_id is not _UNSET:
        if change.assignee_id is not None:
            agent = await store.agents.find_one({"_id": change.assignee_id})
            if agent is None or not agent.get("active", True):
                raise InvalidChange("assignee_id: no such active agent")
            inboxes = await inboxes_of(agent)
            if inboxes is not None and doc.get("inbox") not in inboxes:
                raise AssigneeCannotSee("the assignee does not see this inbox")
        fields["assignee_id"] = change.assignee_id
    if change.labels is not None:
        fields["labels"] = list(dict.fromkeys(change.labels))
    if change.mark_read:
        fields["unread"] = 0
    conversation_id = doc["_id"]
    if fields:
        await store.conversations.update_one({"_id": conversation_id}, {"$set": fields})
        doc = await store.conversations.find_one({"_id": conversation_id}) or {**doc, **fields}
    view = await view_of(store, doc)
    if fields:
        await events.publish([Event("conversation.updated", {**view, "changed_by": by})])
    return view


# The kind of identity each medium writes to.
MEDIUM_KIND = {"sms": "phone", "whatsapp": "phone", "telegram": "telegram", "email": "email"}


class NoIdentityFor(ValueError):
    """The contact has no identity the inbox can write to (422)."""


async def open_for_contact(
    store: Store, ingestor: Ingestor, contact_id: str, inbox: str, media: Sequence[str]
) -> tuple[dict[str, Any], bool] | None:
    """Open (or find) the contact's conversation in `inbox` on the first of `media`
    (the inbox's, in order) the contact has an identity for, so an agent can write
    first; (the conversation, whether it was opened now), or None when there is
    no such contact. NoIdentityFor when it has no identity on any of `media`."""
    contact = await store.contacts.find_one({"_id": contact_id}, {"_id": 1})
    if contact is None:
        return None
    for medium in media:
        kind = MEDIUM_KIND.get(medium)
        if kind is None:
            continue
        identity = await store.identities.find_one(
            {"contact_id": contact_id, "kind": kind}, sort=[("created_at", 1)]
        )
        if identity is None:
            continue
        ref = IdentityRef(kind=kind, value=str(identity["value"]))  # type: ignore[arg-type]
        wanted = conversation_id_for(inbox, medium, identity_id(ref.kind, ref.value))
        existed = await store.conversations.find_one({"_id": wanted}, {"_id": 1}) is not None
        conv_id, _ = await ingestor.open_conversation(inbox, medium, ref)
        doc = await store.conversations.find_one({"_id": conv_id})
        assert doc is not None
        return doc, not existed
    names = ", ".join(media) or "nothing an agent can start"
    raise NoIdentityFor(
        f"the contact has no identity inbox {inbox} can write to (it writes on {names})"
    )


async def add_note(
    store: Store,
    events: Events,
    conversation: dict[str, Any],
    text: str | None,
    sender: dict[str, Any],
    *,
    attachments: Sequence[Attachment] = (),
) -> dict[str, Any]:
    """A private note in the thread (with files an agent kept in it): stored and
    shown to agents, never sent."""
    doc = note_doc(new_id(), conversation, text=text or "", sender=sender, now=utcnow())
    doc["text"] = text
    doc["attachments"] = [a.model_dump() for a in attachments]
    await store.messages.insert_one(doc)
    await events.publish([Event("message.created", message_view(doc))])
    return doc


async def page(
    store: Store,
    *,
    status: str | None,
    inboxes: Collection[str] | None,
    assignee: str | Any | None = _UNSET,
    text: str | None = None,
    contact_ids: Sequence[str] = (),
    cursor: str | None,
    limit: int,
    bot: bool | None = None,
    overdue: bool | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the inbox list, newest activity first: conversations in
    `inboxes` (None: all), of `status`, assigned to `assignee`, and whose contact
    is one of `contact_ids` or whose last message contains `text`; with `bot`,
    only those a bot serves (True) or only people's (False)."""
    clauses: list[dict[str, Any]] = []
    if status is not None:
        clauses.append({"status": status})
    if inboxes is not None:
        names = sorted(inboxes)
        if not names:
            return [], None
        clauses.append({"inbox": names[0] if len(names) == 1 else {"$in": names}})
    if assignee is not _UNSET:
        clauses.append({"assignee_id": assignee})
    if bot is not None:
        clauses.append({"bot": {"$ne": None}} if bot else {"bot": None})
    if overdue is not None:  # past the first-response SLA, unanswered (hub.services.sla)
        waiting = {"$in": list(SLA_WAITING)}
        clauses.append(
            {"sla_overdue": True, "status": waiting}
            if overdue
            else {"$or": [{"sla_overdue": {"$ne": True}}, {"status": {"$nin": list(SLA_WAITING)}}]}
        )
    if text:
        matched = {"last_message.text": {"$regex": re.escape(text), "$options": "i"}}
        ids = list(contact_ids)[:VALUES_PER_IN]  # the embedded engine's `$in` limit
        clauses.append({"$or": [{"contact_id": {"$in": ids}}, matched]} if ids else matched)
    docs, next_cursor = await page_by_time(
        store.conversations, clauses, "last_activity_at", cursor, limit
    )
    contacts = await find_by_ids(
        store.contacts, list(dict.fromkeys(d.get("contact_id") for d in docs))
    )
    return [full_view(d, contacts.get(d.get("contact_id"))) for d in docs], next_cursor


class NotInConversation(ValueError):
    """A message id that is not one of the conversation's."""


async def messages(
    store: Store, conversation_id: str, *, before: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the conversation's messages, newest first, older than `before`."""
    filt: dict[str, Any] = {"conversation_id": conversation_id}
    if before is not None:
        anchor = await store.messages.find_one({"_id": before})
        if anchor is None or anchor.get("conversation_id") != conversation_id:
            raise NotInConversation("before: not a message of this conversation")
        # Arrival order (`seq`) breaks ties of the provider's time; a message
        # stored before it was kept has none, which sorts first.
        at, seq = anchor.get("created_at"), anchor.get("seq")
        tied = [{"created_at": at, "seq": seq, "_id": {"$lt": anchor["_id"]}}]
        if seq is not None:
            tied += [{"created_at": at, "seq": {"$lt": seq}}, {"created_at": at, "seq": None}]
        filt["$or"] = [{"created_at": {"$lt": at}}, *tied]
    docs = (
        await store.messages.find(filt)
        .sort([("created_at", -1), ("seq", -1), ("_id", -1)])
        .limit(limit + 1)
        .to_list()
    )
    more = len(docs) > limit
    docs = docs[:limit]
    return [message_view(d) for d in docs], str(docs[-1]["_id"]) if more and docs else None


async def find_thread(store: Store, inbox: str, message_ids: Sequence[str]) -> str | None:
    """The conversation of `inbox` holding one of these e-mail Message-IDs."""
    ids = [i.strip().strip("<>") for i in message_ids if i and i.strip().strip("<>")][:50]
    if not ids:
        return None
    # One indexed equality per id (the embedded engine scans for `$in`).
    projection = {"conversation_id": 1, "inbox": 1}
    for found in await asyncio.gather(
        *(
            store.messages.find_one({"provider_key": provider_key(inbox, i)}, projection)
            for i in ids
        ),
        *(store.messages.find_one({"email.message_id": i}, projection) for i in ids),
    ):
        if found is not None and found.get("inbox") == inbox:
            return str(found["conversation_id"])
    return None


async def call_incoming(
    store: Store, events: Events, ingestor: Ingestor, inbox: str, ref: IdentityRef, call_id: str
) -> str:
    """Publish `call.incoming` with the caller's card the moment a call starts."""
    conv_id, contact_id = await ingestor.open_conversation(inbox, "voice", ref)
    contact = await store.contacts.find_one({"_id": contact_id}) or {}
    data = {
        "inbox": inbox,
        "channel": "voice",
        "call_id": call_id,
        "from": ref.value,
        "conversation_id": conv_id,
        "contact": contact_card(contact_id, contact),
    }
    await events.publish([Event("call.incoming", data)])
    return contact_id
