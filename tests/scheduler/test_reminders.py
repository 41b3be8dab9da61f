"""Reminders: an agent sets one on a conversation, lists and deletes its own;
at its time the agent (and only it) gets `reminder.due` over the WebSocket,
once across two hub processes and repeated runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp

from scheduler.agents import RemindersJob
from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.scheduler.agents_support import Client, iso, later
from tests.support.waiting import drain


async def _conversation(api: Client, sid: str = "RM1") -> str:
    return await conversation_of(api, await inbound(api, "t1", sid, "+15551230003", "call me"))


async def _frames(ws: aiohttp.ClientWebSocketResponse, wait: float) -> list[dict]:
    frames: list[dict] = []
    while True:
        try:
            msg = await ws.receive(timeout=wait)
        except TimeoutError:
            return frames
        if msg.type != aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(msg.json())


async def test_reminder_set_listed_and_delivered_once_to_its_agent(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    colleague = await make_agent(api, "agent", inboxes=["t1"])
    conv = await _conversation(api)
    at = later(3600)
    resp = await api.post(
        f"/api/conversations/{conv}/reminders",
        json={"at": iso(at), "note": "call back Friday 10:00"},
        headers=agent.auth,
    )
    assert resp.status == 201, await resp.text()
    reminder = await resp.json()
    assert reminder["status"] == "pending" and reminder["note"] == "call back Friday 10:00"

    mine = await (await api.get(f"/api/conversations/{conv}/reminders", headers=agent.auth)).json()
    assert [r["id"] for r in mine["items"]] == [reminder["id"]]
    theirs = await (await api.get("/api/reminders", headers=colleague.auth)).json()
    assert theirs["items"] == []

    ws_agent = await api.ws_connect(f"/api/ws?token={agent.token}")
    ws_other = await api.ws_connect(f"/api/ws?token={colleague.token}")
    await _frames(ws_agent, 0.3)
    await _frames(ws_other, 0.3)

    job = RemindersJob(hub(api))
    await job.run(at - timedelta(seconds=1))
    await job.run(at)
    await job.run(at + timedelta(seconds=30))
    got = [f for f in await _frames(ws_agent, 1.0) if f["type"] == "reminder.due"]
    assert len(got) == 1
    assert got[0]["data"]["id"] == reminder["id"]
    assert got[0]["data"]["conversation_id"] == conv
    assert got[0]["data"]["note"] == "call back Friday 10:00"
    assert "to" not in got[0]["data"]
    assert [f for f in await _frames(ws_other, 0.3) if f["type"] == "reminder.due"] == []
    await ws_agent.close()
    await ws_other.close()

    after = await (await api.get("/api/reminders", headers=agent.auth)).json()
    assert after["items"] == []


async def test_two_hubs_fire_it_once(api, second_hub):
    agent = await make_agent(api, "admin")
    conv = await _conversation(api, "RM2")
    at = later(600)
    for n in range(4):
        resp = await api.post(
            f"/api/conversations/{conv}/reminders",
            json={"at": iso(at + timedelta(seconds=n))},
            headers=agent.auth,
        )
        assert resp.status == 201
    sub = hub(api).bus.subscribe()
    jobs = [RemindersJob(hub(api)), RemindersJob(hub(second_hub))]
    await asyncio.gather(*(job.run(at + timedelta(seconds=10)) for job in jobs for _ in range(3)))
    await asyncio.sleep(1.0)  # the other process's events come through the store
    due = [e for e in drain(sub) if e.type == "reminder.due"]
    assert len(due) == 4
    assert len({e.data["id"] for e in due}) == 4


async def test_delete_and_bad_input(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    other = await make_agent(api, "agent", inboxes=["t1"])
    outsider = await make_agent(api, "agent", inboxes=["t2"])
    conv = await _conversation(api, "RM3")
    url = f"/api/conversations/{conv}/reminders"
    assert (await api.post(url, json={"at": iso(later(-5))}, headers=agent.auth)).status == 422
    assert (await api.post(url, json={"at": "2099-01-01T10:00"}, headers=agent.auth)).status == 422
    assert (await api.post(url, json={"at": "friday"}, headers=agent.auth)).status == 400
    assert (await api.post(url, json={}, headers=agent.auth)).status == 400
    resp = await api.post(url, json={"at": iso(later(60)), "x": 1}, headers=agent.auth)
    assert resp.status == 400
    assert (await api.post(url, json={"at": iso(later(60))}, headers=outsider.auth)).status == 403
    assert (await api.get(url, headers=outsider.auth)).status == 403
    assert (await (await api.get("/api/reminders", headers=agent.auth)).json())["items"] == []

    made = await (await api.post(url, json={"at": iso(later(60))}, headers=agent.auth)).json()
    assert (await api.delete(f"/api/reminders/{made['id']}", headers=other.auth)).status == 404
    assert (await api.delete(f"/api/reminders/{made['id']}", headers=agent.auth)).status == 200
    assert (await api.delete(f"/api/reminders/{made['id']}", headers=agent.auth)).status == 404
    sub = hub(api).bus.subscribe()
    await RemindersJob(hub(api)).run(later(120))
    assert [e for e in drain(sub) if e.type == "reminder.due"] == []


async def test_a_reminder_survives_a_restart(sched_settings):
    from tests.scheduler.agents_support import _client

    first = await _client(sched_settings())
    try:
        agent = await make_agent(first, "admin")
        conv = await _conversation(first, "RM4")
        at = later(300)
        resp = await first.post(
            f"/api/conversations/{conv}/reminders", json={"at": iso(at)}, headers=agent.auth
        )
        assert resp.status == 201
    finally:
        await first.close()

    again = await _client(sched_settings())
    try:
        sub = hub(again).bus.subscribe()
        await RemindersJob(hub(again)).run(at)
        await RemindersJob(hub(again)).run(at + timedelta(seconds=5))
        due = [e for e in drain(sub) if e.type == "reminder.due"]
        assert [e.data["conversation_id"] for e in due] == [conv]
    finally:
        await again.close()
