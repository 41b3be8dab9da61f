"""The PBX channel (issue 3, point 6): the neutral, signed call-event webhook.

Every test runs a real hub (embedded store, dispatcher, event bus) with two
inboxes: `pbx` (the channel under test) and `sms`, a test-channel inbox that
sends the missed-call SMS to the fake provider on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.base import PermanentSendError
from channels.pbx import NO_TEXT_REASON, SUPPORTED_EVENTS, PbxChannel, PbxSettings
from channels.signing import sign
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import IdentityRef, OutboundMessage
from hub.services.outbox import OutboxError
from hub.services.runtime import ChannelServices
from tests.conftest import SECRET, hub_of
from tests.support.context import detached_context
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import drain, eventually, next_event, of_type

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pbx"
PBX_SECRET = "pbx-secret-0123456789abcdef"
MISSED_TEXT = "Sorry we missed your call - we will call you back shortly."
CONTRACT_EVENTS = {"call.started", "call.answered", "call.ended", "call.missed", "recording.ready"}
URL = "/webhooks/pbx/pbx"

Client = TestClient[web.Request, web.Application]


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def event_of(name: str, **changes: Any) -> bytes:
    """A fixture with some fields changed, as the bytes a PBX would post."""
    payload = json.loads(fixture(name))
    payload.update(changes)
    return json.dumps(payload).encode()


async def post(
    client: Client, body: bytes, *, secret: str = PBX_SECRET, signature: str | None = None
) -> Any:
    headers = {"Content-Type": "application/json"}
    headers["X-Signature"] = sign(secret, body) if signature is None else signature
    return await client.post(URL, data=body, headers=headers)


async def counts(client: Client) -> dict[str, int]:
    store = hub_of(client).store
    assert store is not None
    return {
        name: await getattr(store, name).count_documents({})
        for name in ("contacts", "identities", "conversations", "messages", "outbox", "events")
    }


NOTHING = {
    "contacts": 0,
    "identities": 0,
    "conversations": 0,
    "messages": 0,
    "outbox": 0,
    "events": 0,
}


@pytest.fixture
def pbx_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> Callable[..., Settings]:
    def make(**pbx: Any) -> Settings:
        inbox = {
            "id": "pbx",
            "channel": "pbx",
            "secret": PBX_SECRET,
            "missed_call_sms": MISSED_TEXT,
            "sms_inbox": "sms",
            **pbx,
        }
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [
                inbox,
                {
                    "id": "sms",
                    "channel": "testchan",
                    "secret": SECRET,
                    "api_base": provider.url,
                    "rate": 200.0,
                },
            ],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def pbx(pbx_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(pbx_settings()))) as client:
        yield client


# -- the event map ---------------------------------------------------------------------


def test_event_map_declares_exactly_the_contract_events():
    assert set(PbxChannel.EVENT_HANDLERS) == CONTRACT_EVENTS
    assert SUPPORTED_EVENTS == CONTRACT_EVENTS
    assert all(callable(handler) for handler in PbxChannel.EVENT_HANDLERS.values())


def test_every_fixture_is_named_after_an_event_the_map_declares():
    files = sorted(FIXTURES.glob("*.json"))
    assert {f.name.split("--")[0].removesuffix(".json") for f in files} == CONTRACT_EVENTS
    for file in files:
        event = json.loads(file.read_bytes())["event"]
        assert file.name.split("--")[0].removesuffix(".json") == event, file.name
        assert event in PbxChannel.EVENT_HANDLERS, f"{file.name}: no handler for {event}"


# -- call.started: the screen-pop --------------------------------------------------------


async def test_call_started_publishes_call_incoming_with_the_callers_card_and_stores_no_message(
    pbx,
):
    hub = hub_of(pbx)
    known = await ChannelServices(hub).update_contact(
        IdentityRef(kind="phone", value="+15551230001"), name="Ada Lovelace"
    )
    sub = hub.bus.subscribe()
    resp = await post(pbx, fixture("call.started"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["contact_id"] == known

    event = await next_event(sub, of_type("call.incoming"))
    assert event.data["inbox"] == "pbx"
    assert event.data["channel"] == "voice"
    assert event.data["call_id"] == "1715679067.4182"
    assert event.data["from"] == "+15551230001"
    assert event.data["contact"]["id"] == known
    assert event.data["contact"]["name"] == "Ada Lovelace"
    assert event.data["contact"]["phones"] == ["+15551230001"]
    assert (await counts(pbx))["messages"] == 0


async def test_call_started_by_an_unknown_number_creates_the_contact_for_the_card(pbx):
    sub = hub_of(pbx).bus.subscribe()
    resp = await post(pbx, event_of("call.started", **{"from": "+1 555 123 0099"}))
    assert resp.status == 200
    event = await next_event(sub, of_type("call.incoming"))
    store = hub_of(pbx).store
    (contact,) = await store.contacts.find().to_list()
    assert event.data["contact"]["id"] == contact["_id"]
    assert contact["phones"] == ["+15551230099"]


async def test_outgoing_call_started_is_acknowledged_ignored_and_publishes_no_screen_pop(pbx):
    sub = hub_of(pbx).bus.subscribe()
    body = event_of(
        "call.started", direction="out", **{"from": "+15005550006", "to": "+15551230003"}
    )
    resp = await post(pbx, body)
    assert resp.status == 200
    assert (await resp.json())["ignored"]
    assert not [e for e in drain(sub) if e.type == "call.incoming"]
    assert await counts(pbx) == NOTHING


# -- call.answered: known, deliberately not stored ------------------------------------------


async def test_call_answered_is_200_logged_as_ignored_and_writes_nothing(pbx, caplog):
    with caplog.at_level(logging.INFO, logger="hub.channels"):
        resp = await post(pbx, fixture("call.answered"))
    assert resp.status == 200
    assert (await resp.json())["ignored"]
    ignored = [
        r
        for r in caplog.records
        if r.getMessage() == "event ignored" and getattr(r, "channel", None) == "pbx"
    ]
    assert [getattr(r, "event", None) for r in ignored] == ["call.answered"]
    assert await counts(pbx) == NOTHING


# -- call.ended, call.missed, recording.ready ---------------------------------------------


async def test_call_ended_is_a_completed_call_message_in_the_callers_voice_conversation(pbx):
    resp = await post(pbx, fixture("call.ended"))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["duplicate"] is False
    store = hub_of(pbx).store
    (message,) = await store.messages.find().to_list()
    assert message["_id"] == answer["message_id"]
    assert message["kind"] == "call"
    assert message["channel"] == "voice"
    assert message["provider_id"] == "1715679067.4182:call"
    assert message["call"] == {
        "direction": "in",
        "status": "completed",
        "duration": 125,
        "recording_url": None,
        "call_id": "1715679067.4182",
    }
    assert message["extra"]["agent"] == "201"
    assert message["text"] == "Call, 2 min 5 s"
    assert message["created_at"].isoformat().startswith("2024-05-14T09:33:20")
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["_id"] == answer["conversation_id"]
    assert conversation["channel"] == "voice"
    assert conversation["inbox"] == "pbx"
    (contact,) = await store.contacts.find().to_list()
    assert contact["phones"] == ["+15551230001"]
    assert conversation["contact_id"] == contact["_id"]


async def test_outgoing_call_is_logged_in_the_conversation_of_the_number_called(pbx):
    resp = await post(pbx, fixture("call.ended--outgoing"))
    assert resp.status == 200
    store = hub_of(pbx).store
    (message,) = await store.messages.find().to_list()
    assert message["call"]["direction"] == "out"
    assert message["call"]["duration"] == 47
    (contact,) = await store.contacts.find().to_list()
    assert contact["phones"] == ["+15551230003"]  # `to`, not our own number
    assert await store.identities.count_documents({"value": "+15005550006"}) == 0


async def test_call_and_recording_of_one_caller_share_the_conversation_screen_pop_opened(pbx):
    started = await (await post(pbx, fixture("call.started"))).json()
    ended = await (await post(pbx, fixture("call.ended"))).json()
    recorded = await (await post(pbx, fixture("recording.ready"))).json()
    store = hub_of(pbx).store
    assert ended["conversation_id"] == recorded["conversation_id"]
    assert await store.conversations.count_documents({}) == 1
    assert await store.contacts.count_documents({}) == 1
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["contact_id"] == started["contact_id"]
    assert conversation["unread"] == 2


async def test_recording_ready_is_a_voicemail_message_linking_the_recording(pbx):
    resp = await post(pbx, fixture("recording.ready"))
    assert resp.status == 200, await resp.text()
    (message,) = await hub_of(pbx).store.messages.find().to_list()
    assert message["kind"] == "voicemail"
    assert message["provider_id"] == "1715679067.4182:recording"
    assert message["call"]["recording_url"] == (
        "https://pbx.example.com/recordings/1715679067.4182.mp3"
    )
    assert message["call"]["call_id"] == "1715679067.4182"
    assert message["call"]["duration"] == 125


async def test_call_missed_is_flagged_missed_and_sends_the_caller_one_sms(pbx, provider):
    resp = await post(pbx, fixture("call.missed"))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["sms_id"]
    store = hub_of(pbx).store
    (call,) = await store.messages.find({"direction": "in"}).to_list()
    assert call["kind"] == "call"
    assert call["call"]["status"] == "missed"
    assert call["text"] == "Missed call"

    (sms,) = await store.messages.find({"direction": "out"}).to_list()
    assert sms["_id"] == answer["sms_id"]
    assert sms["inbox"] == "sms"
    assert sms["channel"] == "sms"
    assert sms["text"] == MISSED_TEXT
    assert sms["sender"]["type"] == "system"
    sms_conversation = await store.conversations.find_one({"_id": sms["conversation_id"]})
    assert (
        sms_conversation["contact_id"]
        == (await store.conversations.find_one({"_id": call["conversation_id"]}))["contact_id"]
    )

    sent = await eventually(lambda: _sent(provider), lambda s: len(s) >= 1)
    assert [(s["to"], s["text"]) for s in sent] == [("+15551230002", MISSED_TEXT)]
    await eventually(
        lambda: store.messages.find_one({"_id": sms["_id"]}), lambda m: m["status"] == "sent"
    )


async def _sent(provider: FakeProvider) -> list[dict[str, Any]]:
    return list(provider.sent)


async def test_missed_call_sms_goes_once_per_call_across_retries_and_a_later_call_ended(
    pbx, provider
):
    first = await (await post(pbx, fixture("call.missed"))).json()
    retry = await (await post(pbx, fixture("call.missed"))).json()
    ended = await (await post(pbx, event_of("call.ended", call_id="1715680211.4190"))).json()
    assert first["duplicate"] is False and first["sms_id"]
    # The retry asks again and gets the same message: queued once per call.
    assert retry["duplicate"] is True and retry["sms_id"] == first["sms_id"]
    assert ended["duplicate"] is True  # one call, one call message
    store = hub_of(pbx).store
    assert await store.messages.count_documents({"direction": "in"}) == 1
    assert await store.messages.count_documents({"direction": "out"}) == 1
    await eventually(lambda: _sent(provider), lambda s: len(s) >= 1)

    # A second missed call from the same caller is another call: another SMS.
    other = await (await post(pbx, event_of("call.missed", call_id="1715690000.4300"))).json()
    assert other["duplicate"] is False and other["sms_id"]
    sent = await eventually(lambda: _sent(provider), lambda s: len(s) >= 2)
    assert [s["to"] for s in sent] == ["+15551230002", "+15551230002"]


async def test_missed_outgoing_call_sends_no_sms(pbx):
    body = event_of(
        "call.missed", direction="out", **{"from": "+15005550006", "to": "+15551230003"}
    )
    answer = await (await post(pbx, body)).json()
    assert answer["duplicate"] is False and "sms_id" not in answer
    assert await hub_of(pbx).store.messages.count_documents({"direction": "out"}) == 0


async def test_missed_call_sends_no_sms_to_a_caller_opted_out_of_sms(pbx):
    await ChannelServices(hub_of(pbx)).opt_out(
        IdentityRef(kind="phone", value="+15551230002"), "sms"
    )
    answer = await (await post(pbx, fixture("call.missed"))).json()
    assert answer["sms_id"] is None
    assert await hub_of(pbx).store.messages.count_documents({"direction": "out"}) == 0


async def test_missed_call_sms_is_off_when_its_text_is_empty(pbx_settings):
    settings = pbx_settings(missed_call_sms="", sms_inbox="")
    async with TestClient(TestServer(build_app(settings))) as client:
        answer = await (await post(client, fixture("call.missed"))).json()
        assert answer["duplicate"] is False and "sms_id" not in answer
        assert await hub_of(client).store.messages.count_documents({"direction": "out"}) == 0


async def test_missed_call_sms_naming_no_configured_inbox_still_logs_the_call(pbx_settings):
    settings = pbx_settings(sms_inbox="nowhere")
    async with TestClient(TestServer(build_app(settings))) as client:
        resp = await post(client, fixture("call.missed"))
        assert resp.status == 200
        answer = await resp.json()
        assert "nowhere" in answer["sms_error"]
        store = hub_of(client).store
        assert await store.messages.count_documents({"kind": "call"}) == 1
        assert await store.messages.count_documents({"direction": "out"}) == 0


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["call.ended", "call.missed", "recording.ready"])
async def test_a_pbx_retry_is_acknowledged_and_stored_once(pbx, name):
    first = await post(pbx, fixture(name))
    again = await post(pbx, fixture(name))
    assert first.status == again.status == 200
    one, two = await first.json(), await again.json()
    assert (one["duplicate"], two["duplicate"]) == (False, True)
    assert one["message_id"] == two["message_id"]
    assert await hub_of(pbx).store.messages.count_documents({"direction": "in"}) == 1


# -- refused requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="missing"),
        pytest.param(sign("another-secret-0123456789", fixture("call.ended")), id="other secret"),
        pytest.param(sign(PBX_SECRET, fixture("call.missed")), id="other body"),
        pytest.param(
            sign(PBX_SECRET, fixture("call.ended")).removeprefix("sha256="), id="bare hex"
        ),
        pytest.param("sha1=" + sign(PBX_SECRET, fixture("call.ended"))[7:], id="other algorithm"),
    ],
)
async def test_bad_or_missing_signature_is_403_and_writes_nothing(pbx, signature):
    for name in ("call.ended", "call.started"):
        body = fixture(name)
        headers = {"Content-Type": "application/json"}
        if signature:
            headers["X-Signature"] = signature
        resp = await pbx.post(URL, data=body, headers=headers)
        assert resp.status == 403
    assert await counts(pbx) == NOTHING


async def test_signature_in_upper_case_hex_is_accepted(pbx):
    body = fixture("call.ended")
    resp = await post(pbx, body, signature="sha256=" + sign(PBX_SECRET, body)[7:].upper())
    assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"not json", "JSON"),
        (b'["call.ended"]', "object"),
        (b'{"call_id": "1"}', "event"),
        (event_of("call.ended", event=7), "event"),
        (event_of("call.ended", call_id=""), "call_id"),
        (event_of("call.ended", direction="sideways"), "direction"),
        (event_of("call.ended", duration=-5), "duration"),
        (event_of("call.ended", at="yesterday-ish"), "at"),
        (event_of("call.ended", **{"from": "anonymous"}), "from"),
        (event_of("call.ended", direction="out", to="not a number"), "to"),
        (event_of("recording.ready", recording_url=None), "recording_url"),
        (event_of("recording.ready", recording_url="file:///etc/passwd"), "recording_url"),
        (b'{"event": "call.ended", "from": "+15551230001"}', "call_id"),
        (event_of("call.ended", at="9999-12-31T23:59:59-23:59"), "at"),
        (event_of("call.ended", duration=10**20), "duration"),
        (event_of("call.ended", duration=float("inf")), "duration"),
    ],
    ids=[
        "not-json",
        "array",
        "no-event",
        "event-not-a-string",
        "empty-call-id",
        "bad-direction",
        "negative-duration",
        "bad-time",
        "caller-not-a-number",
        "callee-not-a-number",
        "recording-without-url",
        "recording-url-not-http",
        "fields-missing",
        "time-past-year-9999-in-utc",
        "duration-over-8-bytes",
        "duration-infinity",
    ],
)
async def test_malformed_event_is_400_naming_the_problem_and_writes_nothing(pbx, body, names):
    resp = await post(pbx, body)
    assert resp.status == 400
    error = await resp.json()
    assert names in error["error"]["message"]
    assert await counts(pbx) == NOTHING


async def test_unknown_event_is_200_logged_as_ignored_and_writes_nothing(pbx, caplog):
    with caplog.at_level(logging.INFO, logger="hub.channels"):
        resp = await post(pbx, event_of("call.ended", event="call.transferred"))
    assert resp.status == 200
    assert (await resp.json())["ignored"] == "unknown event"
    ignored = [
        r
        for r in caplog.records
        if r.getMessage() == "event ignored" and getattr(r, "channel", None) == "pbx"
    ]
    assert [getattr(r, "event", None) for r in ignored] == ["call.transferred"]
    assert await counts(pbx) == NOTHING


async def test_a_body_over_the_size_cap_is_413_and_writes_nothing(pbx):
    body = event_of("call.ended", padding="x" * (64 * 1024))
    resp = await post(pbx, body)
    assert resp.status == 413
    assert await counts(pbx) == NOTHING


async def test_numbers_and_ids_sent_as_json_numbers_are_accepted(pbx):
    body = event_of("call.ended", call_id=1715679067, duration=12.4, **{"from": 15551230001})
    resp = await post(pbx, body)
    assert resp.status == 200, await resp.text()
    (message,) = await hub_of(pbx).store.messages.find().to_list()
    assert message["provider_id"] == "1715679067:call"
    assert message["call"]["duration"] == 12


# -- configuration and sending ---------------------------------------------------------------


def test_config_without_a_secret_is_refused_naming_the_key(pbx_settings):
    with pytest.raises(ConfigError, match="secret"):
        pbx_settings(secret="")
    with pytest.raises(ConfigError, match="sms_inbox"):
        pbx_settings(sms_inbox="")


async def test_adapter_refuses_to_start_without_its_secret():
    settings = PbxSettings.model_construct(secret="", missed_call_sms="", sms_inbox="")
    adapter = PbxChannel("pbx", settings, detached_context())
    with pytest.raises(ValueError, match="pbx: secret"):
        await adapter.start()


async def test_a_phone_line_refuses_text_replies_with_a_clear_reason(pbx):
    hub = hub_of(pbx)
    adapter = hub.adapters["pbx"]
    assert adapter.reply_refusal(None, False) == NO_TEXT_REASON
    with pytest.raises(PermanentSendError, match="cannot carry a text reply"):
        await adapter.send(OutboundMessage(id="m1", inbox="pbx", medium="voice", to="+1", text="x"))
    answer = await (await post(pbx, fixture("call.ended"))).json()
    with pytest.raises(OutboxError, match="cannot carry a text reply"):
        await hub.reply(answer["conversation_id"], text="hi", sender={"type": "agent", "id": "a"})
