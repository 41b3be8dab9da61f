"""The first-response SLA: an inbox's `first_response` and `escalate_after`.

A conversation with people (no `bot`), `open` or `pending`, waits for an agent
from the first customer message after the last agent reply (and after the bot's
last message, for one a bot handed over). When it has waited `first_response`,
it is breached: `sla_breached_at` (the moment it breached), `overdue` (until an
agent replies: `hub.services.outbox.enqueue` clears it), and `sla.breached`
`{conversation_id, stage: "assignee"}` to its assignee, or to supervisors and
admins when it has none (and `conversation.updated`, for the badge). Still
unanswered `escalate_after` after the breach: `stage: "supervisors"` to
supervisors and admins.

`check` is run by the scheduler's SLA job. Each stage of a wait happens once:
it is one conditional update of the conversation (the wait it breaches not yet
recorded, and no agent reply since the conversation was read), so two runs or
two hub processes never both do it; each breach is also kept in
`sla_breaches` (by a derived `_id`) for the reports.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from hub.model import Event
from hub.services.conversations import SLA_WAITING, view_of
from hub.services.events import Events
from hub.services.notify import SUPERVISORS, notice
from hub.settings import InboxSla
from hub.shapes import iso
from hub.store import Store, derived_id

# Conversations are looked at while their last activity is this recent, beyond
# the longest first_response + escalate_after (a hub down longer misses them).
LOOKBACK_SLACK = timedelta(hours=6)
MOST_MESSAGES_READ = 500
FIELDS = {
    "inbox": 1,
    "status": 1,
    "bot": 1,
    "assignee_id": 1,
    "last_inbound_at": 1,
    "last_agent_reply_at": 1,
    "sla_since": 1,
    "sla_breached_at": 1,
    "sla_escalated_at": 1,
    "sla_overdue": 1,
    "created_at": 1,
}


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def waiting_since(store: Store, conv: dict[str, Any]) -> datetime | None:
    """When the conversation's customer started waiting for an agent: the first
    customer message after the last agent reply and after the bot's last message;
    None when nothing waits."""
    after = _aware(conv.get("last_agent_reply_at"))
    filt: dict[str, Any] = {"conversation_id": conv["_id"]}
    if after is not None:
        filt["created_at"] = {"$gt": after}
    fields = {"direction": 1, "kind": 1, "sender": 1, "created_at": 1}
    docs = await store.messages.find(filt, fields).limit(MOST_MESSAGES_READ).to_list()
    docs.sort(key=lambda d: _aware(d.get("created_at")) or datetime.min.replace(tzinfo=UTC))
    since: datetime | None = None
    for doc in docs:
        sender = doc.get("sender") or {}
        if doc.get("direction") == "in" and doc.get("kind") != "note":
            since = since or _aware(doc.get("created_at"))
        elif isinstance(sender, dict) and sender.get("type") == "bot":
            since = None  # the bot answered what came before
    return since


def _awaiting(conv: dict[str, Any]) -> bool:
    if conv.get("bot") is not None or conv.get("status") not in SLA_WAITING:
        return False
    last_in = _aware(conv.get("last_inbound_at"))
    if last_in is None:
        return False
    replied = _aware(conv.get("last_agent_reply_at"))
    return replied is None or replied < last_in


def _data(conv: dict[str, Any], stage: str, since: datetime, breached: datetime) -> dict[str, Any]:
    return {
        "conversation_id": str(conv["_id"]),
        "stage": stage,
        "inbox": conv.get("inbox"),
        "assignee": conv.get("assignee_id"),
        "waiting_since": iso(since),
        "breached_at": iso(breached),
    }


async def _record(
    store: Store, conv: dict[str, Any], stage: str, since: datetime, at: datetime
) -> None:
    with contextlib.suppress(DuplicateKeyError):
        await store.sla_breaches.insert_one(
            {
                "_id": derived_id("sla", str(conv["_id"]), iso(since) or "", stage),
                "conversation_id": conv["_id"],
                "inbox": conv.get("inbox"),
                "assignee_id": conv.get("assignee_id"),
                "stage": stage,
                "since": since,
                "at": at,
            }
        )


async def check(
    store: Store, events: Events, rules: Mapping[str, InboxSla], now: datetime
) -> list[tuple[str, str]]:
    """Breach and escalate what is due at `now`; the (conversation, stage) pairs
    done here."""
    active = {inbox: r for inbox, r in rules.items() if r.first_response}
    if not active:
        return []
    longest = max((r.first_response or 0) + (r.escalate_after or 0) for r in active.values())
    horizon = now - timedelta(seconds=longest) - LOOKBACK_SLACK
    candidates = await store.conversations.find(
        {"last_activity_at": {"$gte": horizon}, "inbox": {"$in": sorted(active)}}, FIELDS
    ).to_list()
    done: list[tuple[str, str]] = []
    published: list[Event] = []
    for conv in candidates:
        rule = active.get(str(conv.get("inbox")))
        if rule is None or rule.first_response is None:
            continue
        if not _awaiting(conv):
            if conv.get("sla_overdue"):
                # Answered some other way (resolved, snoozed, handed to a bot).
                await store.conversations.update_one(
                    {"_id": conv["_id"], "sla_overdue": True}, {"$set": {"sla_overdue": False}}
                )
            continue
        unchanged = {"_id": conv["_id"], "last_agent_reply_at": conv.get("last_agent_reply_at")}
        recorded = _aware(conv.get("sla_since"))
        escalated = conv.get("sla_escalated_at") is not None
        # Every stage of the wait it recorded done, and still that wait: nothing to do.
        if (
            recorded is not None
            and (escalated or not rule.escalate_after)
            and recorded >= (_aware(conv.get("last_agent_reply_at")) or recorded)
        ):
            continue
        # The wait began after the conversation opened and after the last reply:
        # while that is not `first_response` ago, nothing can be due (no read).
        earliest = max(
            (
                t
                for t in (_aware(conv.get("created_at")), _aware(conv.get("last_agent_reply_at")))
                if t
            ),
            default=None,
        )
        if earliest is not None and now < earliest + timedelta(seconds=rule.first_response):
            continue
        since = await waiting_since(store, conv)
        if since is None:
            continue
        breached = since + timedelta(seconds=rule.first_response)
        if now < breached:
            continue
        if recorded != since:
            result = await store.conversations.update_one(
                {**unchanged, "sla_since": {"$ne": since}},
                {
                    "$set": {
                        "sla_since": since,
                        "sla_breached_at": breached,
                        "sla_escalated_at": None,
                        "sla_overdue": True,
                    }
                },
            )
            if result.modified_count == 0:
                continue  # answered meanwhile, or another run did it
            await _record(store, conv, "assignee", since, breached)
            fresh = await store.conversations.find_one({"_id": conv["_id"]})
            if fresh is not None:  # the overdue badge, for everyone who sees it
                view = await view_of(store, fresh)
                published.append(Event("conversation.updated", {**view, "changed_by": None}))
            assignee = conv.get("assignee_id")
            data = _data(conv, "assignee", since, breached)
            published.append(
                notice("sla.breached", data, agents=[assignee])
                if assignee
                else notice("sla.breached", data, roles=SUPERVISORS)
            )
            done.append((str(conv["_id"]), "assignee"))
            escalated = False
        if not rule.escalate_after or escalated:
            continue
        escalate_at = breached + timedelta(seconds=rule.escalate_after)
        if now < escalate_at:
            continue
        result = await store.conversations.update_one(
            {**unchanged, "sla_since": since, "sla_escalated_at": None},
            {"$set": {"sla_escalated_at": escalate_at}},
        )
        if result.modified_count == 0:
            continue
        await _record(store, conv, "supervisors", since, escalate_at)
        data = _data(conv, "supervisors", since, breached)
        published.append(notice("sla.breached", data, roles=SUPERVISORS))
        done.append((str(conv["_id"]), "supervisors"))
    if published:
        await events.publish(published)
    return done


async def report(store: Store, lo: datetime, hi: datetime) -> dict[str, Any]:
    """Breaches in [lo, hi): in all, escalated, per inbox and per agent (the
    assignee when it breached; none: `unassigned`)."""
    breaches = 0
    escalations = 0
    per_inbox: Counter[str] = Counter()
    per_inbox_escalated: Counter[str] = Counter()
    per_agent: Counter[str] = Counter()
    per_agent_escalated: Counter[str] = Counter()
    async for doc in store.sla_breaches.find({"at": {"$gte": lo, "$lt": hi}}):
        inbox = str(doc.get("inbox"))
        agent = str(doc.get("assignee_id") or "unassigned")
        if doc.get("stage") == "supervisors":
            escalations += 1
            per_inbox_escalated[inbox] += 1
            per_agent_escalated[agent] += 1
        else:
            breaches += 1
            per_inbox[inbox] += 1
            per_agent[agent] += 1
    return {
        "breaches": breaches,
        "escalations": escalations,
        "by_inbox": {
            inbox: {"breaches": per_inbox[inbox], "escalations": per_inbox_escalated[inbox]}
            for inbox in sorted(set(per_inbox) | set(per_inbox_escalated))
        },
        "by_agent": {
            agent: {"breaches": per_agent[agent], "escalations": per_agent_escalated[agent]}
            for agent in sorted(set(per_agent) | set(per_agent_escalated))
        },
    }
