"""Opt-out by stop and start words through real channels' webhooks (Twilio SMS and
Telegram against their simulators): several languages, one confirmation, nothing
on a repeat, configurable words, the bot never sees the word, an agent's SMS reply
to an opted-out number refused while other channels' replies still go."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram import SECRET_HEADER
from channels.telegram.simulator import FakeTelegram
from channels.twilio.simulator import PUBLIC_URL, FakeTwilio
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.model import utcnow
from hub.services.contacts import opted_out_since
from hub.services.optout import StopWords, normalize
from hub.services.outbox import OutboxError
from hub.services.replies import OPTED_OUT_SMS
from hub.settings import DEFAULT_START_REPLY, DEFAULT_STOP_REPLY, OptOutSettings
from tests.conftest import hub_of
from tests.support.twilio_fixtures import fixture_params, twilio_inbox
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
PREFIX = "/webhooks/twilio/tw"
CUSTOMER = "+14155550123"
AGENT = {"type": "agent", "id": "a1"}
TG_TOKEN = "123456789:AAE-fakeTokenForTheOptOutTests_00000"
TG_SECRET = "tg-optout-secret_42"
_sids = itertools.count(1)


class RecordingBot:
    """A bot hook that notes every message it is shown."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        self.seen.append(str(message.get("text")))


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio()
    await twilio.start()
    yield twilio
    await twilio.stop()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(token=TG_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def settings_for(
    embedded_uri: str, db_name: str, tmp_path: Path, fake: FakeTwilio, telegram: FakeTelegram
) -> Callable[..., Settings]:
    def make(**sections: Any) -> Settings:
        data: dict[str, Any] = {
            "server": {"public_url": PUBLIC_URL},
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "scheduler": {"enabled": False},
            "inboxes": [
                twilio_inbox(fake.url),
                {
                    "id": "tg",
                    "channel": "telegram",
                    "token": TG_TOKEN,
                    "secret_token": TG_SECRET,
                    "api_base": telegram.url,
                },
            ],
            **sections,
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
def bot() -> RecordingBot:
    return RecordingBot()


@pytest.fixture
async def client(settings_for: Callable[..., Settings], bot: RecordingBot) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(settings_for(), bot=bot))) as running:
        yield running


async def sms(
    client: Client, fake: FakeTwilio, text: str, sender: str = CUSTOMER
) -> dict[str, Any]:
    """A customer's SMS through Twilio's signed webhook; its stored message."""
    sid = f"SM{next(_sids):032d}"
    values = {"Body": text, "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "From": sender}
    params = [(k, values.get(k, v)) for k, v in fixture_params("inbound_sms.txt")]
    body, headers = fake.signed(PUBLIC_URL + PREFIX + "/messages", params)
    response = await client.post(PREFIX + "/messages", data=body, headers=headers)
    assert response.status == 200, await response.text()
    store = hub_of(client).store
    assert store is not None
    doc = await store.messages.find_one({"provider_id": sid})
    assert doc is not None
    return dict(doc)


async def telegram_text(client: Client, text: str, update_id: int) -> dict[str, Any]:
    update = json.loads(
        (Path(__file__).parent / "fixtures" / "telegram" / "message_text.json").read_text()
    )
    update["update_id"] = update_id
    update["message"]["message_id"] = update_id
    update["message"]["text"] = text
    response = await client.post(
        "/webhooks/telegram/tg",
        data=json.dumps(update).encode(),
        headers={"Content-Type": "application/json", SECRET_HEADER: TG_SECRET},
    )
    assert response.status == 200, await response.text()
    store = hub_of(client).store
    assert store is not None
    doc = await eventually(
        lambda: store.messages.find_one({"direction": "in", "text": text, "channel": "telegram"})
    )
    return dict(doc)


async def contact_of(client: Client, message: dict[str, Any]) -> dict[str, Any]:
    store = hub_of(client).store
    assert store is not None
    conversation = await store.conversations.find_one({"_id": message["conversation_id"]})
    assert conversation is not None
    found = await store.contacts.find_one({"_id": conversation["contact_id"]})
    assert found is not None
    return dict(found)


async def system_messages(client: Client, conversation_id: str) -> list[str]:
    store = hub_of(client).store
    assert store is not None
    docs = await store.messages.find(
        {"conversation_id": conversation_id, "direction": "out", "sender.type": "system"}
    ).to_list()
    return [str(d["text"]) for d in docs]


async def settle(client: Client) -> None:
    """Let ingest's hook tasks (opt-out, bot) finish."""
    ingestor = hub_of(client).ingestor
    assert ingestor is not None
    await eventually(lambda: _idle(ingestor), lambda idle: idle)


async def _idle(ingestor: Any) -> bool:
    return not ingestor._bot_tasks


# -- the words --------------------------------------------------------------------------


def test_words_ignore_case_and_surrounding_punctuation_but_not_other_words() -> None:
    words = StopWords(OptOutSettings().stop_words, OptOutSettings().start_words)
    stops = ["STOP", "stop", " Stop! ", "«СТОП»", "стоп.", "ΣΤΟΠ", "στοπ", "Unsubscribe!!", "STOPP"]
    for text in stops:
        assert words.classify(text) == "stop", text
    for text in ["START", "unstop", "Старт!"]:
        assert words.classify(text) == "start", text
    for text in ["please stop", "stop it", "stopping", "", "   ", None, "STOP" * 20]:
        assert words.classify(text) is None, text
    assert normalize("  ¡¡Отписка!!  ") == "отписка"


# -- through the channels ---------------------------------------------------------------


@pytest.mark.parametrize("word", ["STOP", "stop!", " Стоп. ", "ОТПИСАТЬСЯ", "ΣΤΟΠ", "STOPP"])
async def test_a_stop_word_by_sms_opts_out_with_one_confirmation(client, fake, bot, word):
    first = await sms(client, fake, "hello")
    stop = await sms(client, fake, word)
    await settle(client)
    contact = await contact_of(client, stop)
    assert contact["opted_out"] == {"sms": True}
    assert await system_messages(client, stop["conversation_id"]) == [DEFAULT_STOP_REPLY]
    sent = await eventually(lambda: _bodies(fake), lambda bodies: bool(bodies))
    assert sent == [DEFAULT_STOP_REPLY]
    # The bot saw the customer's first message, not the stop word.
    assert bot.seen == [first["text"]]


async def _bodies(fake: FakeTwilio) -> list[str]:
    return [str(m.get("text")) for m in fake.sent]


async def test_a_stop_word_marks_when_the_opt_out_changed(client, fake):
    since = utcnow() - timedelta(seconds=1)
    stop = await sms(client, fake, "STOP")
    await settle(client)
    contact = await contact_of(client, stop)
    changed = await opted_out_since(hub_of(client).store, since)
    assert list(changed) == [contact["_id"]]
    assert changed[contact["_id"]]["opted_out"] == {"sms": True}


async def test_a_repeated_stop_changes_and_sends_nothing(client, fake):
    stop = await sms(client, fake, "STOP")
    await settle(client)
    await sms(client, fake, "stop")
    await sms(client, fake, "СТОП")
    await settle(client)
    assert await system_messages(client, stop["conversation_id"]) == [DEFAULT_STOP_REPLY]
    assert (await contact_of(client, stop))["opted_out"] == {"sms": True}


async def test_a_start_word_opts_back_in_once_and_a_start_while_in_sends_nothing(client, fake, bot):
    start = await sms(client, fake, "START")  # never opted out: nothing to do
    await settle(client)
    assert await system_messages(client, start["conversation_id"]) == []
    assert bot.seen == []
    await sms(client, fake, "stop")
    await settle(client)
    await sms(client, fake, "Старт")
    await settle(client)
    await sms(client, fake, "unstop")
    await settle(client)
    contact = await contact_of(client, start)
    assert contact["opted_out"] == {"sms": False}
    texts = await system_messages(client, start["conversation_id"])
    assert sorted(texts) == sorted([DEFAULT_STOP_REPLY, DEFAULT_START_REPLY])


async def test_a_sentence_with_a_stop_word_in_it_is_an_ordinary_message(client, fake, bot):
    message = await sms(client, fake, "please stop calling me at work")
    await settle(client)
    assert (await contact_of(client, message))["opted_out"] == {}
    assert bot.seen == ["please stop calling me at work"]


async def test_an_agents_sms_reply_to_an_opted_out_number_is_refused(client, fake):
    stop = await sms(client, fake, "STOP")
    await settle(client)
    with pytest.raises(OutboxError) as refused:
        await hub_of(client).reply(stop["conversation_id"], text="Are you sure?", sender=AGENT)
    assert str(refused.value) == OPTED_OUT_SMS


async def test_stop_on_telegram_opts_out_of_telegram_only_and_replies_there_still_go(
    client, fake, telegram
):
    message = await telegram_text(client, "Stop", 1001)
    await settle(client)
    contact = await contact_of(client, message)
    assert contact["opted_out"] == {"telegram": True}
    assert await system_messages(client, message["conversation_id"]) == [DEFAULT_STOP_REPLY]
    await eventually(lambda: _tg_texts(telegram), lambda texts: DEFAULT_STOP_REPLY in texts)
    # On a channel other than SMS an agent's reply in the conversation still goes.
    queued = await hub_of(client).reply(message["conversation_id"], text="Noted!", sender=AGENT)
    assert queued["status"] == "queued"
    await eventually(lambda: _tg_texts(telegram), lambda texts: "Noted!" in texts)


async def _tg_texts(telegram: FakeTelegram) -> list[str]:
    return [str(m["params"].get("text")) for m in telegram.sent]


async def test_configured_words_replace_the_defaults(settings_for, fake):
    settings = settings_for(
        opt_out={"stop_words": ["HALT", "Хватит"], "start_words": ["RESUME"], "stop_reply": "Bye."}
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        ordinary = await sms(client, fake, "STOP")
        await settle(client)
        assert (await contact_of(client, ordinary))["opted_out"] == {}
        halt = await sms(client, fake, "хватит!")
        await settle(client)
        assert (await contact_of(client, halt))["opted_out"] == {"sms": True}
        assert await system_messages(client, halt["conversation_id"]) == ["Bye."]
