"""Once and only once across crashes: a message stored but never given to the bot
(the process died in between) is answered by the sweep, a turn interrupted after
the bot decided is finished with the same replies (each queued once), and a sweep
run again answers nothing twice."""

from __future__ import annotations

from datetime import timedelta

from bots.runtime import BotRuntime
from hub.model import utcnow
from hub.ports import NoBot
from tests.bots.conftest import (
    Client,
    bot_messages,
    bot_replies,
    hub_of,
    only_conversation,
    store_of,
    write,
)


def runtime_of(client: Client) -> BotRuntime:
    hook = hub_of(client).ingestor.bot  # type: ignore[union-attr]
    while not isinstance(hook, BotRuntime):
        hook = hook.inner  # the hooks wrapped around it (assignment)
    return hook


async def test_a_message_never_given_to_the_bot_is_answered_by_the_sweep(shop: Client) -> None:
    phone = "+15551230801"
    await write(shop, "sms:sms", phone, "hi")
    conversation = await only_conversation(shop, "sms")
    await bot_replies(shop, conversation["_id"], 1)

    runtime = runtime_of(shop)
    ingestor = hub_of(shop).ingestor
    assert ingestor is not None
    hook, ingestor.bot = ingestor.bot, NoBot()  # the process "dies" before the bot's turn
    try:
        await write(shop, "sms:sms", phone, "2")
    finally:
        ingestor.bot = hook
    assert len(await bot_messages(shop, conversation["_id"])) == 1

    runtime.sweep_grace = 0.0
    assert await runtime.sweep(window=3600) == 1
    replies = await bot_replies(shop, conversation["_id"], 2)
    assert replies[1]["text"].startswith("We are open Monday to Saturday")
    assert await runtime.sweep(window=3600) == 0  # answered: never twice
    assert len(await bot_messages(shop, conversation["_id"])) == 2


async def test_an_interrupted_turn_is_finished_with_its_replies_sent_once(shop: Client) -> None:
    phone = "+15551230802"
    await write(shop, "sms:sms", phone, "hi")
    conversation = await only_conversation(shop, "sms")
    await bot_replies(shop, conversation["_id"], 1)
    store = store_of(shop)
    runtime = runtime_of(shop)
    ingestor = hub_of(shop).ingestor
    assert ingestor is not None
    hook, ingestor.bot = ingestor.bot, NoBot()
    try:
        await write(shop, "sms:sms", phone, "4")
    finally:
        ingestor.bot = hook
    inbound = await store.messages.find(
        {"conversation_id": conversation["_id"], "direction": "in"}
    ).to_list()
    message = max(inbound, key=lambda m: (m["created_at"], m["_id"]))
    # The process took the turn, the bot decided, the first reply was queued: then it died.
    actions = [
        {"type": "reply", "text": "A person will answer you here shortly."},
        {"type": "handoff", "reason": "the customer asked for a person"},
    ]
    await store.bot_turns.insert_one(
        {
            "_id": message["_id"],
            "conversation_id": conversation["_id"],
            "bot": "shop",
            "state": "working",
            "owner": "dead-process",
            "at": utcnow() - timedelta(minutes=10),
            "actions": actions,
        }
    )
    await runtime._apply(runtime.bots["shop"], message["_id"], conversation, actions[:1])
    assert len(await bot_messages(shop, conversation["_id"])) == 2

    assert await runtime.sweep() == 1
    replies = await bot_messages(shop, conversation["_id"])
    assert [r["text"] for r in replies][1:] == ["A person will answer you here shortly."]
    doc = await store.conversations.find_one({"_id": conversation["_id"]})
    assert doc is not None and doc["bot"] is None and doc["status"] == "open"
    turn = await store.bot_turns.find_one({"_id": message["_id"]})
    assert turn is not None and turn["state"] == "done"
    assert await runtime.sweep() == 0
