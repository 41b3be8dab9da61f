"""Snooze: a `snoozed` conversation becomes `open` at its `snooze_until`
(`wake_due`, run by the scheduler's snooze job), with `conversation.updated` for
everyone who sees it and `snooze.ended` for its assignee. A customer's message
reopens it earlier (ingest).

Waking is one conditional update (still snoozed, and due), so of two hub
processes, or an agent snoozing it again meanwhile, one change wins.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import ReturnDocument

from hub.model import Event
from hub.services.conversations import view_of
from hub.services.events import Events
from hub.services.notify import notice
from hub.shapes import iso
from hub.store import Store


async def wake_due(store: Store, events: Events, now: datetime, *, limit: int = 500) -> int:
    """Open every conversation whose snooze ended by `now`; how many woke here."""
    due = (
        await store.conversations.find({"snooze_until": {"$lte": now}, "status": "snoozed"})
        .limit(limit)
        .to_list()
    )
    woken = 0
    for row in due:
        doc = await store.conversations.find_one_and_update(
            {"_id": row["_id"], "status": "snoozed", "snooze_until": {"$lte": now}},
            {"$set": {"status": "open", "snooze_until": None}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            continue
        woken += 1
        view = await view_of(store, doc)
        published = [Event("conversation.updated", {**view, "changed_by": None})]
        assignee = doc.get("assignee_id")
        if assignee:
            data = {
                "conversation_id": str(doc["_id"]),
                "inbox": doc.get("inbox"),
                "snoozed_until": iso(row.get("snooze_until")),
            }
            published.append(notice("snooze.ended", data, agents=[assignee]))
        await events.publish(published)
    return woken
