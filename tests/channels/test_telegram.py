"""The Telegram channel (issue 3, point 3): updates in, Bot API calls out.

Every test runs a real hub (embedded store, dispatcher, event bus) whose Telegram
inbox talks to `FakeTelegram` (channels/telegram/simulator.py), a Bot API server
on 127.0.0.1 that enforces Telegram's limits. Updates are the files under tests/fixtures/telegram/.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import Update
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.base import PermanentSendError, TransientSendError
from channels.telegram import (
    IGNORED_UPDATES,
    MESSAGE_CONTENT,
    SECRET_HEADER,
    UPDATE_HANDLERS,
    TelegramChannel,
    TelegramSettings,
    update_kind,
)
from channels.telegram.simulator import BLOCKED, FakeTelegram
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import Attachment, ButtonReply, OutboundMessage
from hub.services.runtime import Hub
from tests.conftest import hub_of
from tests.support.context import detached_context
from tests.support.waiting import eventually

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "telegram"
TOKEN = "123456789:AAE-fakeTokenForTheTelegramTests_0"
SECRET_TOKEN = "tg-webhook-secret_42"
URL = "/webhooks/telegram/tg"
AGENT = {"type": "agent", "id": "agent-1"}
SETTLED = {"sent", "delivered", "read", "failed", "unknown"}

Client = TestClient[web.Request, web.Application]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    return data


def all_fixtures() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


async def post_update(
    client: Client, update: dict[str, Any] | str | bytes, *, secret: str | None = SECRET_TOKEN
) -> Any:
    if isinstance(update, str):
        update = fixture(update)
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    return await client.post(URL, data=body, headers=headers)


def hub(client: Client) -> Hub:
    return hub_of(client)


def adapter(client: Client) -> TelegramChannel:
    found = hub(client).adapters["tg"]
    assert isinstance(found, TelegramChannel)
    return found


async def counts(client: Client) -> dict[str, int]:
    store = hub(client).store
    assert store is not None
    return {
        name: await getattr(store, name).count_documents({})
        for name in ("contacts", "identities", "conversations", "messages", "outbox", "events")
    }


NOTHING = dict.fromkeys(
    ("contacts", "identities", "conversations", "messages", "outbox", "events"), 0
)


async def only_message(client: Client) -> dict[str, Any]:
    store = hub(client).store
    assert store is not None
    (message,) = await store.messages.find().to_list()
    return dict(message)


async def message_when(client: Client, message_id: str, statuses: set[str]) -> dict[str, Any]:
    store = hub(client).store
    assert store is not None
    found: dict[str, Any] | None = await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and m["status"] in statuses,
    )
    assert found is not None
    return found


async def open_conversation(client: Client, update: str = "message_text") -> str:
    resp = await post_update(client, update)
    assert resp.status == 200, await resp.text()
    return str((await only_message(client))["conversation_id"])


# -- the hub under test -----------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram(token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def tg_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, telegram: FakeTelegram
) -> Callable[..., Settings]:
    def make(server: dict[str, Any] | None = None, **inbox: Any) -> Settings:
        entry = {
            "id": "tg",
            "channel": "telegram",
            "token": TOKEN,
            "secret_token": SECRET_TOKEN,
            "api_base": telegram.url,
            **inbox,
        }
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [entry],
        }
        if server:
            data["server"] = server
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def tg_client(tg_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(tg_settings()))) as client:
        yield client


# -- inbound: each update kind is normalised and stored -------------------------------------


async def test_text_message_is_stored_from_the_chat_identity_with_the_users_name(tg_client):
    resp = await post_update(tg_client, "message_text")

    assert resp.status == 200
    message = await only_message(tg_client)
    assert message["kind"] == "text"
    assert message["text"] == "hello there"
    assert message["direction"] == "in"
    assert message["channel"] == "telegram"
    assert message["provider_id"] == "218485655:6557"
    assert message["extra"]["username"] == "WaffleLapkin"
    store = hub(tg_client).store
    (contact,) = await store.contacts.find().to_list()
    assert contact["name"] == "Waffle"
    assert contact["telegram"] == "218485655"
    assert await store.identities.find_one({"_id": "telegram:218485655"}) is not None
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["channel"] == "telegram"
    assert conversation["inbox"] == "tg"


async def test_photo_is_stored_as_media_with_its_largest_size_as_a_file_reference(tg_client):
    resp = await post_update(tg_client, "message_photo")

    assert resp.status == 200
    message = await only_message(tg_client)
    assert message["kind"] == "media"
    (attachment,) = message["attachments"]
    # The 962x719 size, by file id: a download URL would carry the bot token.
    assert attachment["ref"] == (
        "tg://file/AgADAgAD36sxG-PX0UvQSXIn9rccdw-ACA4ABAEAAwIAA3kAAyTcBAABFgQ"
    )
    assert attachment["content_type"] == "image/jpeg"
    assert attachment["size"] == 75245
    (contact,) = await hub(tg_client).store.contacts.find().to_list()
    assert contact["name"] == "Андрей Власов"


async def test_a_caption_becomes_the_text_of_a_media_message(tg_client):
    update = fixture("message_photo")
    update["message"]["caption"] = "is this the broken part?"

    assert (await post_update(tg_client, update)).status == 200

    message = await only_message(tg_client)
    assert message["kind"] == "media"
    assert message["text"] == "is this the broken part?"


@pytest.mark.parametrize(
    ("name", "content_type", "file_name", "size"),
    [
        ("message_document", "application/pdf", "Testfile.pdf", 536392),
        ("message_voice", "audio/ogg", None, 23000),
        ("message_audio", "audio/mpeg", "Test music file", 3897500),
    ],
)
async def test_files_are_stored_as_media_with_type_name_and_size(
    tg_client, name, content_type, file_name, size
):
    assert (await post_update(tg_client, name)).status == 200

    message = await only_message(tg_client)
    assert message["kind"] == "media"
    assert message["provider_id"] == "1111111:1365"
    (attachment,) = message["attachments"]
    assert attachment["ref"] == "tg://file/AwADBAADbXXXXXXXXXXXGBdhD2l6_XX"
    assert attachment["content_type"] == content_type
    assert attachment["name"] == file_name
    assert attachment["size"] == size


async def test_location_is_stored_with_its_coordinates(tg_client):
    assert (await post_update(tg_client, "message_location")).status == 200

    message = await only_message(tg_client)
    assert message["kind"] == "text"
    assert message["location"]["latitude"] == pytest.approx(52.520008)
    assert message["location"]["longitude"] == pytest.approx(13.404954)


async def test_shared_contact_is_stored_with_its_name_and_phone(tg_client):
    assert (await post_update(tg_client, "message_contact")).status == 200

    message = await only_message(tg_client)
    assert message["contact"]["name"] == "Grace Hopper"
    assert message["contact"]["phones"] == ["+14155550123"]


async def test_users_own_number_shared_without_plus_is_stored_in_e164(tg_client):
    update = fixture("message_contact")
    update["message"]["contact"].update(phone_number="4915112345678", user_id=1111111)

    assert (await post_update(tg_client, update)).status == 200

    assert (await only_message(tg_client))["contact"]["phones"] == ["+4915112345678"]


async def test_edited_message_is_stored_as_a_new_message_marked_as_an_edit(tg_client):
    original = fixture("edited_message")
    original["message"] = original.pop("edited_message")
    original["message"].pop("edit_date")
    original["message"]["text"] = "First text"
    assert (await post_update(tg_client, original)).status == 200

    assert (await post_update(tg_client, "edited_message")).status == 200

    store = hub(tg_client).store
    messages = await store.messages.find().sort("created_at", 1).to_list()
    assert [m["text"] for m in messages] == ["First text", "Edited text"]
    edit = messages[1]
    assert edit["provider_id"] == "1111111:1365:edit:1441646600"
    assert edit["extra"]["edited"] == "true"
    assert edit["extra"]["edit_of"] == "1111111:1365"
    assert len({m["conversation_id"] for m in messages}) == 1


async def test_button_press_is_stored_with_payload_and_label_and_its_spinner_stopped(
    tg_client, telegram
):
    assert (await post_update(tg_client, "callback_query")).status == 200

    message = await only_message(tg_client)
    assert message["kind"] == "text"
    assert message["text"] == "No, I need help"
    assert message["button"] == {"payload": "csat:no", "title": "No, I need help"}
    assert message["provider_id"] == "1111111:callback:4382bfdwdsb323b2e1"
    (answer,) = telegram.calls("answerCallbackQuery")
    assert answer["params"]["callback_query_id"] == "4382bfdwdsb323b2e1"
    assert answer["status"] == 200


async def test_button_under_an_inline_mode_message_is_stored_in_the_users_own_chat(
    tg_client, telegram
):
    assert (await post_update(tg_client, "callback_query_inline")).status == 200

    message = await only_message(tg_client)
    assert message["button"]["payload"] == "Data from button callback"
    assert message["text"] == "Data from button callback"
    (conversation,) = await hub(tg_client).store.conversations.find().to_list()
    assert conversation["identity"] == "telegram:1111111"
    assert len(telegram.calls("answerCallbackQuery")) == 1


async def test_a_failed_spinner_answer_still_stores_the_press_and_answers_200(tg_client, telegram):
    telegram.fail_next(400, "Bad Request: query is too old", method="answerCallbackQuery")

    resp = await post_update(tg_client, "callback_query")

    assert resp.status == 200
    assert (await only_message(tg_client))["button"]["payload"] == "csat:no"


async def test_user_blocking_the_bot_opts_the_contact_out_and_unblocking_opts_back_in(
    tg_client,
):
    store = hub(tg_client).store

    assert (await post_update(tg_client, "my_chat_member_kicked")).status == 200
    (contact,) = await store.contacts.find().to_list()
    assert contact["opted_out"]["telegram"] is True
    assert contact["telegram"] == "5342492667"

    assert (await post_update(tg_client, "my_chat_member_member")).status == 200
    (contact,) = await store.contacts.find().to_list()
    assert contact["opted_out"]["telegram"] is False
    assert await store.messages.count_documents({}) == 0


# -- provider retries -------------------------------------------------------------------------


async def test_a_retried_update_is_acknowledged_and_stored_once(tg_client):
    first = await post_update(tg_client, "message_text")
    before = await counts(tg_client)

    retry = await post_update(tg_client, "message_text")

    assert (first.status, retry.status) == (200, 200)
    assert await counts(tg_client) == before
    assert before["messages"] == 1


async def test_a_retried_button_press_is_stored_once_and_answered_once(tg_client, telegram):
    await post_update(tg_client, "callback_query")
    retry = await post_update(tg_client, "callback_query")

    assert retry.status == 200
    assert (await counts(tg_client))["messages"] == 1
    assert len(telegram.calls("answerCallbackQuery")) == 1


# -- bad input: 403, 400, ignored -----------------------------------------------------------


@pytest.mark.parametrize(
    "secret", [None, "", "wrong-secret", SECRET_TOKEN + "x", SECRET_TOKEN[:-1]]
)
async def test_a_missing_or_wrong_secret_token_is_403_and_writes_nothing(tg_client, secret):
    resp = await post_update(tg_client, "message_text", secret=secret)

    assert resp.status == 403
    assert await counts(tg_client) == NOTHING


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"message": {"message_id": 1}}',
        b'{"update_id": "many"}',
        b'{"update_id": 7}',
        b'{"update_id": 7, "message": {"message_id": 1, "date": 1, "text": "secret words"}}',
        json.dumps(
            {**fixture("message_text"), "edited_message": fixture("message_text")["message"]}
        ).encode(),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "json-array",
        "no-update-id",
        "update-id-not-a-number",
        "no-kind",
        "message-without-chat",
        "two-kinds",
    ],
)
async def test_a_body_that_is_not_a_telegram_update_is_400_and_writes_nothing(tg_client, body):
    resp = await post_update(tg_client, body)

    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "bad_request"
    assert "secret words" not in error["message"]  # customer text is not echoed
    assert await counts(tg_client) == NOTHING


@pytest.mark.parametrize("name", ["channel_post", "chosen_inline_result"])
async def test_a_known_update_we_do_not_handle_is_200_logged_as_ignored_and_writes_nothing(
    tg_client, caplog, name
):
    caplog.set_level(logging.INFO, logger="hub.channels")

    resp = await post_update(tg_client, name)

    assert resp.status == 200
    assert await counts(tg_client) == NOTHING
    (record,) = [
        r
        for r in caplog.records
        if r.getMessage() == "event ignored" and getattr(r, "channel", None) == "telegram"
    ]
    assert record.event == name  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO


async def test_message_content_we_do_not_take_is_200_logged_as_ignored_and_writes_nothing(
    tg_client, caplog
):
    caplog.set_level(logging.INFO, logger="hub.channels")
    update = fixture("message_text")
    message = update["message"]
    del message["text"], message["link_preview_options"]
    message["dice"] = {"emoji": "🎲", "value": 2}

    resp = await post_update(tg_client, update)

    assert resp.status == 200
    assert await counts(tg_client) == NOTHING
    kinds = [getattr(r, "event", None) for r in caplog.records]
    assert "message:dice" in kinds


async def test_an_update_of_a_kind_nobody_declared_is_acknowledged_and_logged_loudly(
    tg_client, caplog
):
    caplog.set_level(logging.INFO, logger="hub.channels")

    resp = await post_update(tg_client, {"update_id": 99, "brand_new_kind": {"id": 1}})

    assert resp.status == 200
    assert await counts(tg_client) == NOTHING
    (record,) = [r for r in caplog.records if getattr(r, "kind", None) == "brand_new_kind"]
    assert record.levelno == logging.WARNING


def test_every_update_kind_aiogram_knows_is_declared_handled_or_ignored():
    kinds = set(Update.model_fields) - {"update_id"}
    handled, ignored = set(UPDATE_HANDLERS), set(IGNORED_UPDATES)

    assert handled.isdisjoint(ignored)
    assert kinds - handled - ignored == set(), "declare these update kinds"
    assert (handled | ignored) - kinds == set(), "these kinds no longer exist"
    assert handled == {"message", "edited_message", "callback_query", "my_chat_member"}


@pytest.mark.parametrize("name", all_fixtures())
def test_every_fixture_is_an_update_of_a_declared_kind(name):
    update = Update.model_validate(fixture(name))
    kind = update_kind(update)
    assert kind in UPDATE_HANDLERS or kind in IGNORED_UPDATES
    if update.message is not None:
        assert update.message.content_type in MESSAGE_CONTENT


# -- configuration ---------------------------------------------------------------------------


def inbox_config(tmp_path: Path, **fields: Any) -> Settings:
    entry = {"id": "tg", "channel": "telegram", "token": TOKEN, **fields}
    return parse_settings({"inboxes": [entry]}, source="hub.toml", base_dir=tmp_path)


def test_a_missing_secret_token_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as error:
        inbox_config(tmp_path)

    assert "inboxes[0].secret_token: required key is missing" in str(error.value)


@pytest.mark.parametrize("secret", ["", "has space", "x" * 257, "ünïcode", "a/b"])
def test_a_secret_token_outside_telegrams_alphabet_is_refused(tmp_path, secret):
    with pytest.raises(ConfigError) as error:
        inbox_config(tmp_path, secret_token=secret)

    assert "inboxes[0].secret_token" in str(error.value)
    assert secret not in str(error.value) or secret == ""


def test_a_malformed_bot_token_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        inbox_config(tmp_path, token="not-a-token-s3cr3t", secret_token=SECRET_TOKEN)

    assert "inboxes[0].token" in str(error.value)
    assert "s3cr3t" not in str(error.value)


def test_telegram_secrets_are_redacted_from_logs(tmp_path):
    settings = inbox_config(tmp_path, secret_token=SECRET_TOKEN)
    assert {TOKEN, SECRET_TOKEN} <= settings.secrets


async def test_the_adapter_refuses_to_start_without_a_secret_token():
    settings = TelegramSettings.model_construct(token=TOKEN, secret_token="")
    ctx = detached_context()
    channel = TelegramChannel("tg", settings, ctx)

    with pytest.raises(ValueError, match="tg: secret_token is required"):
        await channel.start()
    assert channel.bot is None


async def test_start_registers_the_webhook_with_our_url_secret_and_handled_kinds(
    tg_settings, telegram
):
    settings = tg_settings(server={"public_url": "https://hub.example.com/"}, register_webhook=True)
    async with TestClient(TestServer(build_app(settings))):
        (call,) = telegram.calls("setWebhook")

    assert call["token"] == TOKEN
    assert call["params"]["url"] == "https://hub.example.com/webhooks/telegram/tg"
    assert call["params"]["secret_token"] == SECRET_TOKEN
    assert sorted(call["params"]["allowed_updates"]) == sorted(UPDATE_HANDLERS)


async def test_the_webhook_is_left_alone_unless_asked(tg_client, telegram):
    assert telegram.calls("setWebhook") == []


async def test_a_failed_webhook_registration_is_logged_and_the_hub_still_starts(
    tg_settings, telegram, caplog
):
    telegram.fail_next(400, "Bad Request: bad webhook: HTTPS url must be provided")
    settings = tg_settings(register_webhook=True)

    async with TestClient(TestServer(build_app(settings))) as client:
        assert (await post_update(client, "message_text")).status == 200

    assert any(r.getMessage() == "telegram setWebhook failed" for r in caplog.records)


async def test_the_dispatcher_paces_the_bot_overall_and_each_chat(tg_settings):
    settings = tg_settings(rate=25, per_chat_rate=0.5)
    rate = TelegramChannel("tg", settings.inboxes[0].settings, None).rate_limit()  # type: ignore[arg-type]

    assert (rate.per_second, rate.burst, rate.per_recipient) == (25, 1, 0.5)
    assert TelegramSettings(token=TOKEN, secret_token="s").rate == 30
    assert TelegramSettings(token=TOKEN, secret_token="s").per_chat_rate == 1.0


# -- outbound ---------------------------------------------------------------------------------


async def test_a_reply_is_sent_with_sendMessage_to_the_chat_and_recorded_as_sent(
    tg_client, telegram
):
    conversation_id = await open_conversation(tg_client)

    doc = await hub(tg_client).reply(conversation_id, text="<b>not html</b> & more", sender=AGENT)
    sent = await message_when(tg_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent", sent["error"]
    (call,) = telegram.calls("sendMessage")
    assert call["token"] == TOKEN
    assert call["chat_id"] == 218485655
    assert call["params"]["text"] == "<b>not html</b> & more"
    assert "parse_mode" not in call["params"]  # agents' text is never interpreted
    assert sent["provider_id"] == "218485655:1"


async def test_reply_buttons_become_an_inline_keyboard_with_payloads_as_callback_data(
    tg_client, telegram
):
    conversation_id = await open_conversation(tg_client)
    buttons = [ButtonReply(payload="csat:yes", title="Yes"), ButtonReply(payload="csat:no")]

    doc = await hub(tg_client).reply(
        conversation_id, text="Was this helpful?", sender=AGENT, buttons=buttons
    )
    assert (await message_when(tg_client, doc["_id"], SETTLED))["status"] == "sent"

    (call,) = telegram.calls("sendMessage")
    assert call["params"]["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "Yes", "callback_data": "csat:yes"}],
            [{"text": "csat:no", "callback_data": "csat:no"}],
        ]
    }


async def test_a_button_payload_over_64_bytes_is_refused_before_calling_telegram(
    tg_client, telegram
):
    message = OutboundMessage(
        id="m1",
        inbox="tg",
        medium="telegram",
        to="218485655",
        text="pick",
        buttons=(ButtonReply(payload="x" * 65),),
    )

    with pytest.raises(PermanentSendError, match="callback data"):
        await adapter(tg_client).send(message)
    assert telegram.requests == []


@pytest.mark.parametrize(
    ("url", "content_type", "method", "field"),
    [
        ("https://files.example.com/part.jpg", "image/jpeg", "sendPhoto", "photo"),
        ("https://files.example.com/invoice.pdf", "application/pdf", "sendDocument", "document"),
        ("https://files.example.com/manual.pdf", None, "sendDocument", "document"),
        ("https://files.example.com/clip.mp4", "video/mp4", "sendVideo", "video"),
    ],
)
async def test_an_attachment_is_sent_by_url_with_the_method_its_type_calls_for(
    tg_client, telegram, url, content_type, method, field
):
    message = OutboundMessage(
        id="m1",
        inbox="tg",
        medium="telegram",
        to="1111111",
        text="here you go",
        attachments=(Attachment(url=url, content_type=content_type),),
    )

    result = await adapter(tg_client).send(message)

    (call,) = telegram.requests
    assert call["method"] == method
    assert call["params"][field] == url
    assert call["params"]["caption"] == "here you go"
    assert result.provider_id == "1111111:1"


async def test_a_received_file_is_sent_on_by_its_file_id(tg_client, telegram):
    message = OutboundMessage(
        id="m1",
        inbox="tg",
        medium="telegram",
        to="1111111",
        attachments=(Attachment(url="tg://file/AgADxyz", content_type="image/jpeg"),),
    )

    await adapter(tg_client).send(message)

    (call,) = telegram.calls("sendPhoto")
    assert call["params"]["photo"] == "AgADxyz"
    assert "caption" not in call["params"]


async def test_a_text_too_long_for_a_caption_goes_first_paced_like_any_message(tg_client, telegram):
    conversation_id = await open_conversation(tg_client)
    doc = await hub(tg_client).reply(
        conversation_id,
        text="a" * 1500,
        sender=AGENT,
        attachments=[Attachment(url="https://files.example.com/a.png", content_type="image/png")],
    )
    sent = await message_when(tg_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent", sent["error"]
    text, photo = telegram.calls("sendMessage") + telegram.calls("sendPhoto")
    assert (text["status"], photo["status"]) == (200, 200)  # one per second in a chat
    assert photo["at"] - text["at"] >= 0.95
    assert sent["provider_id"] == f"{text['chat_id']}:1"


async def test_a_one_part_message_takes_its_slots_from_the_dispatcher_alone(tg_client, telegram):
    """The adapter paces with the dispatcher's limiters and does not take the
    first part's slots again: a second schedule would drift behind the
    dispatcher's and hold sends back at random (bunching them into refusals)."""
    dispatcher = hub(tg_client).dispatcher
    assert dispatcher is not None
    tg = adapter(tg_client)
    assert tg.outbound.bot_pace is dispatcher.limiters["tg"]
    assert tg.outbound.chat_pace is dispatcher.recipient_limiters["tg"]
    before = (tg.outbound.bot_pace._tat, len(tg.outbound.bot_pace._used))

    await tg.send(OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1111111", text="hi"))

    assert (tg.outbound.bot_pace._tat, len(tg.outbound.bot_pace._used)) == before
    assert "1111111" not in tg.outbound.chat_pace._limiters
    assert [r["status"] for r in telegram.calls("sendMessage")] == [200]


async def test_a_part_failing_after_another_was_sent_is_reported_maybe_sent(tg_client, telegram):
    telegram.fail_next(500, "Internal Server Error", method="sendPhoto")
    message = OutboundMessage(
        id="m1",
        inbox="tg",
        medium="telegram",
        to="1111111",
        text="b" * 1500,
        attachments=(Attachment(url="https://files.example.com/a.png", content_type="image/png"),),
    )

    with pytest.raises(TransientSendError) as raised:
        await adapter(tg_client).send(message)

    # The text is in the chat: a campaign must not send it again.
    assert raised.value.maybe_sent is True
    assert [r["status"] for r in telegram.requests] == [200, 500]


async def test_a_text_over_telegrams_limit_fails_permanently_with_the_reason(tg_client, telegram):
    message = OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1", text="a" * 4097)

    with pytest.raises(PermanentSendError, match="at most 4096"):
        await adapter(tg_client).send(message)
    assert telegram.requests == []


async def test_a_received_file_reference_resolves_to_a_download_through_getFile(
    tg_client, telegram
):
    url = await adapter(tg_client).file_download_url("tg://file/AgADxyz")

    (call,) = telegram.calls("getFile")
    assert call["params"]["file_id"] == "AgADxyz"
    assert url.startswith(f"{telegram.url}/file/bot{TOKEN}/documents/file_")


# -- errors: classified, honoured ---------------------------------------------------------------


async def test_a_429_retry_after_is_honoured_through_the_dispatcher_and_the_reply_sent(
    tg_client, telegram
):
    conversation_id = await open_conversation(tg_client)
    telegram.fail_next_with_429(retry_after=1)

    doc = await hub(tg_client).reply(conversation_id, text="after the wait", sender=AGENT)
    sent = await message_when(tg_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent", sent["error"]
    first, second = telegram.calls("sendMessage")
    assert (first["status"], second["status"]) == (429, 200)
    # The dispatcher's own backoff here is at most 0.2 s: the wait is Telegram's.
    assert second["at"] - first["at"] >= 1.0
    assert telegram.sent[0]["params"]["text"] == "after the wait"


async def test_a_user_who_blocked_the_bot_fails_the_reply_and_is_opted_out(tg_client, telegram):
    conversation_id = await open_conversation(tg_client)
    telegram.block(218485655)

    doc = await hub(tg_client).reply(conversation_id, text="are you there?", sender=AGENT)
    failed = await message_when(tg_client, doc["_id"], SETTLED)

    assert failed["status"] == "failed"
    assert BLOCKED in failed["error"]
    (contact,) = await hub(tg_client).store.contacts.find().to_list()
    assert contact["opted_out"]["telegram"] is True
    assert len(telegram.calls("sendMessage")) == 1  # not retried


@pytest.mark.parametrize(
    ("status", "description", "kind", "code"),
    [
        (400, "Bad Request: chat not found", PermanentSendError, "400"),
        (403, "Forbidden: bot was kicked from the group chat", PermanentSendError, "403"),
        (401, "Unauthorized", PermanentSendError, "401"),
        (500, "Internal Server Error", TransientSendError, "5xx"),
        (502, "Bad Gateway", TransientSendError, "5xx"),
    ],
)
async def test_bot_api_errors_are_classified_permanent_or_transient(
    tg_client, telegram, status, description, kind, code
):
    telegram.fail_next(status, description)
    message = OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1111111", text="hi")

    with pytest.raises(kind) as raised:
        await adapter(tg_client).send(message)

    assert raised.value.code == code
    if status == 403:
        assert raised.value.opt_out is True  # type: ignore[attr-defined]
    if status in (400, 403):
        assert description in raised.value.reason
    if status >= 500:
        assert raised.value.maybe_sent is True  # type: ignore[attr-defined]


async def test_a_429_is_transient_with_retry_after_and_certainly_not_sent(tg_client, telegram):
    telegram.fail_next_with_429(retry_after=7)
    message = OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1111111", text="hi")

    with pytest.raises(TransientSendError) as raised:
        await adapter(tg_client).send(message)

    assert raised.value.retry_after == 7
    assert raised.value.maybe_sent is False
    assert raised.value.code == "429"


async def test_after_a_429_that_chat_waits_without_calling_telegram_again(tg_client, telegram):
    telegram.fail_next_with_429(retry_after=5)
    channel = adapter(tg_client)
    to_held = OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1111111", text="a")
    with pytest.raises(TransientSendError):
        await channel.send(to_held)

    with pytest.raises(TransientSendError) as held:
        await channel.send(to_held.model_copy(update={"id": "m2"}))
    other = await channel.send(to_held.model_copy(update={"id": "m3", "to": "2222222"}))

    assert 4 < (held.value.retry_after or 0) <= 5
    assert held.value.maybe_sent is False
    assert [r["chat_id"] for r in telegram.requests] == [1111111, 2222222]
    assert other.provider_id == "2222222:1"


async def test_an_unreachable_api_is_transient_and_certainly_not_sent(tg_settings, telegram):
    await telegram.stop()  # nothing listens on its port any more
    message = OutboundMessage(id="m1", inbox="tg", medium="telegram", to="1111111", text="hi")
    async with TestClient(TestServer(build_app(tg_settings()))) as client:
        with pytest.raises(TransientSendError) as raised:
            await adapter(client).send(message)

    assert raised.value.maybe_sent is False


# -- pacing -------------------------------------------------------------------------------------


async def test_replies_to_one_chat_go_out_one_per_second_without_a_429(tg_client, telegram):
    conversation_id = await open_conversation(tg_client)
    docs = [
        await hub(tg_client).reply(conversation_id, text=f"part {n}", sender=AGENT)
        for n in range(3)
    ]

    for doc in docs:
        assert (await message_when(tg_client, doc["_id"], SETTLED))["status"] == "sent"

    times = sorted(s["at"] for s in telegram.sent)
    assert telegram.rejected_429 == 0
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(times))


async def test_the_fake_refuses_a_second_message_to_a_chat_within_a_second_with_telegrams_429(
    telegram,
):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = f"{telegram.url}/bot{TOKEN}/sendMessage"
        first = await session.post(url, json={"chat_id": 5, "text": "one"})
        second = await session.post(url, json={"chat_id": 5, "text": "two"})
        other = await session.post(url, json={"chat_id": 6, "text": "three"})
        body = await second.json()

    assert (first.status, second.status, other.status) == (200, 429, 200)
    assert body == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    assert telegram.rejected_429 == 1
    assert [r["status"] for r in telegram.requests] == [200, 429, 200]


async def test_a_lone_surrogate_in_a_text_is_stored_with_a_replacement_character(tg_client):
    """JSON may escape half a UTF-16 pair ("\\ud800"), which UTF-8 and so the store
    cannot hold: the customer's message is kept with U+FFFD in its place."""
    update = fixture("message_text")
    update["message"]["text"] = "hi \ud800 there"
    body = json.dumps(update).encode()  # ensure_ascii: the surrogate goes as \ud800
    assert b"\\ud800" in body
    resp = await post_update(tg_client, body)
    assert resp.status == 200
    (stored,) = await hub(tg_client).store.messages.find().to_list()
    assert stored["text"] == "hi \ufffd there"
