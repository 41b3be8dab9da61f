"""The demo shop's flow bot over SMS (Twilio's simulator): buttons become a numbered
list, a customer's "2" or the choice's words select, an e-mail is asked, checked,
kept on the contact, and the conversation is handed to people."""

from __future__ import annotations

from tests.bots.conftest import (
    Client,
    bot_replies,
    only_conversation,
    sandbox_of,
    store_of,
    write,
)
from tests.support.waiting import eventually

PHONE = "+15551230101"


async def test_sms_numbered_menu_to_an_e_mail_and_a_handoff(shop: Client) -> None:
    await write(shop, "sms:sms", PHONE, "hello")
    conversation = await only_conversation(shop, "sms")
    assert conversation["status"] == "pending" and conversation["bot"] == "shop"
    (menu,) = await bot_replies(shop, conversation["_id"], 1)
    assert menu["sender"] == {"type": "bot", "id": "shop"}
    # SMS carries no name: "Hi {first_name}!" reads "Hi!"
    assert menu["text"].startswith("Hi! This is Corner Coffee. How can I help?")
    assert "\n1 Menu and prices\n2 Opening hours\n3 Leave your e-mail\n4 Talk to a person" in (
        menu["text"]
    )
    assert not menu.get("buttons")

    await write(shop, "sms:sms", PHONE, "2")
    replies = await bot_replies(shop, conversation["_id"], 2)
    assert replies[1]["text"].startswith("We are open Monday to Saturday")

    await write(shop, "sms:sms", PHONE, "  PRICES, please! ")
    replies = await bot_replies(shop, conversation["_id"], 3)
    assert "Cappuccino 3.20 EUR" in replies[2]["text"]

    await write(shop, "sms:sms", PHONE, "3")
    replies = await bot_replies(shop, conversation["_id"], 4)
    assert replies[3]["text"].startswith("What is your e-mail?")

    await write(shop, "sms:sms", PHONE, "ann at example")
    replies = await bot_replies(shop, conversation["_id"], 5)
    assert replies[4]["text"].startswith("That does not look like an e-mail address")

    await write(shop, "sms:sms", PHONE, "Ann@Example.org")
    replies = await bot_replies(shop, conversation["_id"], 6)
    assert replies[5]["text"] == "Thank you! A person will write to you soon."

    store = store_of(shop)
    handed = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["bot"] is None,
    )
    assert handed["status"] == "open"
    contact = await store.contacts.find_one({"_id": conversation["contact_id"]})
    assert contact is not None and "ann@example.org" in contact["emails"]
    system = await store.messages.find_one(
        {"conversation_id": conversation["_id"], "sender.type": "system"}
    )
    assert system is not None and system["text"] == "lead left an e-mail"

    # The customer's phone got every answer, in order.
    async def texts() -> list[str]:
        response = await shop.get(
            "/sandbox/api/messages", params={"line": "sms:sms", "address": PHONE}
        )
        return [m["text"] for m in (await response.json())["messages"] if m["direction"] == "out"]

    shown = await eventually(texts, lambda found: len(found) == 6)
    assert shown[5] == "Thank you! A person will write to you soon."
    assert sandbox_of(shop) is not None
