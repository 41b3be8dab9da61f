"""Which contacts an agent may see.

A supervisor or an admin (a session whose `inboxes` is None) sees every contact.
An agent limited to some inboxes sees a contact when one of the contact's
conversations is in an inbox it sees, or when it created the contact (its
`created_by`) and the contact has no conversation yet. The contact list and
search, one contact, the realtime events about a contact and the conflict a
taken phone number or e-mail makes all follow this rule.

The list of an agent's contacts is found from the other side: the conversations
of each of its inboxes (an equality on the indexed `inbox`) and the contacts it
created (an equality on the indexed `created_by`); then the contacts are read by
`_id`. Nothing reads every contact.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from hub.services.accounts import Session
from hub.services.contacts import (
    CONVERSATION_FIELDS,
    EPOCH,
    identity_owner,
    position,
    text_filter,
)
from hub.services.paging import decode_cursor, encode_cursor
from hub.store import IDS_PER_COMMAND, Store, find_by_ids

MOST_CONVERSATIONS_SHOWN = 200


@dataclass(frozen=True)
class Audience:
    """Who may see a contact: the inboxes of its conversations and its creator."""

    inboxes: frozenset[str]
    created_by: str | None

    def admits(self, agent_id: str, inboxes: frozenset[str] | None) -> bool:
        if inboxes is None:
            return True
        if self.inboxes:
            return not self.inboxes.isdisjoint(inboxes)
        return self.created_by is not None and self.created_by == agent_id


async def audience_of(store: Store, contact_id: str) -> Audience | None:
    """Who may see the contact; None if there is no such contact."""
    doc = await store.contacts.find_one({"_id": contact_id}, {"created_by": 1})
    if doc is None:
        return None
    inboxes = {
        str(c["inbox"])
        async for c in store.conversations.find({"contact_id": contact_id}, {"inbox": 1})
        if c.get("inbox") is not None
    }
    created_by = doc.get("created_by")
    return Audience(frozenset(inboxes), created_by if isinstance(created_by, str) else None)


async def sees(store: Store, me: Session, contact_id: str) -> bool:
    """Whether `me` may see the contact (False when there is none)."""
    audience = await audience_of(store, contact_id)
    return audience is not None and audience.admits(me.agent_id, me.inboxes)


async def contact_for(
    store: Store, me: Session, contact_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]], bool] | None:
    """The contact, (at most 200 of) its conversations in the inboxes `me` sees,
    and whether `me` may see it; None if there is no such contact."""
    doc = await store.contacts.find_one({"_id": contact_id})
    if doc is None:
        return None
    filt: dict[str, Any] = {"contact_id": contact_id}
    if me.inboxes is not None:
        if not me.inboxes:
            return doc, [], await _only_creator(store, me, doc)
        filt["inbox"] = {"$in": sorted(me.inboxes)}
    conversations = (
        await store.conversations.find(filt, CONVERSATION_FIELDS)
        .limit(MOST_CONVERSATIONS_SHOWN)
        .to_list()
    )
    if me.inboxes is None or conversations:
        return doc, conversations, True
    return doc, [], await _only_creator(store, me, doc)


async def _only_creator(store: Store, me: Session, doc: dict[str, Any]) -> bool:
    """Whether `me` created the contact and it has no conversation yet."""
    if doc.get("created_by") != me.agent_id:
        return False
    return await store.conversations.find_one({"contact_id": doc["_id"]}, {"_id": 1}) is None


async def _candidates(
    store: Store, agent_id: str, inboxes: Collection[str]
) -> tuple[set[str], set[str]]:
    """The contacts with a conversation in `inboxes`, and the other contacts
    `agent_id` created (visible only while they have no conversation)."""
    talking: set[str] = set()
    for inbox in sorted(inboxes):
        async for conv in store.conversations.find({"inbox": inbox}, {"contact_id": 1}):
            if conv.get("contact_id") is not None:
                talking.add(str(conv["contact_id"]))
    created = {
        str(d["_id"]) async for d in store.contacts.find({"created_by": agent_id}, {"_id": 1})
    }
    return talking, created - talking


async def page_for(
    store: Store,
    me: Session,
    *,
    q: str | None,
    label: str | None,
    cursor: str | None,
    limit: int,
    default_region: str,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the contacts an agent limited to inboxes sees, newest first,
    as `contacts.page` gives everyone's: those matching `q`, with `label`."""
    assert me.inboxes is not None
    talking, created = await _candidates(store, me.agent_id, me.inboxes)
    candidates = talking | created
    clauses: dict[str, Any] = {}
    if label is not None:
        clauses["labels"] = label
    if q:
        owner = await identity_owner(store, q, default_region=default_region)
        if owner is not None and owner in candidates:
            candidates = {owner}
        else:  # as if a contact it may not see did not exist
            clauses.update(text_filter(q))
    ids = sorted(candidates)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), IDS_PER_COMMAND):
        chunk = ids[start : start + IDS_PER_COMMAND]
        filt = {"_id": {"$in": chunk}, **clauses}
        rows += await store.contacts.find(filt, {"created_at": 1}).to_list()
    rows.sort(key=position, reverse=True)
    if cursor is not None:
        at, ident = decode_cursor(cursor)
        mark = (at or EPOCH, ident)
        rows = [r for r in rows if position(r) < mark]
    shown: list[dict[str, Any]] = []
    for row in rows:
        contact_id = str(row["_id"])
        if contact_id in created and await store.conversations.find_one(
            {"contact_id": contact_id}, {"_id": 1}
        ):
            continue  # it talks now, to an inbox the agent does not see
        shown.append(row)
        if len(shown) > limit:
            break
    more = len(shown) > limit
    shown = shown[:limit]
    found = await find_by_ids(store.contacts, [r["_id"] for r in shown])
    docs = [found[r["_id"]] for r in shown if r["_id"] in found]
    next_cursor = None
    if more and shown:
        next_cursor = encode_cursor(shown[-1].get("created_at"), str(shown[-1]["_id"]))
    return docs, next_cursor
