"""The WhatsApp Cloud API channel (issue 3, point 4): notifications in, Graph out.

Every test runs a real hub (embedded store, dispatcher, event bus) whose WhatsApp
inbox talks to `FakeWhatsApp` (channels/whatsapp/simulator.py), a Graph API server
on 127.0.0.1 that checks the token and the message shape and enforces a throughput
limit. Notifications are the files under tests/fixtures/whatsapp/, posted as Meta
posts them: the raw body, signed with the app secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.base import PermanentSendError, TransientSendError
from channels.whatsapp import (
    CHANGE_FIELDS,
    IGNORED_MESSAGE_TYPES,
    INTERACTIVE_REPLIES,
    MESSAGE_HANDLERS,
    STATUS_MAP,
    SUPPORTED_EVENTS,
    WINDOW_REASON,
    WhatsAppChannel,
    WhatsAppSettings,
)
from channels.whatsapp.simulator import FakeWhatsApp, post_notification, sign
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import Attachment, ButtonReply, OutboundMessage
from hub.services.outbox import OutboxError, enqueue, provider_key
from hub.services.runtime import HUB, Hub
from tests.conftest import hub_of
from tests.support.context import replaced
from tests.support.waiting import eventually

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
APP_SECRET = "wa-app-secret-0123456789abcdef"
VERIFY_TOKEN = "wa-verify-token-42"
URL = "/webhooks/whatsapp/wa"
SHEENA = "+16505551234"
AGENT = {"type": "agent", "id": "agent-1"}
SETTLED = {"sent", "delivered", "read", "failed", "unknown"}
TEMPLATE = {"name": "hello_world", "language": "en_US"}

Client = TestClient[web.Request, web.Application]


def raw_fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw_fixture(name))
    return data


def all_fixtures() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def fresh(name: str) -> dict[str, Any]:
    """A fixture whose messages were sent just now (inside the 24-hour window)."""
    data = fixture(name)
    for entry in data["entry"]:
        for change in entry["changes"]:
            for message in change["value"].get("messages", []):
                message["timestamp"] = str(int(time.time()))
    return data


async def post(client: Client, payload: str | bytes | dict[str, Any], **kw: Any) -> Any:
    body = raw_fixture(payload) if isinstance(payload, str) else payload
    return await post_notification(client, URL, body, APP_SECRET, **kw)


def hub(client: Client) -> Hub:
    return hub_of(client)


def adapter(client: Client) -> WhatsAppChannel:
    found = hub(client).adapters["wa"]
    assert isinstance(found, WhatsAppChannel)
    return found


COLLECTIONS = ("contacts", "identities", "conversations", "messages", "outbox", "events")
NOTHING = dict.fromkeys(COLLECTIONS, 0)


async def counts(client: Client) -> dict[str, int]:
    store = hub(client).store
    assert store is not None
    return {name: await getattr(store, name).count_documents({}) for name in COLLECTIONS}


async def only_message(client: Client) -> dict[str, Any]:
    store = hub(client).store
    assert store is not None
    (message,) = await store.messages.find().to_list()
    return dict(message)


async def message_when(client: Client, message_id: str, statuses: set[str]) -> dict[str, Any]:
    store = hub(client).store
    assert store is not None
    found: dict[str, Any] = await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and m["status"] in statuses,
    )
    return found


async def open_conversation(client: Client, payload: dict[str, Any] | None = None) -> str:
    """A conversation with Sheena whose last message is recent (window open)."""
    resp = await post(client, json.dumps(payload or fresh("text")).encode())
    assert resp.status == 200, await resp.text()
    return str((await only_message(client))["conversation_id"])


def outbound(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "id": "m1",
        "inbox": "wa",
        "medium": "whatsapp",
        "to": SHEENA,
        "text": "Hello",
        "last_inbound_at": datetime.now(UTC) - timedelta(minutes=5),
    }
    values.update(fields)
    return OutboundMessage(**values)


# -- the hub under test -------------------------------------------------------------------


@pytest.fixture
async def graph() -> AsyncIterator[FakeWhatsApp]:
    fake = FakeWhatsApp()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def wa_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, graph: FakeWhatsApp
) -> Callable[..., Settings]:
    def make(**inbox: Any) -> Settings:
        entry = {
            "id": "wa",
            "channel": "whatsapp",
            "phone_number_id": graph.phone_number_id,
            "access_token": graph.access_token,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
            "api_base": graph.url,
            **inbox,
        }
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [entry],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def wa_client(wa_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(wa_settings()))) as client:
        yield client


# -- verification handshake -----------------------------------------------------------------


async def test_verification_with_the_right_token_echoes_the_challenge_as_plain_text(wa_client):
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    resp = await wa_client.get(URL, params=query)
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert await resp.text() == "1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong-token-xx", "hub.challenge": "8675309"},
        {"hub.mode": "subscribe", "hub.challenge": "8675309"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "8675309"},
        {},
    ],
    ids=["wrong-token", "no-token", "wrong-mode", "nothing"],
)
async def test_verification_without_the_right_token_and_mode_is_403(wa_client, query):
    resp = await wa_client.get(URL, params=query)
    assert resp.status == 403
    assert "8675309" not in await resp.text()


# -- signature and bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        "",
        sign("another-app-secret", raw_fixture("text")),
        sign(APP_SECRET, raw_fixture("text") + b" "),
        "sha1=" + sign(APP_SECRET, raw_fixture("text"))[len("sha256=") :],
    ],
    ids=["missing", "other-secret", "other-body", "other-algorithm"],
)
async def test_notification_with_a_bad_or_missing_signature_is_403_and_writes_nothing(
    wa_client, caplog, signature
):
    caplog.set_level(logging.INFO)
    resp = await post(wa_client, "text", signature=signature)
    assert resp.status == 403
    assert await counts(wa_client) == NOTHING
    assert APP_SECRET not in caplog.text


def _without_text_object() -> bytes:
    data = fixture("text")
    del data["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    return json.dumps(data).encode()


def _with_bad_timestamp() -> bytes:
    data = fixture("text")
    data["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = "yesterday"
    return json.dumps(data).encode()


def _without_message_id() -> bytes:
    data = fixture("image")
    del data["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    return json.dumps(data).encode()


def _without_metadata() -> bytes:
    data = fixture("status_sent")
    del data["entry"][0]["changes"][0]["value"]["metadata"]
    return json.dumps(data).encode()


def _other_object() -> bytes:
    data = fixture("text")
    data["object"] = "page"
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"object": "whatsapp_business_account"}',
        _other_object(),
        _without_text_object(),
        _with_bad_timestamp(),
        _without_message_id(),
        _without_metadata(),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-entry",
        "other-object",
        "text-without-text",
        "bad-timestamp",
        "message-without-id",
        "value-without-metadata",
    ],
)
async def test_malformed_notification_is_400_and_writes_nothing(wa_client, body):
    resp = await post(wa_client, body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "bad_request"
    assert await counts(wa_client) == NOTHING


async def test_a_batch_with_one_malformed_message_writes_none_of_its_messages(wa_client):
    data = fixture("batch_two_entries")
    del data["entry"][1]["changes"][0]["value"]["messages"][0]["text"]
    resp = await post(wa_client, json.dumps(data).encode())
    assert resp.status == 400
    assert await counts(wa_client) == NOTHING


async def test_oversized_notification_is_refused_before_it_is_parsed(wa_settings):
    app = build_app(wa_settings(max_body_bytes=16 * 1024))
    async with TestClient(TestServer(app)) as client:
        body = json.dumps({"object": "whatsapp_business_account", "pad": "x" * 20000}).encode()
        resp = await post(client, body)
        assert resp.status == 413
        assert await counts(client) == NOTHING


# -- inbound messages ---------------------------------------------------------------------


def _check_text(m: dict[str, Any]) -> None:
    assert m["kind"] == "text"
    assert m["text"] == "Does it come in another color?"


def _check_image(m: dict[str, Any]) -> None:
    assert m["kind"] == "media"
    assert m["text"] == "Taj Mahal"
    (attachment,) = m["attachments"]
    assert attachment["ref"] == "whatsapp-media:1003383421387256"
    assert attachment["content_type"] == "image/jpeg"
    assert m["extra"]["media_type"] == "image"


def _check_document(m: dict[str, Any]) -> None:
    assert m["kind"] == "media"
    assert m["text"] == "my receipt"
    (attachment,) = m["attachments"]
    assert {k: attachment[k] for k in ("ref", "content_type", "name")} == {
        "ref": "whatsapp-media:622684793477189",
        "content_type": "application/pdf",
        "name": "receipt.pdf",
    }


def _check_audio(m: dict[str, Any]) -> None:
    assert m["kind"] == "media"
    assert m["text"] is None
    (attachment,) = m["attachments"]
    assert attachment["ref"] == "whatsapp-media:1003383421387256"
    assert attachment["content_type"] == "audio/ogg; codecs=opus"
    assert m["extra"]["voice"] == "true"


def _check_sticker(m: dict[str, Any]) -> None:
    assert m["kind"] == "media"
    (attachment,) = m["attachments"]
    assert attachment["ref"] == "whatsapp-media:1908647269898587"
    assert attachment["content_type"] == "image/webp"
    assert m["extra"]["animated"] == "true"


def _check_location(m: dict[str, Any]) -> None:
    assert m["location"] == {
        "latitude": 37.44221496582,
        "longitude": -122.16165924072,
        "name": "Philz Coffee",
        "address": "101 Forest Ave, Palo Alto, CA 94301",
    }
    assert m["extra"]["location_url"] == "https://philzcoffee.com/"


def _check_contacts(m: dict[str, Any]) -> None:
    assert m["contact"] == {
        "name": "Barbara J. Johnson",
        "phones": ["+14155550829"],
        "emails": [],
    }


def _check_button_reply(m: dict[str, Any]) -> None:
    assert m["button"] == {"payload": "cancel-button", "title": "Cancel"}
    assert m["text"] == "Cancel"
    assert m["extra"]["interactive"] == "button_reply"
    assert m["extra"]["reply_to"] == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA"


def _check_list_reply(m: dict[str, Any]) -> None:
    assert m["button"] == {"payload": "priority_express", "title": "Priority Mail Express"}
    assert m["text"] == "Priority Mail Express"
    assert m["extra"]["description"] == "Next Day to 2 Days"


def _check_quick_reply_button(m: dict[str, Any]) -> None:
    assert m["button"] == {"payload": "Unsubscribe", "title": "Unsubscribe"}
    assert m["text"] == "Unsubscribe"
    assert (
        m["extra"]["reply_to"] == "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    )


def _check_reaction(m: dict[str, Any]) -> None:
    assert m["kind"] == "text"
    assert m["text"] == "👍"
    assert m["extra"]["reaction"] == "👍"
    assert m["extra"]["reaction_to"] == (
        "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    )


INBOUND_CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "text": _check_text,
    "image": _check_image,
    "document": _check_document,
    "audio": _check_audio,
    "sticker": _check_sticker,
    "location": _check_location,
    "contacts": _check_contacts,
    "interactive_button_reply": _check_button_reply,
    "interactive_list_reply": _check_list_reply,
    "button": _check_quick_reply_button,
    "reaction": _check_reaction,
}


@pytest.mark.parametrize("name", sorted(INBOUND_CASES))
async def test_each_inbound_message_type_is_normalised_and_stored(wa_client, name):
    resp = await post(wa_client, name)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["stored"] == 1
    message = await only_message(wa_client)
    notified = fixture(name)["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["provider_id"] == notified["id"]
    assert message["channel"] == "whatsapp"
    assert message["direction"] == "in"
    assert message["created_at"] == datetime.fromtimestamp(int(notified["timestamp"]), UTC)
    INBOUND_CASES[name](message)
    store = hub(wa_client).store
    assert store is not None
    (contact,) = await store.contacts.find().to_list()
    assert contact["phones"] == [SHEENA]
    assert contact["name"] == "Sheena Nelson"
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["channel"] == "whatsapp"
    assert conversation["inbox"] == "wa"


async def test_provider_retry_is_acknowledged_and_stored_once(wa_client):
    first = await post(wa_client, "text")
    assert (await first.json())["stored"] == 1
    before = await counts(wa_client)
    retry = await post(wa_client, "text")
    assert retry.status == 200
    answer = await retry.json()
    assert answer["stored"] == 0
    assert answer["duplicates"] == 1
    assert await counts(wa_client) == before


async def test_batch_of_two_entries_stores_every_message_in_one_ingest_call(wa_client):
    wa = adapter(wa_client)
    calls: list[int] = []
    ingest = wa.ctx.ingest

    async def counting_ingest(events: Any) -> list[object]:
        calls.append(len(events))
        return await ingest(events)

    wa.ctx = replaced(wa.ctx, ingest=counting_ingest)
    resp = await post(wa_client, "batch_two_entries")
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert calls == [3]
    assert answer["stored"] == 3
    assert answer["statuses"] == 1
    store = hub(wa_client).store
    assert store is not None
    texts = sorted(m["text"] for m in await store.messages.find().to_list())
    assert texts == [
        "Can I get more info about this?",
        "Does it come in another color?",
        "Taj Mahal",
    ]
    contacts = {c["name"]: c["phones"] for c in await store.contacts.find().to_list()}
    assert contacts == {"Sheena Nelson": [SHEENA], "Barbara Johnson": ["+14125550829"]}
    assert await store.conversations.count_documents({}) == 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unsupported", "a message type Cloud API does not deliver"),
        ("message_template_status_update", "change field not handled"),
        ("reaction_removed", "reaction removed"),
    ],
)
async def test_known_unhandled_event_is_200_logged_as_ignored_and_writes_nothing(
    wa_client, caplog, name, reason
):
    caplog.set_level(logging.INFO, logger="hub.channels")
    resp = await post(wa_client, name)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ignored"] == 1
    assert await counts(wa_client) == NOTHING
    (record,) = [r for r in caplog.records if r.getMessage() == "whatsapp event ignored"]
    assert record.__dict__["reason"].startswith(reason)


async def test_unknown_message_type_is_acknowledged_and_ignored_not_refused(wa_client, caplog):
    caplog.set_level(logging.INFO, logger="hub.channels")
    data = fixture("text")
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    message["type"] = "poll_vote"
    message["poll_vote"] = message.pop("text")
    resp = await post(wa_client, json.dumps(data).encode())
    assert resp.status == 200
    assert await counts(wa_client) == NOTHING
    (record,) = [r for r in caplog.records if r.getMessage() == "whatsapp event ignored"]
    assert record.__dict__["reason"] == "unknown message type"


async def test_change_for_another_phone_number_id_is_ignored(wa_client):
    data = fixture("text")
    data["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999999999999"
    resp = await post(wa_client, json.dumps(data).encode())
    assert resp.status == 200
    assert (await resp.json())["ignored"] == 1
    assert await counts(wa_client) == NOTHING


def test_every_message_type_status_and_field_in_the_fixtures_is_declared():
    """Adding a fixture with an event nobody declared fails here."""
    for name in all_fixtures():
        for entry in fixture(name)["entry"]:
            for change in entry["changes"]:
                if change["field"] not in CHANGE_FIELDS:
                    continue
                for message in change["value"].get("messages", []):
                    kind = message["type"]
                    assert kind in MESSAGE_HANDLERS or kind in IGNORED_MESSAGE_TYPES, (name, kind)
                    if kind == "interactive":
                        assert message["interactive"]["type"] in INTERACTIVE_REPLIES, name
                for status in change["value"].get("statuses", []):
                    assert status["status"] in STATUS_MAP, (name, status["status"])


def test_the_map_from_message_type_to_handler_is_explicit_and_covers_metas_types():
    assert set(MESSAGE_HANDLERS) == {
        "text",
        "image",
        "document",
        "audio",
        "video",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
    }
    documented = {*MESSAGE_HANDLERS, "unsupported", "system", "order", "request_welcome"}
    assert documented <= set(MESSAGE_HANDLERS) | set(IGNORED_MESSAGE_TYPES)
    assert not set(MESSAGE_HANDLERS) & set(IGNORED_MESSAGE_TYPES)
    assert set(STATUS_MAP) >= {"sent", "delivered", "read", "failed"}


def test_the_supported_events_are_read_from_the_handler_map():
    assert tuple(MESSAGE_HANDLERS) == SUPPORTED_EVENTS
    assert all(callable(handler) for handler in MESSAGE_HANDLERS.values())


# -- statuses -----------------------------------------------------------------------------


async def _sent_message(client: Client, provider_id: str | None = None) -> dict[str, Any]:
    """An outbound template to Sheena, sent through the fake; its provider id is
    then set to `provider_id` (the id a verbatim status fixture names)."""
    conv_id = await open_conversation(client)
    doc = await hub(client).reply(conv_id, text=None, sender=AGENT, template=TEMPLATE)
    sent = await message_when(client, doc["_id"], SETTLED)
    assert sent["status"] == "sent", sent
    if provider_id is not None:
        store = hub(client).store
        assert store is not None
        await store.messages.update_one(
            {"_id": doc["_id"]},
            {"$set": {"provider_id": provider_id, "provider_key": provider_key("wa", provider_id)}},
        )
    return sent


def _status_id(name: str) -> str:
    status_id: str = fixture(name)["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    return status_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [("status_delivered", "delivered"), ("status_read", "read")],
)
async def test_status_notification_moves_the_outbound_message(wa_client, name, expected):
    sent = await _sent_message(wa_client, _status_id(name))
    resp = await post(wa_client, name)
    assert resp.status == 200
    assert (await resp.json())["moved"] == 1
    moved = await message_when(wa_client, sent["_id"], {expected})
    assert moved["status"] == expected


async def test_sent_status_after_delivered_does_not_move_the_message_back(wa_client):
    sent = await _sent_message(wa_client, _status_id("status_sent"))
    store = hub(wa_client).store
    assert store is not None
    await store.messages.update_one({"_id": sent["_id"]}, {"$set": {"status": "delivered"}})
    resp = await post(wa_client, "status_sent")
    assert resp.status == 200
    assert (await resp.json())["moved"] == 0
    assert (await store.messages.find_one({"_id": sent["_id"]}))["status"] == "delivered"


async def test_failed_status_fails_the_message_and_keeps_metas_code_and_reason(wa_client):
    sent = await _sent_message(wa_client, _status_id("status_failed"))
    resp = await post(wa_client, "status_failed")
    assert resp.status == 200
    failed = await message_when(wa_client, sent["_id"], {"failed"})
    assert failed["error"] == (
        "This message was not delivered to maintain healthy ecosystem engagement.: "
        "In order to maintain a healthy ecosystem engagement, the message failed to be "
        "delivered. (code 131049)"
    )


async def test_status_of_a_message_sent_through_the_fake_moves_it(wa_client, graph):
    sent = await _sent_message(wa_client)
    (accepted,) = graph.sent
    assert sent["provider_id"] == accepted["id"]
    resp = await post(wa_client, graph.status_notification(accepted["id"], "read", SHEENA))
    assert resp.status == 200
    assert (await message_when(wa_client, sent["_id"], {"read"}))["status"] == "read"


# -- outbound -----------------------------------------------------------------------------


async def test_reply_inside_the_window_is_sent_as_graph_text_with_the_bearer_token(
    wa_client, graph
):
    conv_id = await open_conversation(wa_client)
    doc = await hub(wa_client).reply(conv_id, text="It comes in blue too.", sender=AGENT)
    sent = await message_when(wa_client, doc["_id"], SETTLED)
    assert sent["status"] == "sent", sent
    (request,) = graph.requests
    assert request["path"] == f"/{graph.phone_number_id}/messages"
    assert request["status"] == 200
    assert request["body"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505551234",
        "type": "text",
        "text": {"preview_url": False, "body": "It comes in blue too."},
    }
    assert sent["provider_id"] == graph.sent[0]["id"]
    assert sent["provider_id"].startswith("wamid.")


async def test_free_text_reply_outside_the_window_is_refused_before_it_is_queued(wa_client, graph):
    resp = await post(wa_client, "text")  # Sheena wrote in 2025: the window is long closed
    assert resp.status == 200
    conv_id = (await only_message(wa_client))["conversation_id"]
    with pytest.raises(OutboxError) as refused:
        await hub(wa_client).reply(conv_id, text="Hello again", sender=AGENT)
    assert str(refused.value) == WINDOW_REASON
    assert (await counts(wa_client))["outbox"] == 0
    assert graph.requests == []


async def test_template_is_sent_outside_the_window(wa_client, graph):
    resp = await post(wa_client, "text")
    assert resp.status == 200
    conv_id = (await only_message(wa_client))["conversation_id"]
    template = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
    }
    doc = await hub(wa_client).reply(conv_id, text=None, sender=AGENT, template=template)
    sent = await message_when(wa_client, doc["_id"], SETTLED)
    assert sent["status"] == "sent", sent
    (request,) = graph.requests
    assert request["body"]["type"] == "template"
    assert request["body"]["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
    }


async def test_send_refuses_free_text_outside_the_window_without_calling_graph(wa_client, graph):
    wa = adapter(wa_client)
    for last_inbound_at in (None, datetime.now(UTC) - timedelta(hours=25)):
        with pytest.raises(PermanentSendError) as refused:
            await wa.send(outbound(last_inbound_at=last_inbound_at))
        assert refused.value.reason == WINDOW_REASON
    assert graph.requests == []


def test_reply_refusal_names_the_template_requirement_only_outside_24_hours():
    wa = WhatsAppChannel.__new__(WhatsAppChannel)
    now = datetime.now(UTC)
    assert wa.reply_refusal(None, False) == WINDOW_REASON
    assert wa.reply_refusal(now - timedelta(hours=24, seconds=1), False) == WINDOW_REASON
    assert wa.reply_refusal(now - timedelta(hours=23), False) is None
    # The store hands back naive UTC datetimes.
    assert wa.reply_refusal((now - timedelta(hours=1)).replace(tzinfo=None), False) is None
    assert wa.reply_refusal(None, True) is None
    assert wa.reply_refusal(now - timedelta(days=30), True) is None


async def test_media_is_sent_by_link_or_media_id_with_the_text_as_caption(wa_client, graph):
    wa = adapter(wa_client)
    await wa.send(
        outbound(
            text="Here is the photo",
            attachments=(Attachment(url="https://example.com/a.jpg", content_type="image/jpeg"),),
        )
    )
    await wa.send(
        outbound(
            text=None,
            attachments=(
                Attachment(url="whatsapp-media:622684793477189", content_type="application/pdf"),
            ),
        )
    )
    first, second = (r["body"] for r in graph.requests)
    assert first["type"] == "image"
    assert first["image"] == {"link": "https://example.com/a.jpg", "caption": "Here is the photo"}
    assert second["type"] == "document"
    assert second["document"]["id"] == "622684793477189"
    assert "link" not in second["document"]


async def test_audio_takes_no_caption_so_its_text_goes_first_as_a_text_message(wa_client, graph):
    wa = adapter(wa_client)
    result = await wa.send(
        outbound(
            text="Listen to this",
            attachments=(Attachment(url="https://example.com/a.mp3", content_type="audio/mpeg"),),
        )
    )
    text, audio = (r["body"] for r in graph.requests)
    assert text["text"]["body"] == "Listen to this"
    assert audio == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505551234",
        "type": "audio",
        "audio": {"link": "https://example.com/a.mp3"},
    }
    assert result.provider_id == graph.sent[-1]["id"]


async def test_up_to_three_buttons_are_reply_buttons_and_more_are_a_list(wa_client, graph):
    wa = adapter(wa_client)
    three = tuple(ButtonReply(payload=f"p{i}", title=f"Choice {i}") for i in range(3))
    five = tuple(ButtonReply(payload=f"p{i}", title=f"Choice {i}") for i in range(5))
    await wa.send(outbound(text="Pick one", buttons=three))
    await wa.send(outbound(text="Pick one", buttons=five))
    buttons, listed = (r["body"]["interactive"] for r in graph.requests)
    assert all(r["status"] == 200 for r in graph.requests)
    assert buttons["type"] == "button"
    assert buttons["action"]["buttons"][0] == {
        "type": "reply",
        "reply": {"id": "p0", "title": "Choice 0"},
    }
    assert listed["type"] == "list"
    assert [row["id"] for row in listed["action"]["sections"][0]["rows"]] == [
        f"p{i}" for i in range(5)
    ]


async def test_template_without_a_language_is_a_permanent_error_not_a_request(wa_client, graph):
    with pytest.raises(PermanentSendError) as failed:
        await adapter(wa_client).send(outbound(template={"name": "hello_world"}))
    assert failed.value.code == "bad_template"
    assert "language" in failed.value.reason
    assert graph.requests == []


async def test_rate_limit_is_the_configured_messages_per_second_with_burst_one(wa_settings):
    app = build_app(wa_settings(rate=250))
    limit = app[HUB].adapters["wa"].rate_limit()
    assert (limit.per_second, limit.burst) == (250, 1)
    default = WhatsAppSettings(
        phone_number_id="1", access_token="t", app_secret="s" * 8, verify_token="v" * 8
    )
    assert default.rate == 80 and default.api_base == "https://graph.facebook.com/v21.0"


async def test_dispatcher_pacing_keeps_under_the_fakes_throughput_limit(wa_settings, graph):
    graph.rate = 11
    app = build_app(wa_settings(rate=10))
    async with TestClient(TestServer(app)) as client:
        conv_id = await open_conversation(client)
        store = hub(client).store
        assert store is not None
        docs = [
            await enqueue(
                store, hub(client).events, conversation_id=conv_id, text=f"n{i}", sender=AGENT
            )
            for i in range(15)
        ]
        hub(client).dispatcher.wake()
        for doc in docs:
            assert (await message_when(client, doc["_id"], SETTLED))["status"] == "sent"
    assert graph.rejected_429 == 0
    assert len(graph.sent) == 15


# -- error classification -------------------------------------------------------------------


async def test_throughput_error_130429_is_transient_not_sent_and_retried_after_a_pause(
    wa_client, graph
):
    graph.fail_next(
        130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."
    )
    with pytest.raises(TransientSendError) as failed:
        await adapter(wa_client).send(outbound())
    assert failed.value.code == "130429"
    assert failed.value.maybe_sent is False
    assert failed.value.retry_after == 1.0
    assert "Rate limit hit" in failed.value.reason


async def test_going_faster_than_the_fakes_limit_gets_graphs_130429(wa_client, graph):
    graph.rate = 2
    wa = adapter(wa_client)
    await wa.send(outbound())
    await wa.send(outbound())
    with pytest.raises(TransientSendError) as failed:
        await wa.send(outbound())
    assert failed.value.code == "130429"
    assert graph.rejected_429 == 1
    assert [r["status"] for r in graph.requests] == [200, 200, 400]


@pytest.mark.parametrize(
    ("status", "code", "headers", "retry_after", "maybe_sent"),
    [
        (400, 131056, {}, 6.0, False),  # pair rate
        (429, 4, {"Retry-After": "7"}, 7.0, False),
        (503, 2, {}, None, False),  # Graph says: temporarily down, not taken
        (400, 1, {}, None, False),
        (500, 131000, {}, None, False),
    ],
    ids=["131056-pair-rate", "429-retry-after", "code-2", "code-1", "131000"],
)
async def test_graph_rate_and_server_errors_are_transient(
    wa_client, graph, status, code, headers, retry_after, maybe_sent
):
    graph.fail_next(code, f"(#{code}) error", status=status, headers=headers)
    with pytest.raises(TransientSendError) as failed:
        await adapter(wa_client).send(outbound())
    assert failed.value.code == str(code)
    assert failed.value.retry_after == retry_after
    assert failed.value.maybe_sent is maybe_sent


async def test_5xx_without_a_graph_body_is_transient_and_may_have_been_sent(wa_client, graph):
    graph.fail_next(0, status=502, body={"html": "Bad Gateway"})
    with pytest.raises(TransientSendError) as failed:
        await adapter(wa_client).send(outbound())
    assert failed.value.code == "502"
    assert failed.value.maybe_sent is True


async def test_unreachable_graph_is_transient_and_certainly_not_sent(wa_settings, graph):
    await graph.stop()
    async with TestClient(TestServer(build_app(wa_settings()))) as client:
        with pytest.raises(TransientSendError) as failed:
            await adapter(client).send(outbound())
    assert failed.value.maybe_sent is False


async def test_re_engagement_error_131047_is_permanent_and_names_the_template_rule(
    wa_client, graph
):
    graph.fail_next(
        131047,
        "(#131047) Re-engagement message",
        details="Message failed to send because more than 24 hours have passed since the "
        "customer last replied to this number.",
    )
    with pytest.raises(PermanentSendError) as failed:
        await adapter(wa_client).send(outbound())
    assert failed.value.code == "131047"
    assert failed.value.reason.startswith(WINDOW_REASON)
    assert failed.value.opt_out is False


async def test_marketing_opt_out_131050_is_permanent_and_opts_the_contact_out(wa_client, graph):
    conv_id = await open_conversation(wa_client)
    graph.fail_next(
        131050,
        "(#131050) Unable to deliver the message. This recipient has chosen to stop "
        "receiving marketing messages on WhatsApp from your business.",
    )
    doc = await hub(wa_client).reply(conv_id, text="Big sale!", sender=AGENT)
    failed = await message_when(wa_client, doc["_id"], SETTLED)
    assert failed["status"] == "failed"
    assert "stopped marketing messages" in failed["error"]
    assert failed["error"].endswith("(code 131050)")
    store = hub(wa_client).store
    assert store is not None
    (contact,) = await store.contacts.find().to_list()
    assert contact["opted_out"] == {"whatsapp": True}


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (131026, "(#131026) Message Undeliverable."),
        (132001, "(#132001) Template name does not exist in the translation"),
        (100, "(#100) Invalid parameter"),
    ],
)
async def test_other_graph_4xx_errors_are_permanent_with_code_and_message(
    wa_client, graph, code, message
):
    graph.fail_next(code, message)
    with pytest.raises(PermanentSendError) as failed:
        await adapter(wa_client).send(outbound())
    assert failed.value.code == str(code)
    assert failed.value.reason == message
    assert failed.value.opt_out is False


async def test_a_wrong_access_token_is_a_permanent_error(wa_settings, graph):
    async with TestClient(TestServer(build_app(wa_settings(access_token="EAAG-old")))) as client:
        with pytest.raises(PermanentSendError) as failed:
            await adapter(client).send(outbound())
    assert failed.value.code == "190"
    assert [r["status"] for r in graph.requests] == [401]


async def test_transient_error_is_retried_by_the_dispatcher_until_sent(wa_client, graph):
    conv_id = await open_conversation(wa_client)
    graph.fail_next(130429, "(#130429) Rate limit hit")
    graph.fail_next(2, "(#2) Service temporarily unavailable", status=503)
    doc = await hub(wa_client).reply(conv_id, text="Thanks!", sender=AGENT)
    sent = await message_when(wa_client, doc["_id"], {"sent", "failed"})
    assert sent["status"] == "sent"
    assert [r["status"] for r in graph.requests] == [400, 503, 200]


# -- configuration and start-up ------------------------------------------------------------


@pytest.mark.parametrize("missing", ["app_secret", "verify_token"])
def test_config_without_app_secret_or_verify_token_is_an_error(tmp_path, missing):
    entry = {
        "id": "wa",
        "channel": "whatsapp",
        "phone_number_id": "106540352242922",
        "access_token": "EAAG-token",
        "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
    }
    del entry[missing]
    with pytest.raises(ConfigError) as error:
        parse_settings({"inboxes": [entry]}, source="hub.toml", base_dir=tmp_path)
    assert missing in str(error.value)


async def test_adapter_refuses_to_start_without_its_app_secret():
    settings = WhatsAppSettings.model_construct(
        phone_number_id="1",
        access_token="token",
        app_secret=" ",
        verify_token=VERIFY_TOKEN,
        api_base="http://127.0.0.1:9",
        rate=80.0,
        max_body_bytes=1024 * 1024,
    )
    wa = WhatsAppChannel("wa", settings, ctx=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wa: app_secret is required"):
        await wa.start()


async def test_concurrent_retries_of_one_notification_store_it_once(wa_client):
    answers = await asyncio.gather(*(post(wa_client, "image") for _ in range(5)))
    assert all(a.status == 200 for a in answers)
    assert sum([(await a.json())["stored"] for a in answers]) == 1
    assert (await counts(wa_client))["messages"] == 1
