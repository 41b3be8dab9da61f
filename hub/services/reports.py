"""The supervisors' summary: volumes per channel per day, first response and
resolution times (median and p90), overall and per agent.

How it reads the store, and why. There is no index on the messages' dates: it
would add work to every message insert, the hub's hottest write, for a report a
supervisor opens now and then. The report therefore makes two range reads, each
one pass with a small projection:

- conversations opened in the range (their channel, assignee, status, times);
- messages created in the range (a little before it too: a conversation's first
  message is stamped when it was received, a moment before the conversation is).

Only a conversation opened in the range whose first agent reply is not in the
range (answered later) costs one more read, by its `conversation_id` (an indexed
equality); a range that ends in the future needs none.

Days are UTC days. Times are seconds.

Resolution time is resolved minus opened: `resolved_at`, which the API's PATCH
stores when a conversation is resolved (and ingest clears when the customer
writes again). A resolved conversation from before it was stored is timed to its
last activity, a lower bound, and counted in `resolution.estimated`.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hub.model import utcnow
from hub.services import sla
from hub.store import Store, find_by_ids

MAX_DAYS = 366
# How long before the range a conversation's first message may have been received.
RECEIVE_SLACK = timedelta(minutes=5)
# Conversations whose first reply came after the range, looked up one by one.
MAX_LATE_LOOKUPS = 2000
LOOKUP_CONCURRENCY = 16
# The days a report can cover: its reads run from a little before the first day's
# midnight (RECEIVE_SLACK) to the midnight after the last, and both are datetimes,
# which end with year 9999 (so do the store's, as Python reads them).
FIRST_DAY = date.min + timedelta(days=1)
LAST_DAY = date.max - timedelta(days=1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) of `values`, interpolated linearly between
    the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)


def timing(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values), "median": percentile(values, 50), "p90": percentile(values, 90)}


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_agent_reply(msg: dict[str, Any]) -> bool:
    sender = msg.get("sender") or {}
    return (
        msg.get("direction") == "out"
        and msg.get("kind") != "note"
        and isinstance(sender, dict)
        and sender.get("type") == "agent"
    )


@dataclass
class _Conversation:
    channel: str
    opened: datetime
    assignee: str | None
    first_in: datetime | None = None
    replies: list[tuple[datetime, str | None]] = field(default_factory=list)

    def first_reply(self) -> tuple[datetime, str | None] | None:
        if self.first_in is None:
            return None
        after = [r for r in self.replies if r[0] >= self.first_in]
        return min(after, key=lambda r: r[0]) if after else None


@dataclass
class _Agent:
    replies: int = 0
    notes: int = 0
    assigned: int = 0
    resolved: int = 0
    first_response: list[float] = field(default_factory=list)
    resolution: list[float] = field(default_factory=list)


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC instants from the start of `start` to the end of `end`; ValueError
    for days outside FIRST_DAY to LAST_DAY."""
    if start < FIRST_DAY or end > LAST_DAY:
        raise ValueError(f"a report covers days from {FIRST_DAY} to {LAST_DAY}")
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    return lo, hi


async def summary(
    store: Store, start: date, end: date, *, now: datetime | None = None
) -> dict[str, Any]:
    """The report for the UTC days `start` to `end`, both included."""
    now = now or utcnow()
    lo, hi = day_bounds(start, end)
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    volumes: dict[date, dict[str, dict[str, int]]] = {d: {} for d in days}

    def bucket(at: datetime, channel: str) -> dict[str, int]:
        per_day = volumes[at.date()]
        if channel not in per_day:
            per_day[channel] = {"conversations": 0, "messages_in": 0, "messages_out": 0}
        return per_day[channel]

    conversations: dict[str, _Conversation] = {}
    agents: dict[str, _Agent] = defaultdict(_Agent)
    resolution: list[float] = []
    estimated = 0
    conv_fields = {
        "channel": 1,
        "created_at": 1,
        "status": 1,
        "assignee_id": 1,
        "resolved_at": 1,
        "last_activity_at": 1,
    }
    async for doc in store.conversations.find({"created_at": {"$gte": lo, "$lt": hi}}, conv_fields):
        opened = _aware(doc.get("created_at"))
        if opened is None:
            continue
        channel = str(doc.get("channel") or "unknown")
        assignee = doc.get("assignee_id")
        conversations[str(doc["_id"])] = _Conversation(channel, opened, assignee)
        bucket(opened, channel)["conversations"] += 1
        if assignee:
            agents[assignee].assigned += 1
        if doc.get("status") == "resolved":
            closed = _aware(doc.get("resolved_at"))
            if closed is None:
                closed = _aware(doc.get("last_activity_at"))
                estimated += 1
            if closed is not None:
                seconds = max(0.0, (closed - opened).total_seconds())
                resolution.append(seconds)
                if assignee:
                    agents[assignee].resolved += 1
                    agents[assignee].resolution.append(seconds)

    msg_fields = {"conversation_id": 1, "channel": 1, "direction": 1, "kind": 1, "sender": 1}
    msg_fields["created_at"] = 1
    async for msg in store.messages.find(
        {"created_at": {"$gte": lo - RECEIVE_SLACK, "$lt": hi}}, msg_fields
    ):
        at = _aware(msg.get("created_at"))
        if at is None:
            continue
        conv = conversations.get(str(msg.get("conversation_id")))
        if conv is not None:
            _note_for_first_response(conv, msg, at)
        if at < lo:
            continue
        # Notes and the hub's own lines in a thread (a handoff's reason) were never sent.
        is_note = msg.get("kind") in ("note", "event")
        if not is_note:
            key = "messages_in" if msg.get("direction") == "in" else "messages_out"
            bucket(at, str(msg.get("channel") or "unknown"))[key] += 1
        sender = msg.get("sender") or {}
        if isinstance(sender, dict) and sender.get("type") == "agent" and sender.get("id"):
            if is_note:
                agents[str(sender["id"])].notes += 1
            elif msg.get("direction") == "out":
                agents[str(sender["id"])].replies += 1

    if hi < now:
        await _find_late_replies(store, conversations)
    first_response: list[float] = []
    unanswered = 0
    for conv in conversations.values():
        if conv.first_in is None:
            continue
        reply = conv.first_reply()
        if reply is None:
            unanswered += 1
            continue
        seconds = max(0.0, (reply[0] - conv.first_in).total_seconds())
        first_response.append(seconds)
        if reply[1]:
            agents[reply[1]].first_response.append(seconds)

    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "timezone": "UTC",
        "days": [{"date": d.isoformat(), "channels": volumes[d]} for d in days],
        "totals": _totals(volumes),
        "first_response": {**timing(first_response), "unanswered": unanswered},
        "resolution": {**timing(resolution), "estimated": estimated},
        "agents": await _agent_rows(store, agents),
        "sla": await sla.report(store, lo, hi),
    }


def _note_for_first_response(conv: _Conversation, msg: dict[str, Any], at: datetime) -> None:
    if msg.get("direction") == "in":
        if conv.first_in is None or at < conv.first_in:
            conv.first_in = at
    elif _is_agent_reply(msg):
        conv.replies.append((at, (msg.get("sender") or {}).get("id")))


async def _find_late_replies(store: Store, conversations: dict[str, _Conversation]) -> None:
    """For conversations first written to in the range and not answered in it,
    read their messages (by `conversation_id`) to find a reply made later."""
    waiting = [
        (cid, conv)
        for cid, conv in conversations.items()
        if conv.first_in is not None and conv.first_reply() is None
    ][:MAX_LATE_LOOKUPS]
    gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)
    fields = {"direction": 1, "kind": 1, "sender": 1, "created_at": 1}

    async def look(cid: str, conv: _Conversation) -> None:
        async with gate:
            async for msg in store.messages.find({"conversation_id": cid}, fields):
                at = _aware(msg.get("created_at"))
                if at is not None and _is_agent_reply(msg):
                    conv.replies.append((at, (msg.get("sender") or {}).get("id")))

    await asyncio.gather(*(look(cid, conv) for cid, conv in waiting))


def _totals(volumes: dict[date, dict[str, dict[str, int]]]) -> dict[str, Any]:
    by_channel: dict[str, dict[str, int]] = {}
    overall = {"conversations": 0, "messages_in": 0, "messages_out": 0}
    for per_day in volumes.values():
        for channel, counts in per_day.items():
            target = by_channel.setdefault(
                channel, {"conversations": 0, "messages_in": 0, "messages_out": 0}
            )
            for key, n in counts.items():
                target[key] += n
                overall[key] += n
    return {**overall, "by_channel": dict(sorted(by_channel.items()))}


async def _agent_rows(store: Store, agents: dict[str, _Agent]) -> list[dict[str, Any]]:
    known = await find_by_ids(store.agents, list(agents))
    rows: list[dict[str, Any]] = []
    for agent_id, stats in sorted(
        agents.items(),
        key=lambda item: (
            -item[1].replies,
            str((known.get(item[0]) or {}).get("name") or ""),
            item[0],
        ),
    ):
        doc = known.get(agent_id) or {}
        rows.append(
            {
                "id": agent_id,
                "name": doc.get("name"),
                "email": doc.get("email"),
                "replies": stats.replies,
                "notes": stats.notes,
                "conversations_assigned": stats.assigned,
                "conversations_resolved": stats.resolved,
                "first_response": timing(stats.first_response),
                "resolution": timing(stats.resolution),
            }
        )
    return rows
