"""Greetings queued ahead: the job queues each greeting in the outbox
`PREPARE_AHEAD` before its instant with `next_attempt_at` at the instant, and the
hub's running dispatcher (a real one, sending to the fake provider) sends it then
and only then, once, across a restart of the job; an opt-out made between
queueing and the instant is respected at send time; a birthday or time zone
changed after planning is seen when the greeting is queued.

The job runs on the test's clock (`run_once(now)`); the dispatcher's clock is the
same simulated one (`hub.services.dispatcher.utcnow` set by the test)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings
from hub.services.runtime import Hub
from scheduler.greetings import PREPARE_AHEAD, GreetingJob
from tests.conftest import hub_of, post_inbound
from tests.scheduler.test_greetings import Client, at, contact, enable, greetings_to
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually

INSTANT = at("2026-06-15T10:00:00+00:00")  # 10:00 in UTC, the default zone
BIRTHDAY = {"month": 6, "day": 15}


class Clock:
    """The dispatcher's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> Any:
    # The hub's own scheduler is off: the tests run the job with their own clock.
    app = build_app(make_settings(scheduler={"enabled": False}))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
def dispatcher_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(INSTANT - timedelta(hours=1))
    monkeypatch.setattr("hub.services.dispatcher.utcnow", clock)
    return clock


def greetings_sent_to(provider: FakeProvider) -> list[str]:
    return [m["text"] for m in provider.sent if "birthday" in str(m.get("text"))]


async def outbox_item(hub: Hub, message_id: str) -> dict[str, Any] | None:
    assert hub.store is not None
    return await hub.store.outbox.find_one({"_id": message_id})


async def stays(check: Callable[[], Any], seconds: float = 0.5) -> None:
    """`check` holds for `seconds` while the dispatcher polls (every 0.05 s here)."""
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        assert await check()
        await asyncio.sleep(0.05)


async def test_a_greeting_queued_ahead_is_not_sent_before_its_instant_and_once_after_it(
    client: Client, provider: FakeProvider, dispatcher_clock: Clock
) -> None:
    hub = hub_of(client)
    await enable(hub, holidays=[])
    person = await contact(client, "+15550002001", birthday=BIRTHDAY)
    job = GreetingJob(hub)

    dispatcher_clock.now = INSTANT - PREPARE_AHEAD
    counts = await job.run_once(INSTANT - PREPARE_AHEAD, lookahead=False)
    assert counts.sent == 1
    (message_id,) = counts.message_ids
    item = await outbox_item(hub, message_id)
    assert item is not None and item["state"] == "queued"
    assert item["next_attempt_at"] == INSTANT and item["recheck_opt_out"] is True
    (message,) = await greetings_to(hub, person)
    assert message["status"] == "queued"

    # A second before the instant: the dispatcher, woken and polling, leaves it.
    dispatcher_clock.now = INSTANT - timedelta(seconds=1)
    hub.wake_dispatcher()

    async def not_sent() -> bool:
        return greetings_sent_to(provider) == [] and await outbox_item(hub, message_id) is not None

    await stays(not_sent)

    dispatcher_clock.now = INSTANT + timedelta(milliseconds=100)
    hub.wake_dispatcher()
    sent = await eventually(lambda: _greetings(provider), bool)
    assert sent == ["Happy birthday, Ada!"]
    message = (await greetings_to(hub, person))[0]
    assert message["status"] == "sent"

    # Later runs, a new job (a restarted hub) and the day's catch-up send nothing more.
    later = await job.run_once(INSTANT + timedelta(seconds=5), lookahead=False)
    restarted = await GreetingJob(hub).run_once(INSTANT + timedelta(hours=3), lookahead=False)
    caught = await GreetingJob(hub).catch_up(INSTANT.date(), now=INSTANT + timedelta(days=1))
    assert later.sent == restarted.sent == caught.sent == 0
    assert caught.already == 1
    await asyncio.sleep(0.3)
    assert greetings_sent_to(provider) == ["Happy birthday, Ada!"]
    assert len(await greetings_to(hub, person)) == 1


async def _greetings(provider: FakeProvider) -> list[str]:
    return greetings_sent_to(provider)


async def test_a_job_killed_after_queueing_ahead_is_caught_up_without_a_repeat(
    client: Client, provider: FakeProvider, dispatcher_clock: Clock
) -> None:
    hub = hub_of(client)
    await enable(hub, holidays=[])
    person = await contact(client, "+15550002002", birthday=BIRTHDAY)
    assert hub.store is not None
    record_id = f"{person}:birthday:2026"
    counts = await GreetingJob(hub).run_once(INSTANT - timedelta(minutes=2), lookahead=False)
    assert counts.sent == 1
    # As if the process was killed -9 after queueing, before marking its record.
    unmark = {"$set": {"status": "planned", "due_at": INSTANT}, "$unset": {"message_id": ""}}
    await hub.store.greetings_sent.update_one({"_id": record_id}, unmark)

    # Another process's job queues it again: the outbox refuses the duplicate.
    again = await GreetingJob(hub).run_once(INSTANT - timedelta(minutes=1), lookahead=False)
    assert again.message_ids == counts.message_ids
    assert await hub.store.outbox.count_documents({}) == 1
    record = await hub.store.greetings_sent.find_one({"_id": record_id})
    assert record is not None and record["status"] == "sent" and "due_at" not in record

    dispatcher_clock.now = INSTANT + timedelta(seconds=1)
    hub.wake_dispatcher()
    await eventually(lambda: _greetings(provider), bool)

    # Killed again after the send went, before marking: queued again, sent never.
    await hub.store.greetings_sent.update_one({"_id": record_id}, unmark)
    third = await GreetingJob(hub).run_once(INSTANT + timedelta(seconds=2), lookahead=False)
    assert third.message_ids == counts.message_ids
    hub.wake_dispatcher()
    await asyncio.sleep(0.5)
    assert greetings_sent_to(provider) == ["Happy birthday, Ada!"]
    assert await hub.store.outbox.count_documents({"_id": counts.message_ids[0]}) == 0
    assert len(await greetings_to(hub, person)) == 1


async def test_an_opt_out_between_queueing_and_the_instant_cancels_the_greeting(
    client: Client, provider: FakeProvider, dispatcher_clock: Clock
) -> None:
    hub = hub_of(client)
    await enable(hub, holidays=[])
    phone = "+15550002003"
    person = await contact(client, phone, birthday=BIRTHDAY)
    stays_in = await contact(client, "+15550002004", birthday=BIRTHDAY)
    counts = await GreetingJob(hub).run_once(INSTANT - timedelta(minutes=3), lookahead=False)
    assert counts.sent == 2

    # The customer sends STOP after the greeting was queued, before its instant.
    resp = await post_inbound(client, MessageSid="SMstop-ahead", From=phone, Body="STOP")
    assert resp.status == 200
    assert hub.store is not None
    store = hub.store

    async def opted_out() -> dict[str, Any]:
        stored = await store.contacts.find_one({"_id": person})
        return (stored or {}).get("opted_out") or {}

    await eventually(opted_out, lambda value: any(value.values()))

    dispatcher_clock.now = INSTANT + timedelta(seconds=1)
    hub.wake_dispatcher()
    await eventually(lambda: _greetings(provider), bool)
    await asyncio.sleep(0.3)
    assert greetings_sent_to(provider) == ["Happy birthday, Ada!"]  # the other one's
    (cancelled,) = [m for m in await greetings_to(hub, person) if "birthday" in m["text"]]
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"] == "opted out before it was sent"
    (sent,) = await greetings_to(hub, stays_in)
    assert sent["status"] == "sent"


async def test_a_birthday_or_time_zone_changed_after_planning_is_seen_when_queueing(
    client: Client,
) -> None:
    hub = hub_of(client)
    await enable(hub, holidays=[])
    moved_birthday = await contact(client, "+15550002005", birthday=BIRTHDAY)
    moved_away = await contact(client, "+15550002006", birthday=BIRTHDAY)
    job = GreetingJob(hub)
    await job.run_once(at("2026-06-15T00:00:00+00:00"), lookahead=False)  # planned for 10:00
    assert hub.store is not None
    await hub.store.contacts.update_one(
        {"_id": moved_birthday}, {"$set": {"birthday": {"month": 7, "day": 1}}}
    )
    await hub.store.contacts.update_one(
        {"_id": moved_away}, {"$set": {"timezone": "America/New_York"}}
    )
    counts = await job.run_once(INSTANT - timedelta(minutes=1), lookahead=False)
    assert counts.sent == 0
    assert counts.skipped == {"birthday changed": 1}
    assert counts.held == 1  # planned again for 10:00 in New York (14:00 UTC)
    new_york = at("2026-06-15T14:00:00+00:00")
    counts = await job.run_once(new_york - PREPARE_AHEAD - timedelta(seconds=1), lookahead=False)
    assert counts.sent == 0
    counts = await job.run_once(new_york - timedelta(minutes=1), lookahead=False)
    assert counts.sent == 1
    record = await hub.store.greetings_sent.find_one({"contact_id": moved_away})
    assert record is not None
    assert record["send_at"] == new_york and record["timezone"] == "America/New_York"
    assert await greetings_to(hub, moved_birthday) == []
