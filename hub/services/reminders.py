"""Reminders: an agent asks to be told about a conversation at a time ("call
back on Friday 10:00"); `fire_due` (the scheduler's reminders job) sends
`reminder.due` to that agent then, once.

A reminder still to fire has `due_at` (indexed); firing is one conditional
update that clears it, so of two hub processes (or two runs) one fires it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from hub.model import Event, utcnow
from hub.services.events import Events
from hub.services.notify import notice
from hub.shapes import iso
from hub.store import Store, new_id

FURTHEST = timedelta(days=366)
MOST_PER_AGENT = 500  # pending reminders one agent may hold


class InvalidReminder(ValueError):
    """A reminder time that is not a future time with a time zone (422)."""


class NoSuchReminder(LookupError):
    """No such reminder of this agent (404)."""


def reminder_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "conversation_id": doc.get("conversation_id"),
        "inbox": doc.get("inbox"),
        "agent_id": doc.get("agent_id"),
        "at": iso(doc.get("at")),
        "note": doc.get("note"),
        "status": "fired" if doc.get("fired_at") else "pending",
        "fired_at": iso(doc.get("fired_at")),
        "created_at": iso(doc.get("created_at")),
    }


def _check_at(at: datetime, now: datetime) -> datetime:
    if at.utcoffset() is None:
        raise InvalidReminder("at: give a time zone (Z for UTC)")
    try:
        utc = at.astimezone(UTC)
    except OverflowError:
        raise InvalidReminder("at: must be in years 1-9999 in UTC") from None
    if utc <= now:
        raise InvalidReminder("at: must be in the future")
    if utc - now > FURTHEST:
        raise InvalidReminder("at: at most a year ahead")
    return utc


async def create(
    store: Store,
    conversation: dict[str, Any],
    agent_id: str,
    *,
    at: datetime,
    note: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or utcnow()
    when = _check_at(at, now)
    pending = await store.reminders.count_documents(
        {"agent_id": agent_id, "fired_at": None}, limit=MOST_PER_AGENT
    )
    if pending >= MOST_PER_AGENT:
        raise InvalidReminder(f"at most {MOST_PER_AGENT} pending reminders per agent")
    doc = {
        "_id": new_id(),
        "agent_id": agent_id,
        "conversation_id": conversation["_id"],
        "inbox": conversation.get("inbox"),
        "at": when,
        "due_at": when,
        "note": note,
        "fired_at": None,
        "created_at": now,
    }
    await store.reminders.insert_one(doc)
    return doc


async def of_agent(
    store: Store, agent_id: str, conversation_id: str | None = None, *, include_fired: bool = False
) -> list[dict[str, Any]]:
    """The agent's reminders (on one conversation), soonest first."""
    filt: dict[str, Any] = {"agent_id": agent_id}
    if conversation_id is not None:
        filt["conversation_id"] = conversation_id
    if not include_fired:
        filt["fired_at"] = None
    docs = await store.reminders.find(filt).limit(MOST_PER_AGENT).to_list()
    docs.sort(key=lambda d: (d.get("at") or datetime.min.replace(tzinfo=UTC), str(d["_id"])))
    return docs


async def delete(store: Store, agent_id: str, reminder_id: str) -> None:
    result = await store.reminders.delete_one({"_id": reminder_id, "agent_id": agent_id})
    if result.deleted_count == 0:
        raise NoSuchReminder("no such reminder")  # of this agent; the API's 404 says just this


async def fire_due(store: Store, events: Events, now: datetime, *, limit: int = 500) -> int:
    """Send `reminder.due` for every reminder due at `now`; how many fired here."""
    due = (
        await store.reminders.find({"due_at": {"$lte": now}, "fired_at": None})
        .limit(limit)
        .to_list()
    )
    published: list[Event] = []
    for row in due:
        # `fired_at` null is the guard: the embedded engine's single-document
        # update takes a null `due_at` as "$lte" any time, so the range alone
        # would let a second run fire it again.
        doc = await store.reminders.find_one_and_update(
            {"_id": row["_id"], "fired_at": None, "due_at": {"$lte": now}},
            {"$set": {"due_at": None, "fired_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            continue  # fired by another process, or deleted
        published.append(notice("reminder.due", reminder_view(doc), agents=[doc["agent_id"]]))
    if published:
        await events.publish(published)
    return len(published)
