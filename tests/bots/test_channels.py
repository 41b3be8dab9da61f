"""Whole conversations with the demo shop's flow bot through the real adapters and
the providers' simulators: Telegram's inline keyboard and a pressed button,
WhatsApp's interactive list and a chosen row, the customer's language, a provider's
retry, a flood of messages, handoff words, and a resolved conversation written to
again."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from channels.telegram.inbound import SECRET_HEADER
from channels.telegram.simulator import FakeTelegram
from channels.whatsapp.simulator import FakeWhatsApp, post_notification
from hub.services import conversations
from tests.bots.conftest import (
    Client,
    bot_messages,
    bot_replies,
    hub_of,
    only_conversation,
    sandbox_of,
    store_of,
    write,
)
from tests.support.waiting import eventually

TG_SECRET = "sandbox-secret-token"
WA_SECRET = "sandbox-app-secret"


def telegram(client: Client) -> FakeTelegram:
    simulator = sandbox_of(client).simulators["telegram"]
    assert isinstance(simulator, FakeTelegram)
    return simulator


def whatsapp(client: Client) -> FakeWhatsApp:
    simulator = sandbox_of(client).simulators["whatsapp"]
    assert isinstance(simulator, FakeWhatsApp)
    return simulator


async def telegram_sent(client: Client, count: int) -> list[dict[str, Any]]:
    async def sent() -> list[dict[str, Any]]:
        return [s for s in telegram(client).sent if s["method"] == "sendMessage"]

    return await eventually(sent, lambda found: len(found) >= count)


def press(sent: dict[str, Any], button: int, update_id: int) -> dict[str, Any]:
    """The update Telegram posts when the customer presses a button of `sent`."""
    markup = sent["params"]["reply_markup"]
    if isinstance(markup, str):
        markup = json.loads(markup)
    chosen = markup["inline_keyboard"][button][0]
    user = {"id": sent["chat_id"], "is_bot": False, "first_name": "Ann"}
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cb{update_id}",
            "from": user,
            "chat_instance": "-1",
            "data": chosen["callback_data"],
            "message": {
                "message_id": sent["message_id"],
                "from": {"id": 7000000001, "is_bot": True, "first_name": "Shop"},
                "chat": {"id": sent["chat_id"], "type": "private", "first_name": "Ann"},
                "date": int(time.time()),
                "text": sent["params"]["text"],
                "reply_markup": markup,
            },
        },
    }


async def post_telegram(client: Client, update: dict[str, Any]) -> None:
    response = await client.post(
        "/webhooks/telegram/tg", json=update, headers={SECRET_HEADER: TG_SECRET}
    )
    assert response.status == 200, await response.text()


async def test_telegram_inline_keyboard_and_a_pressed_button(shop: Client) -> None:
    await write(shop, "tg:telegram", "+15551230201", "hi")
    (menu,) = await telegram_sent(shop, 1)
    markup = menu["params"]["reply_markup"]
    markup = json.loads(markup) if isinstance(markup, str) else markup
    titles = [row[0]["text"] for row in markup["inline_keyboard"]]
    assert titles == ["Menu and prices", "Opening hours", "Leave your e-mail", "Talk to a person"]
    assert menu["params"]["text"] == "Hi Ann! This is Corner Coffee. How can I help?"

    await post_telegram(shop, press(menu, 1, 900001))
    sent = await telegram_sent(shop, 2)
    assert sent[1]["params"]["text"].startswith("We are open Monday to Saturday")
    # The answer offers the menu's choices again (it goes back to the menu).
    again = sent[1]["params"]["reply_markup"]
    again = json.loads(again) if isinstance(again, str) else again
    assert [row[0]["text"] for row in again["inline_keyboard"]] == titles

    # Telegram retries the same update: stored once, answered once.
    await post_telegram(shop, press(menu, 1, 900001))
    await post_telegram(shop, press(sent[1], 0, 900002))
    sent = await telegram_sent(shop, 3)
    assert "Cappuccino 3.20 EUR" in sent[2]["params"]["text"]
    await asyncio.sleep(0.5)
    conversation = await only_conversation(shop, "tg")
    assert len(await bot_messages(shop, conversation["_id"])) == 3
    assert len([s for s in telegram(shop).sent if s["method"] == "sendMessage"]) == 3
    # The button's text is what the customer's message says.
    pressed = await store_of(shop).messages.find_one(
        {"conversation_id": conversation["_id"], "direction": "in", "text": "Menu and prices"}
    )
    assert pressed is not None


def list_reply(digits: str, wamid: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550100000",
                                "phone_number_id": "106540352242922",
                            },
                            "contacts": [{"profile": {"name": "Олег"}, "wa_id": digits}],
                            "messages": [
                                {
                                    "from": digits,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "interactive",
                                    "interactive": {"type": "list_reply", "list_reply": row},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


async def test_whatsapp_interactive_list_in_the_customers_language(shop: Client) -> None:
    digits = "15551230301"
    await write(shop, "wa:whatsapp", f"+{digits}", "Здравствуйте", name="Олег")

    async def interactive() -> list[dict[str, Any]]:
        return [s for s in whatsapp(shop).sent if s.get("type") == "interactive"]

    (menu,) = await eventually(interactive, lambda found: len(found) == 1)
    assert menu["interactive"]["type"] == "list"  # four choices: more than 3 reply buttons
    assert menu["interactive"]["body"]["text"].startswith("Здравствуйте, Олег! Это кофейня")
    rows = menu["interactive"]["action"]["sections"][0]["rows"]
    assert [r["title"] for r in rows] == [
        "Меню и цены",
        "Часы работы",
        "Оставить e-mail",
        "Позвать человека",
    ]
    response = await post_notification(
        shop, "/webhooks/whatsapp/wa", list_reply(digits, "wamid.row-1", rows[0]), WA_SECRET
    )
    assert response.status == 200
    conversation = await only_conversation(shop, "wa")
    replies = await bot_replies(shop, conversation["_id"], 2)
    assert replies[1]["text"].startswith("Наше меню:")

    # A person is asked for: handed to people at once, with the reason in the thread.
    await write(shop, "wa:whatsapp", f"+{digits}", "Позовите оператора!", name="Олег")
    store = store_of(shop)
    handed = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["bot"] is None,
    )
    assert handed["status"] == "open"
    system = await store.messages.find_one(
        {"conversation_id": conversation["_id"], "sender.type": "system"}
    )
    assert system is not None and system["text"] == "the customer asked for a person"
    # The bot says nothing more; the conversation is people's now.
    await write(shop, "wa:whatsapp", f"+{digits}", "1", name="Олег")
    await asyncio.sleep(0.5)
    assert len(await bot_messages(shop, conversation["_id"])) == 2


async def test_a_flood_is_answered_once_per_message_in_order(shop: Client) -> None:
    phone = "+15551230401"
    await write(shop, "sms:sms", phone, "hi")
    conversation = await only_conversation(shop, "sms")
    await bot_replies(shop, conversation["_id"], 1)
    texts = ["2", "1", "2", "1", "2"]
    for text in texts:  # as fast as the provider posts them
        await write(shop, "sms:sms", phone, text)
    replies = await bot_replies(shop, conversation["_id"], 6)
    await asyncio.sleep(0.5)
    replies = await bot_messages(shop, conversation["_id"])
    assert len(replies) == 6
    starts = [r["text"][:10] for r in replies[1:]]
    assert starts == ["We are ope", "Our menu:\n", "We are ope", "Our menu:\n", "We are ope"]
    turns = await store_of(shop).bot_turns.count_documents({"state": "done"})
    assert turns == 6


async def test_misses_then_a_handoff_and_a_resolved_conversation_goes_back_to_the_bot(
    shop: Client,
) -> None:
    phone = "+15551230501"
    await write(shop, "sms:sms", phone, "hi")
    conversation = await only_conversation(shop, "sms")
    await bot_replies(shop, conversation["_id"], 1)
    await write(shop, "sms:sms", phone, "what?")
    replies = await bot_replies(shop, conversation["_id"], 2)
    assert replies[1]["text"].startswith("Sorry, I did not get that. Please choose one of these:")
    assert "\n1 Menu and prices\n" in replies[1]["text"]
    await write(shop, "sms:sms", phone, "banana")  # the second miss in a row: max_misses = 2
    store = store_of(shop)
    handed = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["bot"] is None,
    )
    assert handed["status"] == "open"

    # An agent resolves it; the customer writes again: the bot has it again, afresh.
    hub = hub_of(shop)
    assert hub.events is not None
    await conversations.update(
        store,
        hub.events,
        handed,
        conversations.Change(status="resolved"),
        by=None,
        inboxes_of=lambda _agent: asyncio.sleep(0, None),
    )
    await write(shop, "sms:sms", phone, "hello again")
    back = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["bot"] == "shop",
    )
    assert back["status"] == "pending"
    replies = await bot_replies(shop, conversation["_id"], 3)
    assert replies[2]["text"].startswith("Hi! This is Corner Coffee.")
