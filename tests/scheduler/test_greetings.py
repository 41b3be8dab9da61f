"""The greeting job: birthdays and holidays at the local hour in each contact's
zone (own, guessed from the phone number, default), in the contact's locale with
a fallback, once per contact, occasion and year (two runs, two racing jobs),
quiet hours, 29 February, invalid contacts and opted-out channels skipped and
counted. Time is the test's: `run_once(now)` with the instant chosen here."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings
from hub.services.greetings import DEFAULT_SETTINGS, save_greeting_settings
from hub.services.runtime import Hub
from scheduler.greetings import PREPARE_AHEAD, GreetingJob, birthday_on, pick_template
from tests.conftest import hub_of, post_inbound
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
_sids = itertools.count(1)


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> Any:
    # The hub's own scheduler is off: the tests run the job with their own clock.
    app = build_app(make_settings(scheduler={"enabled": False}))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def settings_doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT_SETTINGS)
    doc["enabled"] = True
    doc["local_hour"] = 10
    doc["quiet_hours"] = {"start": "22:00", "end": "07:00"}
    doc["birthday"]["templates"] = {
        "en": "Happy birthday, {first_name}!",
        "ru": "С днём рождения, {first_name}!",  # noqa: RUF001
        "de": "Alles Gute, {first_name}!",
    }
    doc.update(changes)
    return doc


async def enable(hub: Hub, **changes: Any) -> None:
    assert hub.store is not None
    await save_greeting_settings(hub.store, settings_doc(**changes))


async def contact(client: Client, phone: str, **fields: Any) -> str:
    """A contact who wrote once (so it has a conversation), with `fields` set."""
    resp = await post_inbound(
        client, MessageSid=f"SMg{next(_sids)}", From=phone, Body="hello", ProfileName="Ada Lovelace"
    )
    assert resp.status == 200, await resp.text()
    store = hub_of(client).store
    assert store is not None
    identity = await store.identities.find_one({"_id": f"phone:{phone}"})
    assert identity is not None
    if fields:
        await store.contacts.update_one({"_id": identity["contact_id"]}, {"$set": fields})
    return str(identity["contact_id"])


async def greetings_to(hub: Hub, contact_id: str) -> list[dict[str, Any]]:
    assert hub.store is not None
    conversation_ids = [
        c["_id"] async for c in hub.store.conversations.find({"contact_id": contact_id})
    ]
    return await hub.store.messages.find(
        {"conversation_id": {"$in": conversation_ids}, "direction": "out"}
    ).to_list()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- pure rules -----------------------------------------------------------------------


def test_29_february_is_greeted_on_28_february_only_in_common_years() -> None:
    assert birthday_on(2, 29, datetime(2027, 2, 28).date())
    assert not birthday_on(2, 29, datetime(2028, 2, 28).date())
    assert birthday_on(2, 29, datetime(2028, 2, 29).date())
    assert not birthday_on(2, 28, datetime(2028, 2, 29).date())


def test_template_by_locale_then_language_then_english() -> None:
    templates = {"en": "E", "ru": "R", "pt-BR": "PB"}
    assert pick_template(templates, "ru") == "R"
    assert pick_template(templates, "ru-RU") == "R"
    assert pick_template(templates, "pt_BR") == "PB"
    assert pick_template(templates, "pt") == "PB"
    assert pick_template(templates, "fr") == "E"
    assert pick_template(templates, None) == "E"
    assert pick_template({"de": "D"}, "fr") == "D"


# -- the job --------------------------------------------------------------------------


async def test_leap_day_birthday_goes_on_28_february_in_2027_and_29_february_in_2028(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    leap = await contact(client, "+15550001001", birthday={"month": 2, "day": 29, "year": 1992})
    job = GreetingJob(hub)

    counts = await job.run_once(at("2027-02-28T10:00:01+00:00"), lookahead=False)
    assert counts.sent == 1
    (message,) = await greetings_to(hub, leap)
    assert message["text"] == "Happy birthday, Ada!"

    await job.run_once(at("2028-02-28T10:00:01+00:00"), lookahead=False)
    assert len(await greetings_to(hub, leap)) == 1  # not on the 28th in a leap year
    counts = await job.run_once(at("2028-02-29T10:00:01+00:00"), lookahead=False)
    assert counts.sent == 1
    assert len(await greetings_to(hub, leap)) == 2


async def test_each_zone_is_greeted_at_its_own_local_hour(client):
    hub = hub_of(client)
    await enable(hub, holidays=[], default_timezone="America/Sao_Paulo")
    birthday = {"month": 6, "day": 15}
    tokyo = await contact(client, "+15550001011", birthday=birthday, timezone="Asia/Tokyo")
    berlin = await contact(client, "+15550001012", birthday=birthday, timezone="Europe/Berlin")
    # No time zone: guessed from the phone number (+7 495: Moscow), else the default.
    moscow = await contact(client, "+74951234567", birthday=birthday)
    default = await contact(client, "+15550001013", birthday=birthday)
    await hub.store.contacts.update_one({"_id": default}, {"$set": {"phones": []}})  # type: ignore[union-attr]
    job = GreetingJob(hub)
    order = [
        ("2026-06-15T01:00:01+00:00", tokyo),  # 10:00 in Tokyo (UTC+9)
        ("2026-06-15T07:00:01+00:00", moscow),  # 10:00 in Moscow (UTC+3)
        ("2026-06-15T08:00:01+00:00", berlin),  # 10:00 in Berlin (UTC+2 in summer)
        ("2026-06-15T13:00:01+00:00", default),  # 10:00 in Sao Paulo (UTC-3)
    ]
    greeted: set[str] = set()
    for instant, who in order:
        # Queued in the outbox PREPARE_AHEAD before its instant (to leave then).
        just_before = at(instant) - PREPARE_AHEAD - timedelta(seconds=2)
        counts = await job.run_once(just_before, lookahead=False)
        assert counts.sent == 0, instant
        counts = await job.run_once(at(instant), lookahead=False)
        assert counts.sent == 1, instant
        greeted.add(who)
        for person in (tokyo, berlin, moscow, default):
            assert len(await greetings_to(hub, person)) == (1 if person in greeted else 0)


async def test_a_greeting_due_within_the_interval_is_waited_for_and_sent_on_time(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    person = await contact(client, "+15550001021", birthday={"month": 6, "day": 15})
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    job = GreetingJob(hub, sleep=sleep)
    await job.run_once(at("2026-06-15T09:00:00+00:00"))  # plans; nothing due within 1 s
    counts = await job.run_once(at("2026-06-15T09:59:59.400+00:00"))
    assert counts.sent == 1
    assert slept and 0.5 < slept[-1] <= 0.6
    assert len(await greetings_to(hub, person)) == 1


async def test_locale_picks_the_template_with_english_as_fallback(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    birthday = {"month": 6, "day": 15}
    ivan = "Иван Петров"
    ru = await contact(client, "+15550001031", birthday=birthday, locale="ru-RU", name=ivan)
    de = await contact(client, "+15550001032", birthday=birthday, locale="de")
    fr = await contact(client, "+15550001033", birthday=birthday, locale="fr")
    await GreetingJob(hub).run_once(at("2026-06-15T10:00:01+00:00"), lookahead=False)
    assert [m["text"] for m in await greetings_to(hub, ru)] == ["С днём рождения, Иван!"]  # noqa: RUF001
    assert [m["text"] for m in await greetings_to(hub, de)] == ["Alles Gute, Ada!"]
    assert [m["text"] for m in await greetings_to(hub, fr)] == ["Happy birthday, Ada!"]


async def test_holidays_with_attributes_as_placeholders_and_a_custom_date(client):
    hub = hub_of(client)
    person = await contact(client, "+15550001041", attributes={"city": "Riga"})
    holidays = [
        {"date": "01-01", "name": "New Year", "templates": {"en": "Happy New Year, {name}!"}},
        {"date": "09-01", "name": "Shop day", "templates": {"en": "{first_name} in {city}!"}},
    ]
    await enable(hub, holidays=holidays)
    job = GreetingJob(hub)
    await job.run_once(at("2026-09-01T10:00:01+00:00"), lookahead=False)
    await job.run_once(at("2027-01-01T10:00:01+00:00"), lookahead=False)
    texts = sorted(m["text"] for m in await greetings_to(hub, person))
    assert texts == ["Ada in Riga!", "Happy New Year, Ada Lovelace!"]


async def test_once_per_contact_and_occasion_across_runs_and_two_racing_jobs(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    people = [
        await contact(client, f"+1555000105{i}", birthday={"month": 6, "day": 15})
        for i in range(6)
    ]
    # Planned by one job; then two jobs (two hub processes) race for the sends.
    await GreetingJob(hub).run_once(at("2026-06-15T00:00:00+00:00"), lookahead=False)
    now = at("2026-06-15T10:00:01+00:00")
    first, second = await asyncio.gather(
        GreetingJob(hub).run_once(now, lookahead=False),
        GreetingJob(hub).run_once(now, lookahead=False),
    )
    assert first.sent + second.sent == len(people)
    again = await GreetingJob(hub).run_once(now + timedelta(minutes=10), lookahead=False)
    assert again.sent == 0
    later = await GreetingJob(hub).run_once(at("2026-06-16T10:00:01+00:00"), lookahead=False)
    assert later.sent == 0
    for person in people:
        assert len(await greetings_to(hub, person)) == 1
    assert hub.store is not None
    records = await hub.store.greetings_sent.find({"status": "sent"}).to_list()
    assert sorted(r["_id"] for r in records) == sorted(f"{p}:birthday:2026" for p in people)


async def test_two_jobs_racing_from_nothing_planned_send_each_greeting_once(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    people = [
        await contact(client, f"+1555000106{i}", birthday={"month": 6, "day": 15})
        for i in range(5)
    ]
    now = at("2026-06-15T10:00:01+00:00")
    jobs = [GreetingJob(hub), GreetingJob(hub)]
    for _ in range(2):
        await asyncio.gather(*(job.run_once(now, lookahead=False) for job in jobs))
    for person in people:
        assert len(await greetings_to(hub, person)) == 1


async def test_quiet_hours_hold_a_greeting_until_they_end(client):
    hub = hub_of(client)
    await enable(hub, holidays=[], local_hour=6, quiet_hours={"start": "22:00", "end": "08:30"})
    person = await contact(client, "+15550001071", birthday={"month": 6, "day": 15})
    job = GreetingJob(hub)
    counts = await job.run_once(at("2026-06-15T06:00:01+00:00"), lookahead=False)
    assert counts.sent == 0
    assert await greetings_to(hub, person) == []
    ahead = at("2026-06-15T08:30:00+00:00") - PREPARE_AHEAD
    counts = await job.run_once(ahead - timedelta(seconds=1), lookahead=False)
    assert counts.sent == 0
    counts = await job.run_once(ahead, lookahead=False)
    assert counts.sent == 1  # queued, to leave when the quiet hours end
    assert len(await greetings_to(hub, person)) == 1
    assert hub.store is not None
    record = await hub.store.greetings_sent.find_one({"contact_id": person})
    assert record is not None and record["send_at"] == at("2026-06-15T08:30:00+00:00")


async def test_quiet_hours_set_after_planning_still_hold_the_send(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    person = await contact(client, "+15550001072", birthday={"month": 6, "day": 15})
    job = GreetingJob(hub)
    await job.run_once(at("2026-06-15T00:00:00+00:00"), lookahead=False)  # planned for 10:00
    # The contact moved to a zone where 10:00 UTC is 03:00 at night (the record
    # planned with the old zone says so too: the hour is not planned again).
    assert hub.store is not None
    await hub.store.contacts.update_one(
        {"_id": person}, {"$set": {"timezone": "America/Los_Angeles"}}
    )
    await hub.store.greetings_sent.update_one(
        {"contact_id": person}, {"$set": {"timezone": "America/Los_Angeles"}}
    )
    counts = await job.run_once(at("2026-06-15T10:00:01+00:00"), lookahead=False)
    assert counts.sent == 0 and counts.held == 1
    counts = await job.run_once(at("2026-06-15T14:00:01+00:00"), lookahead=False)  # 07:00 LA
    assert counts.sent == 1


async def test_invalid_contacts_and_opted_out_channels_are_skipped_and_counted(client):
    hub = hub_of(client)
    await enable(
        hub,
        holidays=[{"date": "06-15", "name": "Midsummer", "templates": {"en": "Hi {first_name}"}}],
    )
    good = await contact(client, "+15550001081")
    await contact(client, "+15550001082", timezone="Mars/Olympus_Mons")
    await contact(client, "+15550001083", birthday={"month": 6, "day": 31})
    opted = await contact(client, "+15550001084", opted_out={"sms": True})
    assert hub.store is not None
    await hub.store.contacts.insert_one({"_id": "lonely", "name": "No Chat", "phones": []})
    job = GreetingJob(hub)
    planned = await job.run_once(at("2026-06-15T00:00:00+00:00"), lookahead=False)
    assert planned.skipped == {"invalid time zone": 1, "invalid birthday": 1, "no conversation": 1}
    counts = await job.run_once(at("2026-06-15T10:00:01+00:00"), lookahead=False)
    # The one with the invalid birthday still gets the holiday greeting.
    assert counts.sent == 2
    assert counts.skipped == {"opted out": 1}
    assert len(await greetings_to(hub, good)) == 1
    assert await greetings_to(hub, opted) == []
    skipped = await hub.store.greetings_sent.count_documents({"status": "skipped"})
    assert skipped == 4


async def test_a_day_missed_by_the_job_is_left_for_the_catch_up(client):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    person = await contact(client, "+15550001091", birthday={"month": 6, "day": 15})
    job = GreetingJob(hub)
    await job.run_once(at("2026-06-14T12:00:00+00:00"), lookahead=False)  # planned
    counts = await job.run_once(at("2026-06-16T12:00:00+00:00"), lookahead=False)  # down till now
    assert counts.sent == 0 and counts.missed == 1
    caught = await job.catch_up(datetime(2026, 6, 15).date())
    assert caught.sent == 1
    again = await job.catch_up(datetime(2026, 6, 15).date())
    assert again.sent == 0 and again.already == 1
    assert len(await greetings_to(hub, person)) == 1


async def test_greetings_are_delivered_by_the_provider(client, provider: FakeProvider):
    hub = hub_of(client)
    await enable(hub, holidays=[])
    await contact(client, "+15550001101", birthday={"month": 6, "day": 15})
    await GreetingJob(hub).run_once(at("2026-06-15T10:00:01+00:00"), lookahead=False)
    sent = await eventually(lambda: _texts(provider), lambda texts: bool(texts))
    assert sent == ["Happy birthday, Ada!"]


async def _texts(provider: FakeProvider) -> list[str]:
    return [m["text"] for m in provider.sent]


async def test_disabled_greetings_send_nothing(client):
    hub = hub_of(client)
    await enable(hub, holidays=[], enabled=False)
    person = await contact(client, "+15550001111", birthday={"month": 6, "day": 15})
    counts = await GreetingJob(hub).run_once(at("2026-06-15T10:00:01+00:00"), lookahead=False)
    assert counts.sent == 0 and await greetings_to(hub, person) == []
