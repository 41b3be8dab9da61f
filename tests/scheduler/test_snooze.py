"""Snooze: a snoozed conversation opens at `snooze_until`, with
`conversation.updated` for everyone who sees it and `snooze.ended` for its
assignee, once across two hub processes; a customer's message reopens it
earlier (ingest); snoozing again to a later time keeps it asleep."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hub.services.runtime import Hub
from scheduler.agents import SnoozeJob
from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.scheduler.agents_support import Client, iso, later
from tests.support.waiting import drain, next_event, of_type


async def _snoozed(api: Client, agent, sid: str, until) -> str:
    conv = await conversation_of(api, await inbound(api, "t1", sid, "+15551230002", "hi"))
    resp = await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "snoozed", "snooze_until": iso(until), "assignee_id": agent.id},
        headers=agent.auth,
    )
    assert resp.status == 200, await resp.text()
    return conv


async def _status(hub_: Hub, conv: str) -> str | None:
    assert hub_.store is not None
    doc = await hub_.store.conversations.find_one({"_id": conv}, {"status": 1})
    return None if doc is None else doc.get("status")


async def test_snoozed_conversation_wakes_at_its_time_with_events(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    until = later(3600)
    conv = await _snoozed(api, agent, "SZ1", until)
    sub = hub(api).bus.subscribe()
    job = SnoozeJob(hub(api))

    await job.run(until - timedelta(seconds=1))
    assert await _status(hub(api), conv) == "snoozed"
    assert [e for e in drain(sub) if e.type == "conversation.updated"] == []

    await job.run(until)
    assert await _status(hub(api), conv) == "open"
    updated = await next_event(sub, of_type("conversation.updated", id=conv))
    assert updated.data["status"] == "open" and updated.data["snooze_until"] is None
    ended = await next_event(sub, of_type("snooze.ended", conversation_id=conv))
    assert ended.data["to"]["agents"] == [agent.id]

    await job.run(until + timedelta(minutes=1))
    await asyncio.sleep(0.2)
    assert [e for e in drain(sub) if e.type in ("conversation.updated", "snooze.ended")] == []


async def test_two_hubs_wake_it_once(api, second_hub):
    agent = await make_agent(api, "admin")
    until = later(600)
    conv = await _snoozed(api, agent, "SZ2", until)
    sub = hub(api).bus.subscribe()
    jobs = [SnoozeJob(hub(api)), SnoozeJob(hub(second_hub))]
    await asyncio.gather(*(job.run(until) for job in jobs for _ in range(2)))
    await asyncio.sleep(1.0)  # the other process's events come through the store
    ended = [
        e for e in drain(sub) if e.type == "snooze.ended" and e.data["conversation_id"] == conv
    ]
    assert len(ended) == 1
    assert await _status(hub(api), conv) == "open"


async def test_a_customer_message_reopens_it_and_a_later_snooze_holds(api):
    agent = await make_agent(api, "admin")
    conv = await _snoozed(api, agent, "SZ3", later(3600))
    await inbound(api, "t1", "SZ3b", "+15551230002", "are you there?")
    assert await _status(hub(api), conv) == "open"

    first = later(600)
    await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "snoozed", "snooze_until": iso(first)},
        headers=agent.auth,
    )
    moved = later(7200)
    await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "snoozed", "snooze_until": iso(moved)},
        headers=agent.auth,
    )
    await SnoozeJob(hub(api)).run(first + timedelta(seconds=1))
    assert await _status(hub(api), conv) == "snoozed"
    await SnoozeJob(hub(api)).run(moved)
    assert await _status(hub(api), conv) == "open"
