"""Campaigns through the API and the campaigns job, with time set by the test.

The hub runs with its scheduler off: each test runs the campaigns job itself
(`CampaignJob(hub).run(now)`) at the instants it chooses, while the real
dispatcher sends through the test channel to a fake provider on loopback.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.api.base import API
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.services import campaigns
from hub.services.accounts import Passwords
from scheduler.campaigns import CampaignJob
from tests.api.conftest import FAST_HASHER, Agent, Client, hub, inbound, make_agent
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
NO_QUIET = {"start": "00:00", "end": "00:00"}


@pytest.fixture
def campaign_settings(
    embedded_uri: str, db_name: str, tmp_path: Any, provider: FakeProvider
) -> Callable[[], Settings]:
    def make() -> Settings:
        base = {"channel": "testchan", "secret": SECRET, "api_base": provider.url, "rate": 200.0}
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "scheduler": {"enabled": False},  # the tests run the job themselves
            "inboxes": [
                {**base, "id": "t1"},
                {**base, "id": "t2"},
                {**base, "id": "wa", "medium": "whatsapp"},
                {**base, "id": "tg", "medium": "telegram"},
            ],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def capi(campaign_settings: Callable[[], Settings]) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    app = build_app(campaign_settings())
    async with TestClient(TestServer(app)) as client:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        yield client


_numbers = iter(range(1000, 10**6))


async def customer(
    client: Client,
    name: str,
    *,
    inbox: str = "t1",
    labels: list[str] | None = None,
    **fields: Any,
) -> str:
    """A contact who wrote once on `inbox` (so it has a conversation there); its id."""
    n = next(_numbers)
    phone = f"+1555{n:07d}"
    message_id = await inbound(client, inbox, f"SM{n}", phone, "hello", ProfileName=name)
    store = hub(client).store
    assert store is not None
    message = await store.messages.find_one({"_id": message_id})
    assert message is not None
    conv = await store.conversations.find_one({"_id": message["conversation_id"]})
    assert conv is not None
    contact_id = str(conv["contact_id"])
    await store.contacts.update_one(
        {"_id": contact_id}, {"$set": {"name": name, "labels": labels or ["vip"], **fields}}
    )
    return contact_id


async def create(client: Client, who: Agent, **body: Any) -> Any:
    payload = {
        "name": "Spring sale",
        "audience": {"labels": ["vip"]},
        "message": {"text": "Hi {first_name}!"},
        "quiet_hours": NO_QUIET,
        **body,
    }
    return await client.post("/api/campaigns", json=payload, headers=who.auth)


async def created(client: Client, who: Agent, **body: Any) -> dict[str, Any]:
    resp = await create(client, who, **body)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def control(client: Client, who: Agent, cid: str, action: str) -> dict[str, Any]:
    resp = await client.post(f"/api/campaigns/{cid}/{action}", headers=who.auth)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def details(client: Client, who: Agent, cid: str) -> dict[str, Any]:
    resp = await client.get(f"/api/campaigns/{cid}", headers=who.auth)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def recipients(client: Client, who: Agent, cid: str, status: str = "") -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        query = f"?limit=2{'&status=' + status if status else ''}"
        if cursor:
            query += f"&cursor={cursor}"
        resp = await client.get(f"/api/campaigns/{cid}/recipients{query}", headers=who.auth)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def settle(client: Client, job: CampaignJob, now: datetime, cid: str) -> None:
    """Run the job until the campaign's sends have all left the outbox."""
    store = hub(client).store
    assert store is not None

    async def outstanding() -> int:
        await job.run(now)
        per = await campaigns.counts(store, cid)
        return per["queued"]

    await eventually(outstanding, lambda n: n == 0)


async def post_inbound_status(client: Client, provider_id: str, status: str) -> None:
    """The provider's delivery callback for a message it took."""
    from tests.conftest import signed_form

    body, headers = signed_form({"MessageSid": provider_id, "MessageStatus": status})
    resp = await client.post("/webhooks/testchan/t1/status", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


def sent_to(provider: FakeProvider) -> list[str]:
    return [m["to"] for m in provider.sent]


async def test_agents_may_not_touch_campaigns(capi: Client) -> None:
    agent = await make_agent(capi, "agent")
    for method, path in [
        ("GET", "/api/campaigns"),
        ("POST", "/api/campaigns"),
        ("POST", "/api/campaigns/audience"),
        ("GET", "/api/campaigns/abc"),
        ("POST", "/api/campaigns/abc/start"),
        ("GET", "/api/campaigns/abc/recipients"),
    ]:
        resp = await capi.request(method, path, json={}, headers=agent.auth)
        assert resp.status == 403, (method, path)
    resp = await capi.get("/api/campaigns")
    assert resp.status == 401


async def test_a_campaign_reaches_each_contact_once_with_its_placeholders(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    ann = await customer(capi, "Ann Lee", attributes={"city": "Riga"})
    await customer(capi, "Bob Stone", attributes={"city": "Oslo"})
    carl = await customer(capi, "Carl Diaz", opted_out={"sms": True})
    await customer(capi, "Dora", labels=["other"])
    campaign = await created(capi, boss, message={"text": "Hi {first_name} from {city}!"})
    assert campaign["status"] == "draft"
    assert campaign["stats"]["targeted"] == 0
    cid = campaign["id"]
    assert (await control(capi, boss, cid, "start"))["status"] == "running"

    job = CampaignJob(hub(capi))
    await settle(capi, job, NOON, cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 2)
    texts = sorted(m["text"] for m in provider.sent)
    assert texts == ["Hi Ann from Riga!", "Hi Bob from Oslo!"]

    # Again and again: nobody gets it twice, and it is complete.
    for _ in range(3):
        await job.run(NOON + timedelta(minutes=1))
    await CampaignJob(hub(capi)).run(NOON + timedelta(minutes=2))  # a restarted process
    await asyncio.sleep(0.3)
    assert len(provider.sent) == 2
    view = await details(capi, boss, cid)
    assert view["status"] == "completed"
    stats = view["stats"]
    assert stats["targeted"] == 3 and stats["skipped"] == 1 and stats["failed"] == 0
    assert stats["sent"] == 2 and stats["queued"] == 0 and stats["unknown"] == 0

    # A delivery receipt for one of them reaches its record (a fresh job looks
    # at the sent ones at once).
    await post_inbound_status(capi, provider.sent[0]["id"], "delivered")
    await CampaignJob(hub(capi)).run(NOON + timedelta(minutes=3))
    stats = (await details(capi, boss, cid))["stats"]
    assert stats["delivered"] == 1 and stats["sent"] == 2

    records = await recipients(capi, boss, cid)
    assert len(records) == 3
    by_contact = {r["contact_id"]: r for r in records}
    assert by_contact[carl]["status"] == "skipped"
    assert by_contact[carl]["reason"] == "opted out of sms"
    assert by_contact[ann]["status"] in ("sent", "delivered")
    assert by_contact[ann]["channel"] == "sms"
    assert by_contact[ann]["message_id"] and by_contact[ann]["sent_at"]
    assert [r["contact_id"] for r in await recipients(capi, boss, cid, "skipped")] == [carl]

    listed = await capi.get("/api/campaigns", headers=boss.auth)
    assert [c["id"] for c in (await listed.json())["items"]] == [cid]


async def test_attribute_comparisons_and_the_live_count(capi: Client) -> None:
    boss = await make_agent(capi, "supervisor")
    await customer(capi, "A", attributes={"orders": 5, "city": "Riga", "spent": "120.5"})
    await customer(capi, "B", attributes={"orders": "12", "city": "riga"})
    await customer(capi, "C", attributes={"orders": 2, "city": "Oslo", "vip": True})
    await customer(capi, "D", attributes={})

    async def count(attributes: dict[str, Any], labels: list[str] | None = None) -> int:
        audience = {"labels": labels or ["vip"], "attributes": attributes}
        resp = await capi.post(
            "/api/campaigns/audience", json={"audience": audience}, headers=boss.auth
        )
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["count"])

    assert await count({}) == 4
    assert await count({"orders": {"gte": 3}}) == 2  # 5 and "12": numbers as numbers
    assert await count({"orders": {"gt": 10}}) == 1
    assert await count({"orders": {"lt": 5}}) == 1
    assert await count({"orders": {"lte": 5}}) == 2
    assert await count({"city": "Riga"}) == 2  # case does not matter
    assert await count({"city": {"ne": "Riga"}}) == 2  # Oslo, and D without a city
    assert await count({"city": {"in": ["Oslo", "Paris"]}}) == 1
    assert await count({"spent": {"gt": 100}}) == 1
    assert await count({"vip": True}) == 1
    assert await count({"orders": {"gte": 3}, "city": {"eq": "riga"}}) == 2
    assert await count({}, labels=["nobody"]) == 0
    # An operator of the store's own is not a comparison.
    resp = await capi.post(
        "/api/campaigns/audience",
        json={"audience": {"attributes": {"orders": {"$where": "1"}}}},
        headers=boss.auth,
    )
    assert resp.status == 400


async def test_bad_input_is_refused_at_creation_and_nothing_is_sent(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    await customer(capi, "Ann", attributes={"city": "Riga"})
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"audience": {}}, 422, "audience is empty"),
        ({"audience": {"channels": ["sms"]}}, 422, "audience is empty"),
        ({"send_at": "2020-01-01T00:00:00Z"}, 422, "send_at: is in the past"),
        ({"send_at": "tomorrow"}, 422, "send_at"),
        ({"send_at": "2030-01-01T10:00:00"}, 422, "zone"),
        ({"message": {"text": "Hi {nickname}"}}, 422, "unknown placeholder {nickname}"),
        ({"message": {"text": "Hi {first_name"}}, 422, "message.text"),
        (
            {"message": {"template": {"language": "en"}}, "audience": {
                "labels": ["vip"], "channels": ["whatsapp"]}},
            422,
            "template.name",
        ),
        (
            {"message": {"template": {"name": "promo", "language": "en", "parameters": ["{x}"]}},
             "audience": {"labels": ["vip"], "channels": ["whatsapp"]}},
            422,
            "unknown placeholder {x}",
        ),
        ({"message": {}}, 422, "a text or a WhatsApp template"),
        ({"local_time": "25:00"}, 422, "local_time"),
        ({"local_time": "9am"}, 422, "local_time"),
        ({"quiet_hours": {"start": "22:00", "end": "7"}}, 422, "quiet_hours.end"),
        ({"inbox": "nope"}, 422, "no inbox"),
        ({"audience": {"labels": ["vip"], "channels": ["fax"]}}, 400, "channels"),
        ({"audience": {"labels": ["vip"], "attributes": {"a.b": 1}}}, 400, "attributes"),
        ({"audience": {"labels": ["vip"], "attributes": {"n": {"between": [1, 2]}}}}, 400, "n"),
        ({"audience": {"labels": ["vip"], "$where": "1"}}, 400, "$where"),
        ({"name": ""}, 422, "name"),
    ]
    for body, status, words in cases:
        resp = await create(capi, boss, **body)
        text = await resp.text()
        assert resp.status == status, (body, text)
        error = (await resp.json())["error"]
        assert words in error["message"], (words, error)
    store = hub(capi).store
    assert store is not None
    assert await store.campaigns.count_documents({}) == 0
    assert await store.campaign_sends.count_documents({}) == 0
    await asyncio.sleep(0.2)
    assert provider.sent == []


async def test_pause_resume_and_restart_send_each_recipient_once(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    people = [await customer(capi, f"P{i}") for i in range(6)]
    cid = (await created(capi, boss))["id"]
    await control(capi, boss, cid, "start")
    assert (await control(capi, boss, cid, "pause"))["status"] == "paused"
    job = CampaignJob(hub(capi))
    await job.run(NOON)  # paused: nothing goes (the audience is not even planned)
    await asyncio.sleep(0.2)
    assert provider.sent == []
    assert (await control(capi, boss, cid, "start"))["status"] == "running"  # resume
    # A restart in the middle: a new job with nothing in memory.
    store = hub(capi).store
    assert store is not None
    await job.run(NOON)
    await control(capi, boss, cid, "pause")
    await CampaignJob(hub(capi)).run(NOON + timedelta(seconds=5))
    await control(capi, boss, cid, "start")
    await settle(capi, CampaignJob(hub(capi)), NOON + timedelta(seconds=10), cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 6)
    await asyncio.sleep(0.3)
    assert len(provider.sent) == 6 == len(set(sent_to(provider)))
    stats = (await details(capi, boss, cid))["stats"]
    assert stats["sent"] == 6 and stats["targeted"] == len(people)
    # Start on a completed campaign is a 409; so is pausing it.
    for action in ("start", "pause", "cancel"):
        resp = await capi.post(f"/api/campaigns/{cid}/{action}", headers=boss.auth)
        assert resp.status == 409, action


async def test_cancel_stops_what_has_not_gone(capi: Client, provider: FakeProvider) -> None:
    boss = await make_agent(capi, "supervisor")
    for i in range(3):
        await customer(capi, f"P{i}")
    cid = (await created(capi, boss, send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()))[
        "id"
    ]
    assert (await control(capi, boss, cid, "start"))["status"] == "scheduled"
    job = CampaignJob(hub(capi))
    await job.run(datetime.now(UTC))  # planned, not due
    view = await details(capi, boss, cid)
    assert view["status"] == "scheduled" and view["stats"]["targeted"] == 3
    assert (await control(capi, boss, cid, "cancel"))["status"] == "cancelled"
    await job.run(datetime.now(UTC) + timedelta(hours=2))
    await asyncio.sleep(0.2)
    assert provider.sent == []
    assert len(await recipients(capi, boss, cid, "pending")) == 3


async def test_quiet_hours_hold_a_recipient_until_morning_in_their_zone(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    riga = await customer(capi, "Riga", timezone="Europe/Riga")  # UTC+2 in March
    await customer(capi, "Tokyo", timezone="Asia/Tokyo")  # UTC+9
    cid = (await created(capi, boss, quiet_hours={"start": "21:00", "end": "09:00"}))["id"]
    await control(capi, boss, cid, "start")
    job = CampaignJob(hub(capi))
    evening = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 22:00 in Riga, 05:00 in Tokyo
    await job.run(evening)
    await asyncio.sleep(0.2)
    assert provider.sent == []
    pending = await recipients(capi, boss, cid, "pending")
    assert len(pending) == 2  # held, not skipped
    assert (await details(capi, boss, cid))["stats"]["skipped"] == 0
    # 09:00 in Tokyo is 00:00 UTC; in Riga 07:00 UTC.
    await settle(capi, job, datetime(2026, 3, 3, 0, 0, tzinfo=UTC), cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 1)
    await asyncio.sleep(0.2)
    assert len(provider.sent) == 1
    assert [r["contact_id"] for r in await recipients(capi, boss, cid, "pending")] == [riga]
    await settle(capi, job, datetime(2026, 3, 3, 7, 0, tzinfo=UTC), cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 2)
    assert (await details(capi, boss, cid))["status"] == "completed"


async def test_local_time_goes_at_that_hour_in_each_zone(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    await customer(capi, "Riga", timezone="Europe/Riga")  # 10:00 there = 08:00 UTC
    await customer(capi, "York", timezone="America/New_York")  # 10:00 there = 15:00 UTC
    await customer(capi, "Bad", timezone="Mars/Olympus")  # skipped, not a crash
    cid = (await created(capi, boss, local_time="10:00"))["id"]
    await control(capi, boss, cid, "start")
    job = CampaignJob(hub(capi))
    await job.run(datetime(2026, 3, 2, 7, 0, tzinfo=UTC))
    await asyncio.sleep(0.2)
    assert provider.sent == []
    due = {r["contact_id"]: r for r in await recipients(capi, boss, cid)}
    skipped = [r for r in due.values() if r["status"] == "skipped"]
    assert len(skipped) == 1 and "time zone" in skipped[0]["reason"]
    await settle(capi, job, datetime(2026, 3, 2, 8, 0, tzinfo=UTC), cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 1)
    await job.run(datetime(2026, 3, 2, 14, 59, tzinfo=UTC))
    await asyncio.sleep(0.2)
    assert len(provider.sent) == 1
    await settle(capi, job, datetime(2026, 3, 2, 15, 0, tzinfo=UTC), cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 2)
    stats = (await details(capi, boss, cid))["stats"]
    assert stats["sent"] == 2 and stats["skipped"] == 1


def test_local_time_and_quiet_hours_in_a_zone() -> None:
    from zoneinfo import ZoneInfo

    riga = ZoneInfo("Europe/Riga")
    # Past 10:00 local already: tomorrow's 10:00.
    base = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # 11:00 in Riga
    assert campaigns.due_time(base, riga, "10:00", None) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    # A local hour inside quiet hours goes when they end.
    got = campaigns.due_time(base, riga, "22:30", {"start": "22:00", "end": "08:00"})
    assert got == datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
    # No zone needed: the base time.
    assert campaigns.due_time(base, None, None, None) == base


async def test_preferred_channel_is_the_one_they_wrote_on_last(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    contact = await customer(capi, "Tess", inbox="t1")
    store = hub(capi).store
    assert store is not None
    doc = await store.contacts.find_one({"_id": contact})
    assert doc is not None
    phone = doc["phones"][0]
    await asyncio.sleep(0.01)
    await inbound(capi, "t2", "SMlater1", phone, "again")  # later, on t2
    cid = (await created(capi, boss))["id"]
    await control(capi, boss, cid, "start")
    await settle(capi, CampaignJob(hub(capi)), NOON, cid)
    [record] = await recipients(capi, boss, cid)
    assert record["status"] in ("queued", "sent") and record["inbox"] == "t2"


async def test_whatsapp_template_with_filled_parameters(capi: Client) -> None:
    boss = await make_agent(capi, "supervisor")
    contact = await customer(capi, "Wanda Smith", inbox="wa", attributes={"code": "SPRING"})
    cid = (
        await created(
            capi,
            boss,
            audience={"labels": ["vip"], "channels": ["whatsapp"]},
            message={
                "template": {
                    "name": "spring_offer",
                    "language": "en_US",
                    "parameters": ["{first_name}", "{code}"],
                }
            },
        )
    )["id"]
    await control(capi, boss, cid, "start")
    await settle(capi, CampaignJob(hub(capi)), NOON, cid)
    [record] = await recipients(capi, boss, cid)
    assert record["contact_id"] == contact and record["channel"] == "whatsapp"
    store = hub(capi).store
    assert store is not None
    message = await store.messages.find_one({"_id": record["message_id"]})
    assert message is not None
    assert message["template"] == {
        "name": "spring_offer",
        "language": "en_US",
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Wanda"},
                    {"type": "text", "text": "SPRING"},
                ],
            }
        ],
    }
    assert message["campaign_id"] == cid


async def test_channels_pick_the_first_reachable_and_pass_over_opted_out(
    capi: Client,
) -> None:
    boss = await make_agent(capi, "supervisor")
    a = await customer(capi, "A", inbox="t1", opted_out={"sms": True}, telegram="4242")
    b = await customer(capi, "B", inbox="t1")
    audience = {"labels": ["vip"], "channels": ["sms", "telegram"]}
    cid = (await created(capi, boss, audience=audience))["id"]
    await control(capi, boss, cid, "start")
    await CampaignJob(hub(capi)).run(NOON)
    records = {r["contact_id"]: r for r in await recipients(capi, boss, cid)}
    assert records[a]["channel"] == "telegram" and records[a]["inbox"] == "tg"
    assert records[b]["channel"] == "sms"


async def test_a_crash_between_claim_and_outbox_queues_it_once_and_unknown_is_not_resent(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    for i in range(3):
        await customer(capi, f"P{i}")
    cid = (await created(capi, boss))["id"]
    await control(capi, boss, cid, "start")
    store = hub(capi).store
    assert store is not None
    campaign = await campaigns.get(store, cid)
    assert campaign is not None
    media = {i: campaigns.inbox_media(c) for i, c in hub(capi).adapters.items()}
    await campaigns.plan(store, campaign, media, now=NOON)
    await store.campaigns.update_one({"_id": cid}, {"$set": {"planned_at": NOON}})
    due = await campaigns.due_records(store, cid, NOON, 10)
    # The process claims all three, and dies before queueing any of them.
    claimed = await campaigns.claim(store, cid, due, NOON)
    assert len(claimed) == 3
    # A second claimer gets none of them.
    assert await campaigns.claim(store, cid, due, NOON) == []
    # One of them did reach the outbox, and its send's outcome is unknown.
    first = claimed[0]
    await store.messages.insert_one(
        {
            "_id": first["message_id"],
            "conversation_id": first["conversation_id"],
            "direction": "out",
            "status": "unknown",
            "campaign_id": cid,
            "created_at": NOON,
        }
    )
    await settle(capi, CampaignJob(hub(capi)), NOON, cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 2)
    await CampaignJob(hub(capi)).run(NOON + timedelta(minutes=1))
    await asyncio.sleep(0.3)
    assert len(provider.sent) == 2  # the two that never reached the outbox, once each
    stats = (await details(capi, boss, cid))["stats"]
    assert stats["unknown"] == 1 and stats["sent"] == 2
    records = await recipients(capi, boss, cid, "unknown")
    assert [r["contact_id"] for r in records] == [first["contact_id"]]


async def test_two_jobs_at_once_send_each_recipient_once(
    capi: Client, provider: FakeProvider
) -> None:
    boss = await make_agent(capi, "supervisor")
    for i in range(12):
        await customer(capi, f"P{i}")
    cid = (await created(capi, boss))["id"]
    await control(capi, boss, cid, "start")
    one, two = CampaignJob(hub(capi)), CampaignJob(hub(capi))
    for _ in range(4):
        await asyncio.gather(one.run(NOON), two.run(NOON))
    await settle(capi, one, NOON, cid)
    await eventually(lambda: asyncio.sleep(0, len(provider.sent)), lambda n: n >= 12)
    await asyncio.sleep(0.3)
    assert len(provider.sent) == 12 == len(set(sent_to(provider)))


async def test_unknown_campaign_and_bad_cursor(capi: Client) -> None:
    boss = await make_agent(capi, "supervisor")
    assert (await capi.get("/api/campaigns/nope", headers=boss.auth)).status == 404
    assert (await capi.post("/api/campaigns/nope/start", headers=boss.auth)).status == 404
    resp = await capi.get("/api/campaigns?cursor=zzz", headers=boss.auth)
    assert resp.status == 400

