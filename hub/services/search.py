"""Search: the conversations whose messages (any of them, private notes and
e-mail subjects included) hold the words asked for, or whose contact matches.

Words are matched whole and in any case by the store's text index on messages
(`hub.store.TEXT_INDEXES`: MongoDB's own `$text` index, or SQLite FTS5 inside the
embedded engine, `hub.store.engine.text`): every word must be in the message.

A conversation found through its messages is placed by its newest matching
message, and carries it as `match {message_id, text}` (`text` a snippet around
the first word found); one found through its contact (every word in the name,
by the same text index, or the contact's whole phone number or e-mail) is
placed by its last activity, with `match` null. The list is newest first, paged
by a cursor of (time, conversation id) like the inbox's; only conversations the
agent sees, of the status, assignee and kind asked for, are listed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.services.contacts import identity_owner
from hub.services.conversations import full_view
from hub.services.paging import decode_cursor, encode_cursor, page_by_time
from hub.store import VALUES_PER_IN, Store, find_by_ids

BATCH = 200  # the most matching messages read at a time (the first read: a page's worth)
CONTACTS_FOUND = 200  # contacts a search lists the conversations of
SNIPPET = 160
_UNSET: Any = object()
WORD = re.compile(r"[^\s\"]+")


def search_words(text: str) -> list[str]:
    """The words of a search box, as the store's text index splits them."""
    return [w for w in WORD.findall(text) if re.search(r"\w", w)][:16]


def text_query(words: Sequence[str]) -> dict[str, Any]:
    """Every word required: each is a quoted phrase to `$text`."""
    return {"$search": " ".join('"' + w.replace('"', "") + '"' for w in words)}


def snippet(doc: dict[str, Any], words: Sequence[str]) -> str | None:
    """The message's text, or a part of it around the first word found (or its
    e-mail subject when only that matched)."""
    text = doc.get("text") or ""
    subject = ((doc.get("email") or {}).get("subject")) or ""
    lowered = text.lower()
    hits = [lowered.find(w.lower()) for w in words]
    hits = [h for h in hits if h >= 0]
    if not hits and subject and not text:
        return str(subject)[:SNIPPET]
    if len(text) <= SNIPPET:
        return text or (str(subject)[:SNIPPET] if subject else None)
    start = max(0, min(hits, default=0) - SNIPPET // 3)
    part = text[start : start + SNIPPET]
    return ("…" if start else "") + part + ("…" if start + SNIPPET < len(text) else "")


def _aware(at: Any) -> datetime | None:
    if not isinstance(at, datetime):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass
class _Found:
    key: datetime
    conversation: dict[str, Any]
    match: dict[str, Any] | None


def _passes(
    doc: dict[str, Any],
    *,
    status: str | None,
    inboxes: Collection[str] | None,
    assignee: Any,
    bot: bool | None,
    overdue: bool | None,
) -> bool:
    if status is not None and doc.get("status") != status:
        return False
    if inboxes is not None and doc.get("inbox") not in inboxes:
        return False
    if assignee is not _UNSET and doc.get("assignee_id") != assignee:
        return False
    if bot is not None and (doc.get("bot") is not None) != bot:
        return False
    return overdue is None or bool(doc.get("sla_overdue")) == overdue


async def page(
    store: Store,
    *,
    text: str,
    status: str | None,
    inboxes: Collection[str] | None,
    assignee: Any = _UNSET,
    default_region: str,
    cursor: str | None,
    limit: int,
    bot: bool | None = None,
    overdue: bool | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the search's conversations, newest match first, and the
    cursor of the next page (None on the last)."""
    position = decode_cursor(cursor) if cursor else None
    rules = {
        "status": status,
        "inboxes": inboxes,
        "assignee": assignee,
        "bot": bot,
        "overdue": overdue,
    }
    words = search_words(text)
    contact_ids = await matching_contacts(store, text, words, default_region=default_region)
    found = (
        await _through_messages(store, words, set(contact_ids), position, limit, rules)
        if words
        else []
    )
    if contact_ids:  # through the contact: placed by the conversation's last activity
        clauses: list[dict[str, Any]] = [{"contact_id": {"$in": list(contact_ids)[:VALUES_PER_IN]}}]
        clauses += _clauses(**rules)
        docs, _ = await page_by_time(
            store.conversations, clauses, "last_activity_at", cursor, limit + 1
        )
        for doc in docs:
            key = _aware(doc.get("last_activity_at"))
            if key is not None:
                found.append(_Found(key, doc, None))
    found.sort(key=lambda f: (f.key, str(f.conversation["_id"])), reverse=True)
    more = len(found) > limit
    found = found[:limit]
    contacts = await find_by_ids(
        store.contacts, list(dict.fromkeys(f.conversation.get("contact_id") for f in found))
    )
    items = []
    for item in found:
        view = full_view(item.conversation, contacts.get(item.conversation.get("contact_id")))
        view["match"] = item.match
        items.append(view)
    next_cursor = None
    if more and found:
        next_cursor = encode_cursor(found[-1].key, str(found[-1].conversation["_id"]))
    return items, next_cursor


async def matching_contacts(
    store: Store, text: str, words: Sequence[str], *, default_region: str
) -> list[str]:
    """The contacts the search names: the one whose phone or e-mail it is, else
    those with every word in their name (the store's text index; at most
    CONTACTS_FOUND)."""
    owner = await identity_owner(store, text, default_region=default_region)
    if owner is not None:
        return [owner]
    if not words:
        return []
    docs = (
        await store.contacts.find({"$text": text_query(words)}, {"_id": 1})
        .limit(CONTACTS_FOUND)
        .to_list()
    )
    return [str(d["_id"]) for d in docs]


def _clauses(
    *,
    status: str | None,
    inboxes: Collection[str] | None,
    assignee: Any,
    bot: bool | None,
    overdue: bool | None,
) -> list[dict[str, Any]]:
    """The rules as store filters (as the inbox list has them)."""
    clauses: list[dict[str, Any]] = []
    if status is not None:
        clauses.append({"status": status})
    if inboxes is not None:
        clauses.append({"inbox": {"$in": sorted(inboxes)}})
    if assignee is not _UNSET:
        clauses.append({"assignee_id": assignee})
    if bot is not None:
        clauses.append({"bot": {"$ne": None}} if bot else {"bot": None})
    if overdue is not None:
        clauses.append({"sla_overdue": True} if overdue else {"sla_overdue": {"$ne": True}})
    return clauses


async def _through_messages(
    store: Store,
    words: list[str],
    skip_contacts: set[str],
    position: tuple[datetime | None, str] | None,
    limit: int,
    rules: dict[str, Any],
) -> list[_Found]:
    """The conversations found through a message, after `position`, up to
    limit + 1 (with any tying with the last)."""
    query = text_query(words)
    inboxes = rules["inboxes"]
    bound = _aware(position[0]) if position else None
    if position is not None and bound is None:
        return []  # past every dated item: messages always have a time
    found: dict[str, _Found] = {}
    looked: set[str] = set()
    consumed_at_bound = 0
    size = min(BATCH, limit + 1 + limit // 2)  # most matches are of different conversations
    while True:
        filt: dict[str, Any] = {"$text": query}
        if bound is not None:
            filt["created_at"] = {"$lte": bound}
        batch = (
            await store.messages.find(
                filt, {"conversation_id": 1, "inbox": 1, "text": 1, "email": 1, "created_at": 1}
            )
            .sort([("created_at", -1), ("_id", -1)])
            .limit(size + consumed_at_bound)
            .to_list()
        )
        fresh = batch[consumed_at_bound:] if bound is not None else batch
        candidates: dict[str, dict[str, Any]] = {}
        for message in fresh:
            conv_id = str(message.get("conversation_id"))
            if conv_id in looked or conv_id in candidates:
                continue
            if inboxes is not None and message.get("inbox") not in inboxes:
                looked.add(conv_id)
                continue
            candidates[conv_id] = message
        if candidates:
            await _take(
                store, query, candidates, found, looked, skip_contacts, position, rules, words
            )
        if len(batch) < size + consumed_at_bound:
            break  # every match read
        last = _aware(batch[-1]["created_at"])
        consumed_at_bound = sum(1 for m in batch if _aware(m["created_at"]) == last)
        bound = last
        size = min(BATCH, size * 2)
        if len(found) > limit:
            keys = sorted((f.key for f in found.values()), reverse=True)
            if last is not None and last < keys[limit]:
                break  # nothing older can come before the page's last
    return list(found.values())


async def _take(
    store: Store,
    query: dict[str, Any],
    candidates: dict[str, dict[str, Any]],
    found: dict[str, _Found],
    looked: set[str],
    skip_contacts: set[str],
    position: tuple[datetime | None, str] | None,
    rules: dict[str, Any],
    words: list[str],
) -> None:
    """Add the candidates' conversations that pass the rules and were not on an
    earlier page (their newest match is after the cursor)."""
    looked.update(candidates)
    shown: set[str] = set()
    if position is not None and position[0] is not None:
        at, after_id = _aware(position[0]), position[1]
        newer = store.messages.find(
            {
                "$text": query,
                "conversation_id": {"$in": sorted(candidates)},
                "created_at": {"$gte": at},
            },
            {"conversation_id": 1, "created_at": 1},
        )
        async for message in newer:
            conv_id = str(message["conversation_id"])
            when = _aware(message["created_at"])
            if when is not None and at is not None and (when, conv_id) >= (at, after_id):
                shown.add(conv_id)
    docs = await find_by_ids(store.conversations, [c for c in candidates if c not in shown])
    for conv_id, doc in docs.items():
        if str(doc.get("contact_id")) in skip_contacts:
            continue  # listed through its contact, by its last activity
        if not _passes(doc, **rules):
            continue
        message = candidates[conv_id]
        key = _aware(message["created_at"])
        if key is not None:
            match = {"message_id": str(message["_id"]), "text": snippet(message, words)}
            found[conv_id] = _Found(key, doc, match)
