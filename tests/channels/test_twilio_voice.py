"""The Twilio adapter, Voice (issue 3, point 2): the TwiML an incoming call gets
(greeting, agents ringing, voicemail), the screen-pop, call and voicemail messages
in the caller's conversation, and the text to a caller whose call was missed."""

from __future__ import annotations

import logging
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.twilio.simulator import PUBLIC_URL, FakeTwilio
from hub.app import build_app
from hub.config import Settings, parse_settings
from tests.conftest import hub_of
from tests.support.twilio_fixtures import fixture_params, twilio_inbox
from tests.support.waiting import drain, eventually, next_event, of_type

PREFIX = "/webhooks/twilio/tw"
CALLER = "+447381234567"  # the caller of the voice_* fixtures
CALL_SID = "CA0b33a4462bd42d3eeaa07f07653796e3"
AGENTS = ["+15550001111", "+15550002222"]
GREETING = "Thanks for calling Acme. Connecting you now."
MISSED_TEXT = "Sorry we missed your call. We will call you back shortly."
VOICE = {
    "greeting": GREETING,
    "agent_numbers": AGENTS,
    "ring_seconds": 15,
    "missed_call_sms": MISSED_TEXT,
}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio()
    await twilio.start()
    yield twilio
    await twilio.stop()


@pytest.fixture
def settings_for(
    embedded_uri: str, db_name: str, tmp_path: Path, fake: FakeTwilio
) -> Callable[..., Settings]:
    def make(**inbox: Any) -> Settings:
        data = {
            "server": {"public_url": PUBLIC_URL},
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [twilio_inbox(fake.url, **{**VOICE, **inbox})],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with running(settings_for()) as started:
        yield started


async def post(
    client: Client, fake: FakeTwilio, route: str, params: Any, *, query: str = ""
) -> tuple[int, str]:
    """POST like Twilio: signed over the public URL, query string included."""
    path = PREFIX + route + (f"?{query}" if query else "")
    body, headers = fake.signed(PUBLIC_URL + path, params)
    response = await client.post(path, data=body, headers=headers)
    return response.status, await response.text()


def twiml(text: str) -> ET.Element:
    root = ET.fromstring(text)  # noqa: S314 (the hub's own answer, in a test)
    assert root.tag == "Response"
    return root


def with_values(params: list[tuple[str, str]], **values: str) -> list[tuple[str, str]]:
    return [(k, values.get(k, v)) for k, v in params]


async def calls(client: Client) -> list[dict[str, Any]]:
    store = hub_of(client).store
    return await store.messages.find({"kind": {"$in": ["call", "voicemail"]}}).to_list(None)


async def texts_out(client: Client) -> list[dict[str, Any]]:
    """Outbound messages queued by the hub (the missed-call texts)."""
    return await hub_of(client).store.messages.find({"direction": "out"}).to_list(None)


async def sent_texts(fake: FakeTwilio, count: int) -> list[dict[str, Any]]:
    """What the fake Twilio accepted, once it holds `count` messages."""

    async def probe() -> list[dict[str, Any]]:
        return list(fake.sent)

    return await eventually(probe, lambda sent: len(sent) == count)


# --- the incoming call -------------------------------------------------------------------


async def test_an_incoming_call_pops_the_callers_card_and_rings_the_agents_after_the_greeting(
    client, fake
) -> None:
    hub = hub_of(client)
    sub = hub.bus.subscribe()
    status, text = await post(client, fake, "/voice", fixture_params("voice_incoming.txt"))
    assert status == 200
    event = await next_event(sub, of_type("call.incoming", call_id=CALL_SID))
    assert event.data["from"] == CALLER and event.data["channel"] == "voice"
    assert event.data["contact"]["phones"] == [CALLER]

    say, dial = list(twiml(text))
    assert (say.tag, say.text) == ("Say", GREETING)
    assert dial.tag == "Dial"
    assert dial.attrib["timeout"] == "15"
    assert dial.attrib["action"] == PUBLIC_URL + PREFIX + "/voice/status"
    assert dial.attrib["callerId"] == CALLER
    assert [(n.tag, n.text) for n in dial] == [("Number", a) for a in AGENTS]
    assert await calls(client) == []  # the call is logged when its outcome is known


async def test_with_no_agents_the_call_goes_straight_to_voicemail(settings_for, fake) -> None:
    async with running(settings_for(agent_numbers=[], greeting="")) as client:
        status, text = await post(client, fake, "/voice", fixture_params("voice_incoming.txt"))
        assert status == 200
        say, record, hangup = list(twiml(text))
        assert say.tag == "Say" and "message" in (say.text or "")
        assert record.tag == "Record" and hangup.tag == "Hangup"
        assert record.attrib["action"] == PUBLIC_URL + PREFIX + "/voice/status"
        assert record.attrib["maxLength"] == "120"
        callback = urllib.parse.urlsplit(record.attrib["recordingStatusCallback"])
        assert PUBLIC_URL + callback.path == PUBLIC_URL + PREFIX + "/voice/recording"
        assert urllib.parse.parse_qs(callback.query) == {"caller": [CALLER]}


async def test_with_no_agents_and_no_voicemail_the_call_is_missed_at_once_and_texted(
    settings_for, fake
) -> None:
    async with running(settings_for(agent_numbers=[], voicemail=False)) as client:
        status, text = await post(client, fake, "/voice", fixture_params("voice_incoming.txt"))
        assert status == 200
        assert [child.tag for child in twiml(text)] == ["Say", "Hangup"]
        (call,) = await calls(client)
        assert call["call"]["status"] == "missed"
        (sms,) = await sent_texts(fake, 1)
        assert sms["text"] == MISSED_TEXT


# --- outcomes: the <Dial> action and the call status callback ------------------------------


async def test_an_unanswered_dial_logs_a_missed_call_offers_voicemail_and_texts_the_caller_once(
    client, fake
) -> None:
    params = fixture_params("voice_dial_no_answer.txt")
    status, text = await post(client, fake, "/voice/status", params)
    assert status == 200
    assert [child.tag for child in twiml(text)] == ["Say", "Record", "Hangup"]
    (call,) = await calls(client)
    assert call["provider_id"] == CALL_SID and call["channel"] == "voice"
    assert call["kind"] == "call" and call["direction"] == "in"
    assert call["call"]["status"] == "missed" and call["call"]["call_id"] == CALL_SID

    (sms,) = await sent_texts(fake, 1)
    assert (sms["to"], sms["from"], sms["text"]) == (CALLER, "+15005550006", MISSED_TEXT)

    # Twilio retries the action, and the number's status callback reports the same
    # call: still one call message and one text.
    assert (await post(client, fake, "/voice/status", params))[0] == 200
    no_answer = fixture_params("voice_status_no_answer.txt")
    assert (await post(client, fake, "/voice/status", no_answer))[0] == 200
    assert len(await calls(client)) == 1
    assert len(await texts_out(client)) == 1
    sms = await hub_of(client).store.conversations.find_one({"channel": "sms"})
    assert (
        sms is not None
        and sms["contact_id"]
        == (await hub_of(client).store.conversations.find_one({"channel": "voice"}))["contact_id"]
    )


async def test_an_answered_dial_logs_a_completed_call_with_its_duration_and_hangs_up(
    client, fake
) -> None:
    status, text = await post(
        client, fake, "/voice/status", fixture_params("voice_dial_completed.txt")
    )
    assert status == 200
    assert [child.tag for child in twiml(text)] == ["Hangup"]
    # The number's own status callback for the same call arrives later: stored once.
    status, text = await post(
        client, fake, "/voice/status", fixture_params("voice_status_completed.txt")
    )
    assert (status, text) == (200, "")
    (call,) = await calls(client)
    assert call["call"]["status"] == "completed" and call["call"]["duration"] == 47
    assert await texts_out(client) == []


async def test_a_status_callback_alone_logs_the_call_completed_with_its_duration(
    client, fake
) -> None:
    status, _ = await post(
        client, fake, "/voice/status", fixture_params("voice_status_completed.txt")
    )
    assert status == 200
    (call,) = await calls(client)
    assert call["call"]["status"] == "completed" and call["call"]["duration"] == 63


async def test_a_no_answer_status_callback_logs_a_missed_call_and_texts_once(client, fake) -> None:
    params = fixture_params("voice_status_no_answer.txt")
    for _ in range(2):
        status, text = await post(client, fake, "/voice/status", params)
        assert (status, text) == (200, "")
    (call,) = await calls(client)
    assert call["call"]["status"] == "missed"
    await sent_texts(fake, 1)
    assert len(await texts_out(client)) == 1


async def test_no_text_follows_a_missed_call_when_the_inbox_has_none(settings_for, fake) -> None:
    async with running(settings_for(missed_call_sms="")) as client:
        params = fixture_params("voice_dial_no_answer.txt")
        assert (await post(client, fake, "/voice/status", params))[0] == 200
        assert len(await calls(client)) == 1
        assert await texts_out(client) == []


async def test_the_record_action_after_a_voicemail_hangs_up_and_logs_the_missed_call(
    client, fake
) -> None:
    params = fixture_params("voice_record_action_hangup.txt")
    status, text = await post(client, fake, "/voice/status", params)
    assert status == 200
    assert [child.tag for child in twiml(text)] == ["Hangup"]
    (call,) = await calls(client)
    assert call["provider_id"] == "CA9f19a72e22127a865f0250e08b7a7119"
    assert call["call"]["status"] == "missed"
    contact = await hub_of(client).store.contacts.find_one({})
    assert contact["phones"] == ["+17082785155"]


# --- voicemail ------------------------------------------------------------------------------


async def test_a_recording_becomes_a_voicemail_in_the_callers_voice_conversation(
    client, fake
) -> None:
    await post(client, fake, "/voice/status", fixture_params("voice_dial_no_answer.txt"))
    query = urllib.parse.urlencode({"caller": CALLER})
    params = fixture_params("recording_completed.txt")
    for _ in range(2):  # a retry is stored once
        status, text = await post(client, fake, "/voice/recording", params, query=query)
        assert (status, text) == (200, "")
    call, voicemail = sorted(await calls(client), key=lambda m: m["kind"])
    assert voicemail["kind"] == "voicemail"
    assert voicemail["provider_id"] == "RE0ff7ecec483bcbbeb0d76eb8bfe5b6e0"
    assert voicemail["call"] == {
        "direction": "in",
        "status": "missed",
        "duration": 3,
        "recording_url": (
            "https://api.twilio.com/2010-04-01/Accounts/ACf6a02ac6eb6d9b86ba23ff55298fff0e"
            "/Recordings/RE0ff7ecec483bcbbeb0d76eb8bfe5b6e0"
        ),
        "call_id": "CAc171381f0271647a58f4b30e02a14d23",
    }
    assert voicemail["conversation_id"] == call["conversation_id"]


async def test_the_caller_in_the_recording_url_is_covered_by_the_signature(client, fake) -> None:
    params = fixture_params("recording_completed.txt")
    path = PREFIX + "/voice/recording"
    # Signed without the query string, posted with one: not what Twilio called.
    body, headers = fake.signed(PUBLIC_URL + path, params)
    response = await client.post(path + "?caller=%2B15550009999", data=body, headers=headers)
    assert response.status == 403
    # Signed and posted without a caller: our own URL always names one.
    status, _ = await post(client, fake, "/voice/recording", params)
    assert status == 400
    assert await calls(client) == []


# --- refused, malformed, ignored, withheld ---------------------------------------------------


async def test_an_unsigned_call_is_403_a_call_without_callsid_400_and_neither_writes(
    client, fake
) -> None:
    body, headers = fake.signed(
        PUBLIC_URL + PREFIX + "/voice", fixture_params("voice_incoming.txt")
    )
    del headers["X-Twilio-Signature"]
    assert (await client.post(PREFIX + "/voice", data=body, headers=headers)).status == 403
    missing = [(k, v) for k, v in fixture_params("voice_incoming.txt") if k != "CallSid"]
    assert (await post(client, fake, "/voice", missing))[0] == 400
    dial = [(k, v) for k, v in fixture_params("voice_dial_no_answer.txt") if k != "CallSid"]
    assert (await post(client, fake, "/voice/status", dial))[0] == 400
    unknown = with_values(fixture_params("voice_status_completed.txt"), CallStatus="teleported")
    assert (await post(client, fake, "/voice/status", unknown))[0] == 400
    store = hub_of(client).store
    assert await store.messages.count_documents({}) == 0
    assert await store.contacts.count_documents({}) == 0


async def test_progress_callbacks_are_acknowledged_logged_and_write_nothing(
    client, fake, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    ringing = fixture_params("voice_incoming.txt")  # CallStatus=ringing
    assert (await post(client, fake, "/voice/status", ringing))[0] == 200
    absent = with_values(fixture_params("recording_completed.txt"), RecordingStatus="absent")
    query = urllib.parse.urlencode({"caller": CALLER})
    assert (await post(client, fake, "/voice/recording", absent, query=query))[0] == 200
    events = {getattr(r, "event", None) for r in caplog.records}
    assert {"call.ringing", "recording.absent"} <= events
    assert await hub_of(client).store.messages.count_documents({}) == 0


async def test_a_withheld_number_is_answered_but_never_becomes_a_contact(client, fake) -> None:
    hub = hub_of(client)
    sub = hub.bus.subscribe()
    incoming = with_values(
        fixture_params("voice_incoming.txt"), From="+266696687", Caller="+266696687"
    )
    status, text = await post(client, fake, "/voice", incoming)
    assert status == 200
    (_, dial) = list(twiml(text))
    assert "callerId" not in dial.attrib  # Twilio then shows the number called
    missed = with_values(
        fixture_params("voice_dial_no_answer.txt"), From="+266696687", Caller="+266696687"
    )
    status, text = await post(client, fake, "/voice/status", missed)
    assert status == 200
    assert [child.tag for child in twiml(text)] == ["Hangup"]  # no voicemail to attach
    assert await hub.store.contacts.count_documents({}) == 0
    assert await hub.store.messages.count_documents({}) == 0
    assert not any(e.type == "call.incoming" for e in drain(sub))


@pytest.mark.parametrize(
    ("route", "fixture", "field", "value"),
    [
        ("/voice/status", "voice_dial_completed.txt", "DialCallDuration", "9" * 20),
        ("/voice/status", "voice_status_completed.txt", "CallDuration", "9" * 20),
        ("/voice/recording", "recording_completed.txt", "RecordingDuration", "9" * 20),
        ("/voice/status", "voice_status_completed.txt", "CallSid", "CA" + "f" * 600),
        ("/voice/recording", "recording_completed.txt", "RecordingSid", "RE" + "f" * 600),
    ],
    ids=[
        "dial-duration-20-digits",
        "call-duration-20-digits",
        "recording-duration-20-digits",
        "call-sid-over-512",
        "recording-sid-over-512",
    ],
)
async def test_a_value_the_store_cannot_hold_is_400_for_that_request_alone(
    client, fake, route, fixture, field, value
) -> None:
    """One signed callback whose number or id the store cannot hold is refused with
    400 (a 5xx would have Twilio retry it for ever), and the next call is stored."""
    query = urllib.parse.urlencode({"caller": CALLER}) if route == "/voice/recording" else ""
    poisoned = with_values(fixture_params(fixture), **{field: value})
    status, text = await post(client, fake, route, poisoned, query=query)
    assert status == 400, text
    assert await calls(client) == []
    status, _ = await post(
        client, fake, "/voice/status", fixture_params("voice_status_completed.txt")
    )
    assert status == 200
    assert len(await calls(client)) == 1
