"""Send later: a reply with `send_at` is `scheduled`, can be edited or cancelled
until it goes, and the send-later job hands it to the outbox once at its time:
across repeated runs, two hub processes racing, a restart, and a run cut short
between its two writes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hub.model import utcnow
from hub.services import send_later
from scheduler.agents import SendLaterJob
from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.scheduler.agents_support import Client, iso, later
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually


async def _conversation(api: Client, inbox: str = "t1", sid: str = "SL1") -> str:
    return await conversation_of(api, await inbound(api, inbox, sid, "+15551230001", "hello"))


async def _schedule(api: Client, agent, conv: str, text: str, at) -> dict:
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": text, "send_at": iso(at)},
        headers=agent.auth,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


def _sent(provider: FakeProvider, text: str) -> list[dict]:
    return [s for s in provider.sent if s.get("text") == text]


async def _status(api: Client, message_id: str) -> str | None:
    store = hub(api).store
    assert store is not None
    doc = await store.messages.find_one({"_id": message_id}, {"status": 1})
    return None if doc is None else doc.get("status")


async def test_scheduled_reply_is_sent_once_at_its_time(api, provider):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv = await _conversation(api)
    at = later(3600)
    message = await _schedule(api, agent, conv, "see you tomorrow", at)
    assert message["status"] == "scheduled"
    assert message["send_at"].startswith(iso(at)[:19]) and message["send_at"].endswith("Z")

    listed = await (await api.get(f"/api/conversations/{conv}/messages", headers=agent.auth)).json()
    shown = next(m for m in listed["items"] if m["id"] == message["id"])
    assert shown["status"] == "scheduled" and shown["send_at"] is not None

    job = SendLaterJob(hub(api))
    await job.run(at - timedelta(seconds=1))  # not yet
    await asyncio.sleep(0.3)
    assert _sent(provider, "see you tomorrow") == []
    assert await _status(api, message["id"]) == "scheduled"

    await job.run(at)
    await eventually(lambda: _status(api, message["id"]), lambda s: s == "sent")
    for _ in range(3):  # later runs find nothing more to do
        await job.run(at + timedelta(minutes=5))
    await asyncio.sleep(0.3)
    assert len(_sent(provider, "see you tomorrow")) == 1
    store = hub(api).store
    assert store is not None
    assert await store.scheduled_sends.count_documents({}) == 0


async def test_edit_and_cancel_before_it_goes_and_409_after(api, provider):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv = await _conversation(api)
    first = await _schedule(api, agent, conv, "draft", later(600))
    url = f"/api/conversations/{conv}/messages/{first['id']}"

    moved = later(7200)
    resp = await api.patch(url, json={"text": "final", "send_at": iso(moved)}, headers=agent.auth)
    assert resp.status == 200, await resp.text()
    edited = await resp.json()
    assert edited["text"] == "final" and edited["status"] == "scheduled"

    job = SendLaterJob(hub(api))
    await job.run(later(900))  # the old time: it was moved later
    await asyncio.sleep(0.2)
    assert await _status(api, first["id"]) == "scheduled"

    second = await _schedule(api, agent, conv, "never sent", later(600))
    resp = await api.delete(
        f"/api/conversations/{conv}/messages/{second['id']}", headers=agent.auth
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    resp = await api.delete(
        f"/api/conversations/{conv}/messages/{second['id']}", headers=agent.auth
    )
    assert resp.status == 409

    await job.run(moved + timedelta(seconds=1))
    await eventually(lambda: _status(api, first["id"]), lambda s: s == "sent")
    assert len(_sent(provider, "final")) == 1
    assert _sent(provider, "draft") == [] and _sent(provider, "never sent") == []

    resp = await api.patch(url, json={"text": "too late"}, headers=agent.auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "not_scheduled"
    resp = await api.delete(url, headers=agent.auth)
    assert resp.status == 409
    assert await _status(api, second["id"]) == "cancelled"


async def test_bad_send_at_and_access_are_refused_with_nothing_stored(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    outsider = await make_agent(api, "agent", inboxes=["t2"])
    conv = await _conversation(api)
    url = f"/api/conversations/{conv}/messages"
    store = hub(api).store
    assert store is not None
    before = await store.messages.count_documents({})

    past = await api.post(url, json={"text": "x", "send_at": iso(later(-60))}, headers=agent.auth)
    assert past.status == 422
    assert "future" in (await past.json())["error"]["message"]
    naive = await api.post(
        url, json={"text": "x", "send_at": "2099-01-01T10:00:00"}, headers=agent.auth
    )
    assert naive.status == 422
    for bad in ("tomorrow", "2026-13-40T99:00:00Z", ["x"]):
        resp = await api.post(url, json={"text": "x", "send_at": bad}, headers=agent.auth)
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "invalid"
    note = await api.post(
        url, json={"text": "x", "private": True, "send_at": iso(later(60))}, headers=agent.auth
    )
    assert note.status == 400
    hidden = await api.post(
        url, json={"text": "x", "send_at": iso(later(60))}, headers=outsider.auth
    )
    assert hidden.status == 403
    assert await store.messages.count_documents({}) == before
    assert await store.scheduled_sends.count_documents({}) == 0

    message = await _schedule(api, agent, conv, "x", later(600))
    murl = f"{url}/{message['id']}"
    assert (await api.patch(murl, json={"text": "y"}, headers=outsider.auth)).status == 403
    assert (await api.delete(murl, headers=outsider.auth)).status == 403
    assert (await api.patch(murl, json={}, headers=agent.auth)).status == 400
    resp = await api.patch(murl, json={"send_at": iso(later(-5))}, headers=agent.auth)
    assert resp.status == 422
    assert (await api.delete(f"{url}/0123456789abcdef01234567", headers=agent.auth)).status == 404
    assert await _status(api, message["id"]) == "scheduled"


async def test_two_hubs_racing_send_it_once(api, second_hub, provider):
    agent = await make_agent(api, "admin")
    conv = await _conversation(api)
    at = later(60)
    ids = [(await _schedule(api, agent, conv, f"race {n}", at))["id"] for n in range(5)]
    jobs = [SendLaterJob(hub(api)), SendLaterJob(hub(second_hub))]
    due = at + timedelta(seconds=1)
    await asyncio.gather(*(job.run(due) for job in jobs for _ in range(3)))
    for message_id in ids:
        await eventually(lambda m=message_id: _status(api, m), lambda s: s == "sent")
    await asyncio.sleep(0.3)
    for n in range(5):
        assert len(_sent(provider, f"race {n}")) == 1


async def test_restart_keeps_the_schedule_in_the_store(sched_settings, provider):
    from tests.scheduler.agents_support import _client

    first = await _client(sched_settings())
    try:
        agent = await make_agent(first, "admin")
        conv = await _conversation(first)
        at = later(120)
        message = await _schedule(first, agent, conv, "after restart", at)
    finally:
        await first.close()

    again = await _client(sched_settings())
    try:
        await SendLaterJob(hub(again)).run(at)
        await eventually(lambda: _status(again, message["id"]), lambda s: s == "sent")
        assert len(_sent(provider, "after restart")) == 1
    finally:
        await again.close()


async def test_a_run_cut_between_queueing_and_the_outbox_is_finished_by_the_next(api, provider):
    """The crash window: the message left `scheduled` but its outbox item and the
    row's removal never happened (kill -9 between the writes)."""
    agent = await make_agent(api, "admin")
    conv = await _conversation(api)
    at = later(60)
    message = await _schedule(api, agent, conv, "cut short", at)
    store = hub(api).store
    assert store is not None
    await store.messages.update_one(
        {"_id": message["id"]}, {"$set": {"status": "queued", "queued_at": utcnow()}}
    )
    job = SendLaterJob(hub(api))
    await job.run(at)
    await eventually(lambda: _status(api, message["id"]), lambda s: s == "sent")
    await job.run(at + timedelta(seconds=5))
    await asyncio.sleep(0.3)
    assert len(_sent(provider, "cut short")) == 1
    assert await store.scheduled_sends.count_documents({}) == 0


async def test_a_reply_the_channel_refuses_at_its_time_fails_with_the_reason(api, provider):
    agent = await make_agent(api, "admin")
    conv = await _conversation(api, inbox="w", sid="SLW")
    at = later(60)
    message = await _schedule(api, agent, conv, "outside the window", at)
    await SendLaterJob(hub(api)).run(at)
    store = hub(api).store
    assert store is not None
    doc = await store.messages.find_one({"_id": message["id"]})
    assert doc is not None and doc["status"] == "failed"
    assert "24-hour window" in doc["error"]
    assert _sent(provider, "outside the window") == []


async def test_service_refuses_a_time_without_zone():
    import pytest

    with pytest.raises(send_later.InvalidSendAt):
        send_later.check_send_at(utcnow().replace(tzinfo=None) + timedelta(hours=1), utcnow())


async def test_an_sms_contact_who_opted_out_is_refused_now_and_at_its_time(api, provider):
    agent = await make_agent(api, "admin")
    conv = await _conversation(api, sid="SLO")
    store = hub(api).store
    assert store is not None
    doc = await store.conversations.find_one({"_id": conv})
    assert doc is not None and doc["channel"] == "sms"
    at = later(60)
    message = await _schedule(api, agent, conv, "before the stop", at)

    contact = {"_id": doc["contact_id"]}
    await store.contacts.update_one(contact, {"$set": {"opted_out": {"sms": True}}})
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "after the stop", "send_at": iso(later(60))},
        headers=agent.auth,
    )
    assert resp.status == 409
    assert "opted out" in (await resp.json())["error"]["message"]

    await SendLaterJob(hub(api)).run(at)
    failed = await store.messages.find_one({"_id": message["id"]})
    assert failed is not None and failed["status"] == "failed"
    assert "opted out" in failed["error"]
    await asyncio.sleep(0.3)
    assert _sent(provider, "before the stop") == []
