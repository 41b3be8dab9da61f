"""The first-response SLA: a conversation with people whose customer message has
no agent reply by `first_response` is breached (`sla_breached_at`, the overdue
filter, `sla.breached` stage assignee to its assignee, or to supervisors and
admins without one), escalated `escalate_after` later (stage supervisors), each
once across runs and two hub processes; an agent's reply ends it; bots'
conversations and inboxes without an SLA are left alone; reports count it."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta
from pathlib import Path

import aiohttp
import pytest

from hub.config import ConfigError, parse_settings
from hub.services import sla
from hub.settings import InboxSla
from scheduler.agents import SlaJob
from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.scheduler.agents_support import Client
from tests.support.waiting import drain

MIN = timedelta(minutes=1)


async def _waiting(api: Client, sid: str, inbox: str = "t1", phone: str = "+15551230004"):
    conv = await conversation_of(api, await inbound(api, inbox, sid, phone, "need help"))
    store = hub(api).store
    assert store is not None
    doc = await store.conversations.find_one({"_id": conv})
    assert doc is not None
    at = doc["last_inbound_at"]
    return conv, (at if at.tzinfo else at.replace(tzinfo=UTC))


async def _conv(api: Client, conv: str) -> dict:
    store = hub(api).store
    assert store is not None
    doc = await store.conversations.find_one({"_id": conv})
    assert doc is not None
    return doc


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


def _breaches(frames: list[dict]) -> list[dict]:
    return [f["data"] for f in frames if f["type"] == "sla.breached"]


async def test_breach_then_escalation_each_once_to_the_right_people(api):
    assignee = await make_agent(api, "agent", inboxes=["t1"])
    colleague = await make_agent(api, "agent", inboxes=["t1"])
    supervisor = await make_agent(api, "supervisor")
    conv, t0 = await _waiting(api, "SLA1")
    resp = await api.patch(
        f"/api/conversations/{conv}", json={"assignee_id": assignee.id}, headers=supervisor.auth
    )
    assert resp.status == 200
    sockets = {
        name: await api.ws_connect(f"/api/ws?token={who.token}")
        for name, who in (("assignee", assignee), ("colleague", colleague), ("sup", supervisor))
    }
    for ws in sockets.values():
        await _frames(ws, 0.2)
    job = SlaJob(hub(api))

    await job.run(t0 + 14 * MIN)
    assert (await _conv(api, conv)).get("sla_breached_at") is None

    await job.run(t0 + 16 * MIN)
    await job.run(t0 + 20 * MIN)
    doc = await _conv(api, conv)
    breached = doc["sla_breached_at"]
    assert abs((breached.replace(tzinfo=UTC) - (t0 + 15 * MIN)).total_seconds()) < 0.01
    assert doc["sla_overdue"] is True
    got = _breaches(await _frames(sockets["assignee"], 0.8))
    assert got == [
        {
            "conversation_id": conv,
            "stage": "assignee",
            "inbox": "t1",
            "assignee": assignee.id,
            "waiting_since": got[0]["waiting_since"],
            "breached_at": got[0]["breached_at"],
        }
    ]
    assert _breaches(await _frames(sockets["colleague"], 0.2)) == []
    assert _breaches(await _frames(sockets["sup"], 0.2)) == []

    listed = await (
        await api.get("/api/conversations?overdue=true", headers=supervisor.auth)
    ).json()
    assert [c["id"] for c in listed["items"]] == [conv]
    assert listed["items"][0]["overdue"] is True
    assert listed["items"][0]["sla_breached_at"] is not None
    others = await (
        await api.get("/api/conversations?overdue=false", headers=supervisor.auth)
    ).json()
    assert conv not in [c["id"] for c in others["items"]]

    await job.run(t0 + 44 * MIN)  # 29 minutes after the breach
    assert _breaches(await _frames(sockets["sup"], 0.3)) == []
    await job.run(t0 + 46 * MIN)
    await job.run(t0 + 90 * MIN)
    escalated = _breaches(await _frames(sockets["sup"], 0.8))
    assert [(e["conversation_id"], e["stage"]) for e in escalated] == [(conv, "supervisors")]
    assert _breaches(await _frames(sockets["assignee"], 0.2)) == []
    assert _breaches(await _frames(sockets["colleague"], 0.2)) == []

    # The days the breach and the escalation fall on (tomorrow's, for a test run
    # in the last 90 minutes of a UTC day; the default range ends today).
    last_day = (t0 + 90 * MIN).date().isoformat()
    report = await (
        await api.get(f"/api/reports/summary?to={last_day}", headers=supervisor.auth)
    ).json()
    assert report["sla"]["breaches"] == 1 and report["sla"]["escalations"] == 1
    assert report["sla"]["by_inbox"]["t1"] == {"breaches": 1, "escalations": 1}
    assert report["sla"]["by_agent"][assignee.id] == {"breaches": 1, "escalations": 1}

    # The agent answers: no longer overdue, the breach stays on record.
    resp = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "sorry!"}, headers=assignee.auth
    )
    assert resp.status == 201
    doc = await _conv(api, conv)
    assert doc["sla_overdue"] is False and doc["sla_breached_at"] is not None
    listed = await (
        await api.get("/api/conversations?overdue=true", headers=supervisor.auth)
    ).json()
    assert listed["items"] == []
    await job.run(t0 + 120 * MIN)
    assert _breaches(await _frames(sockets["sup"], 0.3)) == []
    for ws in sockets.values():
        await ws.close()


async def test_unassigned_breach_goes_to_supervisors_and_admins(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    admin = await make_agent(api, "admin")
    conv, t0 = await _waiting(api, "SLA2", phone="+15551230005")
    ws_agent = await api.ws_connect(f"/api/ws?token={agent.token}")
    ws_admin = await api.ws_connect(f"/api/ws?token={admin.token}")
    await _frames(ws_agent, 0.2)
    await _frames(ws_admin, 0.2)
    await SlaJob(hub(api)).run(t0 + 16 * MIN)
    got = _breaches(await _frames(ws_admin, 0.8))
    assert [(g["conversation_id"], g["stage"]) for g in got] == [(conv, "assignee")]
    assert _breaches(await _frames(ws_agent, 0.2)) == []
    await ws_agent.close()
    await ws_admin.close()


async def test_answered_in_time_bot_conversations_and_inboxes_without_sla_are_left_alone(api):
    agent = await make_agent(api, "admin")
    answered, t0 = await _waiting(api, "SLA3", phone="+15551230006")
    resp = await api.post(
        f"/api/conversations/{answered}/messages", json={"text": "hi!"}, headers=agent.auth
    )
    assert resp.status == 201
    with_bot, _ = await _waiting(api, "SLA4", phone="+15551230007")
    store = hub(api).store
    assert store is not None
    await store.conversations.update_one({"_id": with_bot}, {"$set": {"bot": "shop"}})
    no_sla, _ = await _waiting(api, "SLA5", inbox="t2", phone="+15551230008")
    await store.conversations.update_one({"_id": no_sla}, {"$set": {"bot": None}})

    sub = hub(api).bus.subscribe()
    await SlaJob(hub(api)).run(t0 + 60 * MIN)
    assert [e for e in drain(sub) if e.type == "sla.breached"] == []
    for conv in (answered, with_bot, no_sla):
        assert (await _conv(api, conv)).get("sla_breached_at") is None

    # The customer writes again after the answer: a new wait, breached from then.
    await inbound(api, "t1", "SLA3b", "+15551230006", "still there?")
    doc = await _conv(api, answered)
    again = doc["last_inbound_at"].replace(tzinfo=UTC)
    await SlaJob(hub(api)).run(again + 16 * MIN)
    breached = [e for e in drain(sub) if e.type == "sla.breached"]
    assert [e.data["conversation_id"] for e in breached] == [answered]


async def test_two_hubs_breach_once(api, second_hub):
    conv, t0 = await _waiting(api, "SLA6", phone="+15551230009")
    sub = hub(api).bus.subscribe()
    jobs = [SlaJob(hub(api)), SlaJob(hub(second_hub))]
    await asyncio.gather(*(job.run(t0 + 50 * MIN) for job in jobs for _ in range(3)))
    await asyncio.sleep(1.0)  # the other process's events come through the store
    stages = sorted(e.data["stage"] for e in drain(sub) if e.type == "sla.breached")
    assert stages == ["assignee", "supervisors"]
    store = hub(api).store
    assert store is not None
    assert await store.sla_breaches.count_documents({"conversation_id": conv}) == 2


async def test_durations_in_seconds(api):
    """The rules in seconds, as a config of "5s" and "3s" gives them."""
    conv, t0 = await _waiting(api, "SLA7", phone="+15551230010")
    hub_ = hub(api)
    assert hub_.store is not None and hub_.events is not None
    rules = {"t1": InboxSla(first_response=5, escalate_after=3)}
    seconds = timedelta(seconds=1)
    assert await sla.check(hub_.store, hub_.events, rules, t0 + 4 * seconds) == []
    assert await sla.check(hub_.store, hub_.events, rules, t0 + 6 * seconds) == [(conv, "assignee")]
    assert await sla.check(hub_.store, hub_.events, rules, t0 + 7 * seconds) == []
    assert await sla.check(hub_.store, hub_.events, rules, t0 + 8.5 * seconds) == [
        (conv, "supervisors")
    ]
    assert await sla.check(hub_.store, hub_.events, rules, t0 + 60 * seconds) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"first_response": "15"}, "inboxes[0].first_response"),
        ({"first_response": "15 minutes"}, "inboxes[0].first_response"),
        ({"first_response": 900}, "inboxes[0].first_response"),
        ({"first_response": "0s"}, "inboxes[0].first_response"),
        ({"first_response": "15m", "escalate_after": "x"}, "inboxes[0].escalate_after"),
        ({"escalate_after": "30m"}, "inboxes[0].escalate_after: needs first_response"),
    ],
)
def test_bad_durations_name_the_key(tmp_path: Path, entry: dict, message: str):
    data = {"inboxes": [{"id": "t1", "channel": "testchan", "secret": "s" * 8, **entry}]}
    with pytest.raises(ConfigError) as error:
        parse_settings(data, source="hub.toml", base_dir=tmp_path)
    assert f"hub.toml: {message}" in str(error.value)


def test_durations_are_read(tmp_path: Path):
    data = {
        "inboxes": [
            {
                "id": "t1",
                "channel": "testchan",
                "secret": "s" * 8,
                "first_response": "90s",
                "escalate_after": "1.5h",
            },
            {"id": "t2", "channel": "testchan", "secret": "s" * 8},
        ]
    }
    settings = parse_settings(data, source="hub.toml", base_dir=tmp_path)
    assert settings.inboxes[0].sla == InboxSla(first_response=90, escalate_after=5400)
    assert settings.inboxes[1].sla == InboxSla()


async def test_the_overdue_filter_refuses_bad_values_and_keeps_to_the_agents_inboxes(api):
    outsider = await make_agent(api, "agent", inboxes=["t2"])
    insider = await make_agent(api, "agent", inboxes=["t1"])
    conv, t0 = await _waiting(api, "SLA8", phone="+15551230011")
    await SlaJob(hub(api)).run(t0 + 16 * MIN)
    for bad in ("yes", "1", ""):
        resp = await api.get(f"/api/conversations?overdue={bad}", headers=insider.auth)
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "invalid"
    mine = await (await api.get("/api/conversations?overdue=true", headers=insider.auth)).json()
    assert [c["id"] for c in mine["items"]] == [conv]
    theirs = await (await api.get("/api/conversations?overdue=true", headers=outsider.auth)).json()
    assert theirs["items"] == []


async def test_a_resolved_conversation_is_not_overdue(api):
    supervisor = await make_agent(api, "supervisor")
    conv, t0 = await _waiting(api, "SLA9", phone="+15551230012")
    await SlaJob(hub(api)).run(t0 + 16 * MIN)
    url = f"/api/conversations/{conv}"
    assert (await (await api.get(url, headers=supervisor.auth)).json())["overdue"] is True
    resp = await api.patch(url, json={"status": "resolved"}, headers=supervisor.auth)
    assert resp.status == 200
    assert (await resp.json())["overdue"] is False
    listed = await (
        await api.get("/api/conversations?overdue=true&status=resolved", headers=supervisor.auth)
    ).json()
    assert listed["items"] == []
    others = await (
        await api.get("/api/conversations?overdue=false&status=resolved", headers=supervisor.auth)
    ).json()
    assert [c["id"] for c in others["items"]] == [conv]
