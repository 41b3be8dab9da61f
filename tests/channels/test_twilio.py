"""The Twilio adapter, SMS and WhatsApp (issue 3, point 1): verbatim webhooks in,
signed as Twilio signs them; status callbacks; sends to a fake Twilio that speaks
the Messages API and enforces its rate."""

from __future__ import annotations

import asyncio
import html
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import PermanentSendError, RateLimit, TransientSendError
from channels.twilio import TwilioChannel, TwilioSettings, classify, retry_after_seconds
from channels.twilio.simulator import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import Attachment, OutboundMessage
from tests.conftest import hub_of
from tests.support.twilio_fixtures import FIXTURES, fixture_params, twilio_inbox
from tests.support.waiting import eventually

PREFIX = "/webhooks/twilio/tw"
AGENT = {"type": "agent", "id": "a1"}
CONTENT_SID = "HX0123456789abcdef0123456789abcdef"
Client = TestClient[web.Request, web.Application]

# Which route each fixture is posted to, by file-name prefix.
ROUTE_OF_FIXTURE = {
    "inbound_": "/messages",
    "status_": "/status",
    "voice_incoming": "/voice",
    "voice_dial_": "/voice/status",
    "voice_status_": "/voice/status",
    "voice_record_": "/voice/status",
    "recording_": "/voice/recording",
}


def route_of(fixture: str) -> str:
    for prefix, route in ROUTE_OF_FIXTURE.items():
        if fixture.startswith(prefix):
            return route
    raise AssertionError(f"fixture {fixture} has no route: add its prefix to ROUTE_OF_FIXTURE")


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
            "inboxes": [twilio_inbox(fake.url, **inbox)],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(settings_for()))) as running:
        yield running


async def post(
    client: Client, fake: FakeTwilio, route: str, params: Any, *, signed_url: str | None = None
) -> Any:
    """POST `params` to one of the inbox's routes, signed as Twilio signs it."""
    body, headers = fake.signed(signed_url or PUBLIC_URL + PREFIX + route, params)
    return await client.post(PREFIX + route, data=body, headers=headers)


def with_values(params: list[tuple[str, str]], **values: str | None) -> list[tuple[str, str]]:
    """`params` with some values replaced (None removes the field)."""
    out = [(k, values.get(k, v)) for k, v in params]
    out = [(k, v) for k, v in out if v is not None]
    present = {k for k, _ in params}
    out += [(k, v) for k, v in values.items() if k not in present and v is not None]
    return out


async def nothing_written(client: Client) -> None:
    store = hub_of(client).store
    assert store is not None
    for collection in ("messages", "contacts", "conversations", "identities", "early_statuses"):
        assert await store.db[collection].count_documents({}) == 0, collection


async def inbound(client: Client, fake: FakeTwilio, fixture: str) -> dict[str, Any]:
    response = await post(client, fake, "/messages", fixture_params(fixture))
    assert response.status == 200, await response.text()
    params = dict(fixture_params(fixture))
    store = hub_of(client).store
    doc = await store.messages.find_one({"provider_id": params["MessageSid"]})
    assert doc is not None
    return doc


async def reply(client: Client, conversation_id: str, **fields: Any) -> dict[str, Any]:
    """An agent's reply, sent by the dispatcher; the stored message once it left."""
    hub = hub_of(client)
    queued = await hub.reply(conversation_id, sender=AGENT, **fields)

    async def probe() -> dict[str, Any]:
        return await hub.store.messages.find_one({"_id": queued["_id"]})

    return await eventually(probe, lambda m: m["status"] not in ("queued", "sending"))


# --- the event map ---------------------------------------------------------------------


def test_every_fixture_is_an_event_the_adapter_declares() -> None:
    fixtures = sorted(path.name for path in FIXTURES.glob("*.txt"))
    assert len(fixtures) >= 15
    for name in fixtures:
        event = classify(route_of(name), dict(fixture_params(name)))
        assert event in TwilioChannel.EVENTS, f"{name}: event {event!r} is declared nowhere"


def test_every_declared_handler_is_a_coroutine_of_the_adapter() -> None:
    handlers = {handler for handler in TwilioChannel.EVENTS.values() if handler}
    for handler in handlers:
        assert inspect.iscoroutinefunction(handler), handler
    assert "message.whatsapp" in TwilioChannel.supported_events()
    assert "status.queued" not in TwilioChannel.supported_events()


async def test_an_event_nobody_declared_is_400_and_writes_nothing(client, fake) -> None:
    params = with_values(fixture_params("status_delivered.txt"), MessageStatus="huh")
    response = await post(client, fake, "/status", params)
    assert response.status == 400
    assert "huh" in await response.text()
    await nothing_written(client)


# --- inbound messages ----------------------------------------------------------------------


async def test_inbound_sms_is_stored_as_text_from_the_senders_phone_and_answered_with_twiml(
    client, fake
) -> None:
    response = await post(client, fake, "/messages", fixture_params("inbound_sms.txt"))
    assert response.status == 200
    assert response.content_type == "text/xml"
    assert "<Response" in await response.text()
    store = hub_of(client).store
    doc = await store.messages.find_one({"provider_id": "SMa741ddeb574e5dda5516c73417fcd28a"})
    assert doc["channel"] == "sms" and doc["kind"] == "text" and doc["direction"] == "in"
    assert doc["text"] == "Hi there from Twilio"
    assert doc["extra"]["To"] == "+13177933221" and doc["extra"]["FromCity"] == "INDIANAPOLIS"
    contact = await store.contacts.find_one({})
    assert contact["phones"] == ["+13177592786"]
    conversation = await store.conversations.find_one({"_id": doc["conversation_id"]})
    assert conversation["channel"] == "sms" and conversation["inbox"] == "tw"


async def test_inbound_whatsapp_is_stored_on_whatsapp_with_profile_name_and_wa_id(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp.txt")
    assert doc["channel"] == "whatsapp" and doc["kind"] == "text"
    assert doc["text"] == "Olá"
    assert doc["extra"]["WaId"] == "558282136275"
    contact = await hub_of(client).store.contacts.find_one({})
    assert contact["name"] == "Jhonata"
    assert contact["phones"] == ["+558282136275"]


async def test_inbound_whatsapp_media_is_stored_with_each_url_and_content_type(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp_media.txt")
    assert doc["kind"] == "media" and doc["text"] == "Hu"
    assert [(a["ref"], a["content_type"]) for a in doc["attachments"]] == [
        (
            "https://api.twilio.com/2010-04-01/Accounts/ACcac64a7fd3d8c588ae857886acb0e122"
            "/Messages/MM34b3ee6de346ba069213c6be8404190e/Media/MEdcfc34442a7cdc21a926d06fbfc94b02",
            "image/jpeg",
        )
    ]


async def test_several_media_of_one_mms_are_all_kept_in_order(client, fake) -> None:
    params = with_values(
        fixture_params("inbound_sms.txt"),
        NumMedia="2",
        MediaUrl0="https://api.twilio.com/m/ME1",
        MediaContentType0="image/png",
        MediaUrl1="https://api.twilio.com/m/ME2",
        MediaContentType1="video/mp4",
    )
    assert (await post(client, fake, "/messages", params)).status == 200
    doc = await hub_of(client).store.messages.find_one({})
    assert [a["content_type"] for a in doc["attachments"]] == ["image/png", "video/mp4"]


async def test_inbound_whatsapp_button_is_stored_as_a_button_reply(client, fake) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp_button.txt")
    assert doc["button"] == {"payload": "REJECTED", "title": "VOICE_CALL_REQUEST"}
    assert doc["text"] == "VOICE_CALL_REQUEST"


async def test_inbound_whatsapp_location_is_stored_with_coordinates_label_and_address(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp_location.txt")
    assert doc["location"] == {
        "latitude": -22.951916,
        "longitude": -43.2104872,
        "name": "Cristo Redentor",
        "address": "Parque Nacional da Tijuca, Rio de Janeiro - RJ",
    }
    assert doc["text"] is None


async def test_a_twilio_retry_of_an_inbound_message_is_stored_once(client, fake) -> None:
    for _ in range(3):
        response = await post(client, fake, "/messages", fixture_params("inbound_sms.txt"))
        assert response.status == 200
    store = hub_of(client).store
    assert await store.messages.count_documents({}) == 1
    assert await store.contacts.count_documents({}) == 1


async def test_stop_through_advanced_opt_out_is_stored_and_opts_the_contact_out(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_sms_optout_stop.txt")
    assert doc["text"] == "STOP"
    contact = await hub_of(client).store.contacts.find_one({})
    assert contact["opted_out"] == {"sms": True}


# --- what is refused, and what is acknowledged without effect ---------------------------


def _wrong_token(fake: FakeTwilio, url: str, params: Any) -> tuple[bytes, dict[str, str]]:
    other = FakeTwilio(auth_token="another-auth-token-000000000000")
    return other.signed(url, params)


async def test_missing_or_wrong_signature_is_403_and_writes_nothing(client, fake) -> None:
    params = fixture_params("inbound_sms.txt")
    public = PUBLIC_URL + PREFIX + "/messages"
    body, headers = fake.signed(public, params)
    no_signature = {k: v for k, v in headers.items() if k != "X-Twilio-Signature"}
    attempts = [
        (body, no_signature),
        _wrong_token(fake, public, params),
        # Signed for the address the test server listens on, not the public URL
        # Twilio is configured with: the hub checks the URL Twilio called.
        fake.signed(str(client.make_url(PREFIX + "/messages")), params),
        (body.replace(b"Hi+there", b"Pay+now+"), headers),  # altered after signing
    ]
    for data, sent_headers in attempts:
        response = await client.post(PREFIX + "/messages", data=data, headers=sent_headers)
        assert response.status == 403
    for route in ("/status", "/voice", "/voice/status", "/voice/recording"):
        response = await client.post(PREFIX + route, data=body, headers=no_signature)
        assert response.status == 403, route
    await nothing_written(client)


@pytest.mark.parametrize(
    ("route", "change"),
    [
        ("/messages", {"MessageSid": None, "SmsMessageSid": None, "SmsSid": None}),
        ("/messages", {"From": None}),
        ("/messages", {"NumMedia": "many"}),
        ("/messages", {"NumMedia": "2", "MediaUrl0": "https://api.twilio.com/m/ME1"}),
        ("/messages", {"Latitude": "north", "Longitude": "-43.2"}),
        ("/messages", {"Latitude": "91", "Longitude": "10"}),
        ("/status", {"MessageStatus": None, "SmsStatus": None, "To": "+15551230001"}),
        ("/status", {"MessageSid": None, "SmsSid": None}),
    ],
)
async def test_a_malformed_request_is_400_and_writes_nothing(client, fake, route, change) -> None:
    fixture = "inbound_sms.txt" if route == "/messages" else "status_delivered.txt"
    response = await post(client, fake, route, with_values(fixture_params(fixture), **change))
    assert response.status == 400, await response.text()
    await nothing_written(client)


async def test_a_body_that_is_not_a_form_is_400_and_writes_nothing(client, fake) -> None:
    response = await client.post(
        PREFIX + "/messages",
        data=b"\xff\xfe{not a form",
        headers={"X-Twilio-Signature": "c29tZXRoaW5n", "Content-Type": "text/plain"},
    )
    assert response.status == 400
    await nothing_written(client)


async def test_known_unhandled_events_are_acknowledged_logged_and_write_nothing(
    client, fake, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    cases = [
        ("/status", fixture_params("status_queued.txt"), "status.queued"),
        (
            "/messages",
            with_values(fixture_params("inbound_sms.txt"), From="messenger:1234567890"),
            "message.other",
        ),
        # A carrier's short code: not a number anyone can answer.
        ("/messages", with_values(fixture_params("inbound_sms.txt"), From="22395"), "message.sms"),
    ]
    for route, params, event in cases:
        response = await post(client, fake, route, params)
        assert response.status == 200, event
        logged = [r for r in caplog.records if r.getMessage() == "event ignored"]
        assert any(
            getattr(r, "event", None) == event and getattr(r, "channel", None) == "twilio"
            for r in logged
        ), event
    await nothing_written(client)


async def test_ignored_events_get_the_empty_twiml_or_empty_body_their_route_expects(
    client, fake
) -> None:
    cases = [
        ("/messages", with_values(fixture_params("inbound_sms.txt"), From="messenger:123")),
        ("/messages", with_values(fixture_params("inbound_sms.txt"), From="22395")),
        ("/status", fixture_params("status_queued.txt")),
        ("/voice/status", fixture_params("voice_incoming.txt")),  # CallStatus=ringing
    ]
    for route, params in cases:
        response = await post(client, fake, route, params)
        assert response.status == 200, route
        if route == "/status":
            assert await response.text() == "", route
        else:
            assert response.content_type == "text/xml", route
            assert await response.text() == str(MessagingResponse()), route
    await nothing_written(client)


async def test_a_malformed_request_is_answered_with_the_apis_json_error(client, fake) -> None:
    params = with_values(fixture_params("inbound_sms.txt"), NumMedia="many")
    response = await post(client, fake, "/messages", params)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request" and "NumMedia" in error["message"]


# --- status callbacks -------------------------------------------------------------------


async def test_status_callbacks_move_a_whatsapp_reply_to_delivered_then_read(client, fake) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp.txt")
    sent = await reply(client, doc["conversation_id"], text="Olá! Como posso ajudar?")
    assert sent["status"] == "sent" and sent["provider_id"].startswith("SM")
    sid = sent["provider_id"]
    store = hub_of(client).store
    for fixture, expected in (("status_delivered.txt", "delivered"), ("status_read.txt", "read")):
        params = with_values(fixture_params(fixture), MessageSid=sid, SmsSid=sid)
        response = await post(client, fake, "/status", params)
        assert response.status == 200 and await response.text() == ""
        assert (await store.messages.find_one({"_id": sent["_id"]}))["status"] == expected
    # A late "sent" callback does not move it back.
    params = with_values(fixture_params("status_sent.txt"), MessageSid=sid, SmsSid=sid)
    assert (await post(client, fake, "/status", params)).status == 200
    assert (await store.messages.find_one({"_id": sent["_id"]}))["status"] == "read"


async def test_undelivered_21610_fails_the_message_with_the_reason_and_opts_the_contact_out(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_sms.txt")
    sent = await reply(client, doc["conversation_id"], text="Your order shipped")
    sid = sent["provider_id"]
    params = with_values(
        fixture_params("status_undelivered_21610.txt"),
        MessageSid=sid,
        SmsSid=sid,
        To="+13177592786",
    )
    assert (await post(client, fake, "/status", params)).status == 200
    store = hub_of(client).store
    failed = await store.messages.find_one({"_id": sent["_id"]})
    assert failed["status"] == "failed"
    assert "unsubscribed" in failed["error"] and "21610" in failed["error"]
    contact = await store.contacts.find_one({})
    assert contact["opted_out"] == {"sms": True}


async def test_a_failed_whatsapp_callback_outside_the_window_keeps_twilios_reason(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_whatsapp.txt")
    sent = await reply(client, doc["conversation_id"], text="Following up")
    sid = sent["provider_id"]
    params = with_values(fixture_params("status_failed_63016.txt"), MessageSid=sid, SmsSid=sid)
    assert (await post(client, fake, "/status", params)).status == 200
    failed = await hub_of(client).store.messages.find_one({"_id": sent["_id"]})
    assert failed["status"] == "failed"
    assert "24 hours" in failed["error"] and "63016" in failed["error"]


async def test_the_fake_reports_delivery_to_the_status_callback_the_send_named(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_sms.txt")
    sent = await reply(client, doc["conversation_id"], text="On its way")
    base_url = str(client.make_url("")).rstrip("/")
    status, _ = await fake.report_status(client.session, base_url, sent["provider_id"], "delivered")
    assert status == 200
    delivered = await hub_of(client).store.messages.find_one({"_id": sent["_id"]})
    assert delivered["status"] == "delivered"


# --- sending ------------------------------------------------------------------------------


async def test_a_reply_is_a_signed_form_post_with_media_and_our_status_callback(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_sms.txt")
    sent = await reply(
        client,
        doc["conversation_id"],
        text="Here are the documents",
        attachments=[
            Attachment(url="https://files.example.com/a.jpg", content_type="image/jpeg"),
            Attachment(url="https://files.example.com/b.pdf", content_type="application/pdf"),
        ],
    )
    assert sent["status"] == "sent"
    (request,) = fake.requests
    assert request["status"] == 201  # basic auth and form accepted
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request["form"]["To"] == ["+13177592786"]
    assert request["form"]["From"] == ["+15005550006"]
    assert request["form"]["Body"] == ["Here are the documents"]
    assert request["media"] == [
        "https://files.example.com/a.jpg",
        "https://files.example.com/b.pdf",
    ]
    assert request["status_callback"] == PUBLIC_URL + PREFIX + "/status"
    assert sent["provider_id"] == fake.sent[0]["sid"]


def message(medium: str = "sms", **fields: Any) -> OutboundMessage:
    data: dict[str, Any] = {
        "id": "m1",
        "inbox": "tw",
        "medium": medium,
        "to": "+15551230001",
        "text": "hello",
    }
    data.update(fields)
    return OutboundMessage(**data)


async def test_whatsapp_is_sent_between_whatsapp_addresses_and_voice_as_an_sms(
    client, fake
) -> None:
    adapter = hub_of(client).adapters["tw"]
    await adapter.send(message("whatsapp"))
    await adapter.send(message("voice"))
    await adapter.send(
        message(
            "whatsapp",
            text=None,
            template={
                "content_sid": "HX0123456789abcdef0123456789abcdef",
                "variables": {"1": "Ann"},
            },
        )
    )
    whatsapp, voice, template = fake.requests
    assert (whatsapp["from"], whatsapp["to"]) == ("whatsapp:+14155238886", "whatsapp:+15551230001")
    assert (voice["from"], voice["to"]) == ("+15005550006", "+15551230001")
    assert template["form"]["ContentSid"] == [CONTENT_SID]
    assert template["form"]["ContentVariables"] == ['{"1": "Ann"}']
    assert "Body" not in template["form"]


async def test_a_medium_without_its_sender_number_fails_permanently_before_any_request(
    settings_for,
) -> None:
    async with TestClient(TestServer(build_app(settings_for(whatsapp_number=None)))) as running:
        adapter = hub_of(running).adapters["tw"]
        with pytest.raises(PermanentSendError, match="whatsapp_number"):
            await adapter.send(message("whatsapp"))
        with pytest.raises(PermanentSendError, match="nothing to send"):
            await adapter.send(message("sms", text=None))


@pytest.mark.parametrize(
    ("code", "retry_after", "kind", "expect"),
    [
        (21610, None, PermanentSendError, {"opt_out": True, "code": "21610"}),
        (63016, None, PermanentSendError, {"opt_out": False, "code": "63016"}),
        (21211, None, PermanentSendError, {"code": "21211"}),
        (20500, None, TransientSendError, {"maybe_sent": True, "code": "20500"}),
        (20429, "7", TransientSendError, {"maybe_sent": False, "retry_after": 7.0}),
    ],
)
async def test_twilio_errors_are_classified_transient_or_permanent(
    client, fake, code, retry_after, kind, expect
) -> None:
    fake.fail_next(code, retry_after=retry_after)
    with pytest.raises(kind) as raised:
        await hub_of(client).adapters["tw"].send(message())
    for name, value in expect.items():
        assert getattr(raised.value, name) == value, name
    if code == 63016:
        assert "24 hours" in raised.value.reason and "template" in raised.value.reason
    if code == 21211:
        assert "invalid 'To'" in raised.value.reason


async def test_an_unknown_4xx_keeps_twilios_code_and_message(client, fake) -> None:
    fake.fail_next(21999, message="The frobnicator refused the message")
    with pytest.raises(PermanentSendError) as raised:
        await hub_of(client).adapters["tw"].send(message())
    assert raised.value.code == "21999"
    assert raised.value.reason == "The frobnicator refused the message"


async def test_the_fakes_own_rate_limit_is_a_transient_429_not_sent(client, fake) -> None:
    fake.rate = 2
    adapter = hub_of(client).adapters["tw"]
    await adapter.send(message())
    await adapter.send(message())
    with pytest.raises(TransientSendError) as raised:
        await adapter.send(message())
    assert raised.value.code == "20429" and raised.value.maybe_sent is False
    assert raised.value.retry_after == 1.0
    assert fake.rejected_429 == 1
    assert [r["status"] for r in fake.requests] == [201, 201, 429]
    assert all(isinstance(r["at"], float) for r in fake.requests)


async def test_unreachable_and_slow_twilio_are_transient(client, fake) -> None:
    adapter = hub_of(client).adapters["tw"]
    original = adapter.settings
    adapter.settings = original.model_copy(update={"api_base": "http://127.0.0.1:9"})
    with pytest.raises(TransientSendError) as refused:
        await adapter.send(message())
    assert refused.value.maybe_sent is False
    adapter.settings = original.model_copy(update={"send_timeout": 0.2})
    fake.delay = 1.0
    with pytest.raises(TransientSendError) as slow:
        await adapter.send(message())
    assert slow.value.maybe_sent is True
    adapter.settings = original


async def test_a_send_to_an_unsubscribed_number_fails_and_opts_the_contact_out(
    client, fake
) -> None:
    doc = await inbound(client, fake, "inbound_sms.txt")
    fake.opted_out.add("+13177592786")
    failed = await reply(client, doc["conversation_id"], text="Sale today!")
    assert failed["status"] == "failed"
    assert "unsubscribed" in failed["error"] and "21610" in failed["error"]
    contact = await hub_of(client).store.contacts.find_one({})
    assert contact["opted_out"] == {"sms": True}


async def test_a_429_is_retried_after_retry_after_and_then_sent(client, fake) -> None:
    doc = await inbound(client, fake, "inbound_sms.txt")
    fake.fail_next(20429, retry_after="0.3")
    sent = await reply(client, doc["conversation_id"], text="hello again")
    assert sent["status"] == "sent"
    first, second = fake.requests
    assert first["status"] == 429 and second["status"] == 201
    assert second["at"] - first["at"] >= 0.3


# --- pace, config, start -------------------------------------------------------------------


def settings(**fields: Any) -> TwilioSettings:
    return TwilioSettings(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, **fields)


def test_rate_is_one_per_second_for_a_long_code_ten_for_whatsapp_only_or_as_configured() -> None:
    def limit(**fields: Any) -> RateLimit:
        return TwilioChannel("tw", settings(**fields), None).rate_limit()  # type: ignore[arg-type]

    assert limit(number="+15005550006") == RateLimit(per_second=1.0, burst=1)
    assert limit(whatsapp_number="+14155238886") == RateLimit(per_second=10.0, burst=1)
    assert limit(number="+18005550006", rate=3) == RateLimit(per_second=3.0, burst=1)


def test_config_requires_the_secret_and_valid_numbers(tmp_path) -> None:
    def parse(**inbox: Any) -> Settings:
        entry = twilio_inbox("https://api.twilio.com", **inbox)
        entry = {k: v for k, v in entry.items() if v is not None}
        return parse_settings({"inboxes": [entry]}, source="hub.toml", base_dir=tmp_path)

    with pytest.raises(ConfigError, match=r"inboxes\[0\]\.auth_token: required key is missing"):
        parse(auth_token=None)
    with pytest.raises(ConfigError, match=r"agent_numbers"):
        parse(agent_numbers=["555-1234"])
    with pytest.raises(ConfigError, match=r"unknown key"):
        parse(sid="AC1")
    with pytest.raises(ConfigError, match=r"missed_call_sms needs"):
        parse(number=None, missed_call_sms="Sorry we missed you")
    parsed = parse(whatsapp_number="whatsapp:+14155238886", agent_numbers=["+15550001111"])
    inbox_settings = parsed.inboxes[0].settings
    assert inbox_settings.whatsapp_number == "+14155238886"  # type: ignore[attr-defined]
    assert AUTH_TOKEN in parsed.secrets  # redacted from logs


async def test_the_adapter_refuses_to_start_without_its_auth_token() -> None:
    unset = TwilioSettings.model_construct(account_sid=ACCOUNT_SID, auth_token="")
    adapter = TwilioChannel("tw", unset, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tw: auth_token"):
        await adapter.start()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


async def test_concurrent_retries_of_one_message_store_one(client, fake) -> None:
    params = fixture_params("inbound_whatsapp_media.txt")
    responses = await asyncio.gather(*(post(client, fake, "/messages", params) for _ in range(5)))
    assert [r.status for r in responses] == [200] * 5
    assert await hub_of(client).store.messages.count_documents({}) == 1


# --- the URLs to give Twilio --------------------------------------------------------------

# A request Twilio sends to each URL the status page lists.
SIGNED_REQUEST_OF_ROUTE = {
    "/messages": "inbound_sms.txt",
    "/voice": "voice_incoming.txt",
    "/status": "status_queued.txt",
}


async def test_the_status_page_lists_the_urls_to_give_twilio_and_each_answers_twilio(
    client, fake
) -> None:
    response = await client.get("/status")
    assert response.status == 200
    page = await response.text()
    listed = [html.unescape(url) for url in re.findall(r"<code>(.*?)</code>", page)]
    expected = [PUBLIC_URL + PREFIX + route for route in ("/messages", "/voice", "/status")]
    assert [url for url in listed if PREFIX in url] == expected
    for url in expected:
        route = url.removeprefix(PUBLIC_URL + PREFIX)
        body, headers = fake.signed(url, fixture_params(SIGNED_REQUEST_OF_ROUTE[route]))
        answered = await client.post(url.removeprefix(PUBLIC_URL), data=body, headers=headers)
        assert answered.status == 200, (url, await answered.text())
