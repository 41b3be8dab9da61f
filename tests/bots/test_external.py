"""External bots over HTTP against a real aiohttp server on loopback: the signed
body, `X-Hub-Delivery` (the same on a retry), retries of a 5xx and of a timeout,
the actions and Rasa's REST answer, and every failure handing the conversation to
people with a `system` message, the customer's message kept."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings
from tests.bots.conftest import (
    Client,
    bot_messages,
    bot_replies,
    only_conversation,
    store_of,
    write,
)
from tests.support.waiting import eventually

SECRET = "external-bot-secret-42"


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON, or bytes as they are
    delay: float = 0.0


@dataclass
class FakeBot:
    """An external bot on loopback: records what the hub posts, answers in turn."""

    answers: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: Answer(body={"actions": []}))
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append((dict(request.headers), raw))
        answer = self.answers.pop(0) if self.answers else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        return web.Response(status=answer.status, body=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hub", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hub"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake_bot() -> AsyncIterator[FakeBot]:
    bot = FakeBot()
    await bot.start()
    yield bot
    await bot.stop()


@pytest.fixture
async def hub(bot_settings: Callable[..., Settings], fake_bot: FakeBot) -> AsyncIterator[Client]:
    settings = bot_settings(
        {
            "id": "ext",
            "kind": "http",
            "inboxes": ["tg", "sms", "wa"],
            "url": fake_bot.url,
            "secret": SECRET,
            "timeout_seconds": 0.5,
        }
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


async def handed_to_people(client: Client, conversation_id: str) -> dict[str, Any]:
    store = store_of(client)
    doc = await eventually(
        lambda: store.conversations.find_one({"_id": conversation_id}),
        lambda found: found is not None and found["bot"] is None,
    )
    assert doc["status"] == "open"
    system = await store.messages.find(
        {"conversation_id": conversation_id, "sender.type": "system"}
    ).to_list()
    assert len(system) == 1
    return dict(system[0])


async def test_the_signed_event_and_the_actions(hub: Client, fake_bot: FakeBot) -> None:
    fake_bot.answers.append(
        Answer(
            body={
                "actions": [
                    {"type": "reply", "text": "Hi! Pick one", "buttons": ["Yes", "No"]},
                    {
                        "type": "set_contact",
                        "name": "Ann Lee",
                        "email": "ann@example.org",
                        "attributes": {"plan": "gold"},
                    },
                    {"type": "add_labels", "labels": ["lead", "vip"]},
                ]
            }
        )
    )
    await write(hub, "tg:telegram", "+15551230601", "hello bot")
    conversation = await only_conversation(hub, "tg")
    (reply,) = await bot_replies(hub, conversation["_id"], 1)
    assert reply["text"] == "Hi! Pick one"
    assert [b["title"] for b in reply["buttons"]] == ["Yes", "No"]  # Telegram's own buttons

    (headers, raw) = fake_bot.requests[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Hub-Signature-256"], expected)
    body = json.loads(raw)
    inbound = await store_of(hub).messages.find_one(
        {"conversation_id": conversation["_id"], "direction": "in"}
    )
    assert inbound is not None
    assert headers["X-Hub-Delivery"] == inbound["_id"]
    assert set(body) == {"event", "bot", "conversation", "contact", "message"}
    assert body["event"] == "message.created" and body["bot"] == "ext"
    assert body["conversation"] == {
        "id": conversation["_id"],
        "inbox": "tg",
        "channel": "telegram",
        "status": "pending",
        "labels": [],
    }
    assert set(body["contact"]) == {
        "id", "name", "phones", "emails", "locale", "timezone", "labels", "attributes",
    }  # fmt: skip
    assert body["message"]["id"] == inbound["_id"]
    assert body["message"]["text"] == "hello bot"
    assert set(body["message"]) == {"id", "text", "kind", "attachments", "created_at"}

    store = store_of(hub)
    contact = await eventually(
        lambda: store.contacts.find_one({"_id": conversation["contact_id"]}),
        lambda doc: doc is not None and "ann@example.org" in doc.get("emails", []),
    )
    assert contact["attributes"]["plan"] == "gold"
    assert contact["name"] == "Ann Lee" and "ann@example.org" in contact["emails"]
    labelled = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["labels"] == ["lead", "vip"],
    )
    assert labelled["bot"] == "ext"


async def test_a_5xx_and_a_timeout_are_retried_with_the_same_delivery(
    hub: Client, fake_bot: FakeBot
) -> None:
    fake_bot.answers += [
        Answer(status=502, body={"error": "busy"}),
        Answer(body={"actions": []}, delay=1.5),  # past the 0.5 s timeout
        Answer(body={"actions": [{"type": "reply", "text": "Third time lucky"}]}),
    ]
    await write(hub, "sms:sms", "+15551230602", "anyone?")
    conversation = await only_conversation(hub, "sms")
    (reply,) = await bot_replies(hub, conversation["_id"], 1, deadline=15)
    assert reply["text"] == "Third time lucky"
    assert len(fake_bot.requests) == 3
    deliveries = {headers["X-Hub-Delivery"] for headers, _ in fake_bot.requests}
    bodies = {raw for _, raw in fake_bot.requests}
    assert len(deliveries) == 1 and len(bodies) == 1
    doc = await store_of(hub).conversations.find_one({"_id": conversation["_id"]})
    assert doc is not None and doc["bot"] == "ext"


async def test_a_rasa_answer_becomes_replies_with_a_numbered_list_on_sms(
    hub: Client, fake_bot: FakeBot
) -> None:
    fake_bot.answers.append(
        Answer(
            body=[
                {"recipient_id": "x", "text": "Hello from Rasa"},
                {
                    "recipient_id": "x",
                    "text": "Shall I book it?",
                    "buttons": [
                        {"title": "Yes", "payload": "/affirm"},
                        {"title": "No", "payload": "/deny"},
                    ],
                },
                {"recipient_id": "x", "image": "https://example.org/cat.png"},
            ]
        )
    )
    await write(hub, "sms:sms", "+15551230603", "book a table")
    conversation = await only_conversation(hub, "sms")
    replies = await bot_replies(hub, conversation["_id"], 2)
    assert [r["text"] for r in replies] == ["Hello from Rasa", "Shall I book it?\n\n1 Yes\n2 No"]


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([Answer(status=404, body={"error": "nope"})], "it answered 404"),
        ([Answer(body=b"<html>oops</html>")], "the answer is not JSON"),
        ([Answer(body=b'{"actions": [], "pad": "' + b"x" * 70_000 + b'"}')], "larger than 64 KiB"),
        ([Answer(body={"actions": [{"type": "dance"}]})], "unknown action 'dance'"),
        ([Answer(body={"actions": [{"type": "reply"}]})], "actions.0.reply.text: Field required"),
        ([Answer(status=500)] * 3, "it answered 500 after 3 attempts"),
    ],
    ids=["4xx", "not-json", "too-large", "unknown-action", "bad-action", "5xx-thrice"],
)
async def test_a_failing_bot_hands_off_with_a_system_message(
    hub: Client, fake_bot: FakeBot, answers: list[Answer], reason: str
) -> None:
    fake_bot.answers += answers
    await write(hub, "sms:sms", "+15551230604", "help me")
    conversation = await only_conversation(hub, "sms")
    system = await handed_to_people(hub, conversation["_id"])
    assert reason in system["text"], system["text"]
    assert system["text"].startswith("The bot ext could not answer:")
    inbound = (
        await store_of(hub)
        .messages.find({"conversation_id": conversation["_id"], "direction": "in"})
        .to_list()
    )
    assert [m["text"] for m in inbound] == ["help me"]  # the customer's message is kept
    assert await bot_messages(hub, conversation["_id"]) == []


async def test_an_unreachable_bot_hands_off(
    bot_settings: Callable[..., Settings], fake_bot: FakeBot
) -> None:
    await fake_bot.stop()
    settings = bot_settings(
        {"id": "ext", "kind": "http", "inboxes": ["sms"], "url": fake_bot.url, "secret": SECRET}
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        await write(client, "sms:sms", "+15551230605", "hello?")
        conversation = await only_conversation(client, "sms")
        system = await handed_to_people(client, conversation["_id"])
        assert "cannot reach it" in system["text"]


async def test_handoff_and_resolve_actions(hub: Client, fake_bot: FakeBot) -> None:
    fake_bot.answers += [
        Answer(body={"actions": [{"type": "reply", "text": "Bye!"}, {"type": "resolve"}]}),
        Answer(body={"actions": [{"type": "handoff", "reason": "wants a refund"}]}),
    ]
    phone = "+15551230606"
    await write(hub, "sms:sms", phone, "thanks, that's all")
    conversation = await only_conversation(hub, "sms")
    store = store_of(hub)
    resolved = await eventually(
        lambda: store.conversations.find_one({"_id": conversation["_id"]}),
        lambda doc: doc is not None and doc["status"] == "resolved",
    )
    assert resolved["bot"] is None
    await write(hub, "sms:sms", phone, "actually, a refund please")
    system = await handed_to_people(hub, conversation["_id"])
    assert system["text"] == "wants a refund"
    assert [m["text"] for m in await bot_messages(hub, conversation["_id"])] == ["Bye!"]


async def test_whatsapp_reply_buttons_and_the_pressed_buttons_text(
    hub: Client, fake_bot: FakeBot
) -> None:
    from channels.whatsapp.simulator import FakeWhatsApp, post_notification
    from tests.bots.conftest import sandbox_of
    from tests.bots.test_channels import list_reply

    fake_bot.answers += [
        Answer(
            body={
                "actions": [{"type": "reply", "text": "Deliver today?", "buttons": ["Yes", "No"]}]
            }
        ),
        Answer(body={"actions": [{"type": "reply", "text": "Done!"}]}),
    ]
    digits = "15551230607"
    await write(hub, "wa:whatsapp", f"+{digits}", "I ordered a cake")
    simulator = sandbox_of(hub).simulators["whatsapp"]
    assert isinstance(simulator, FakeWhatsApp)

    async def interactive() -> list[dict[str, Any]]:
        return [s for s in simulator.sent if s.get("type") == "interactive"]

    (sent,) = await eventually(interactive, lambda found: len(found) == 1)
    assert sent["interactive"]["type"] == "button"  # up to three: WhatsApp's reply buttons
    buttons = [b["reply"] for b in sent["interactive"]["action"]["buttons"]]
    assert [b["title"] for b in buttons] == ["Yes", "No"]
    payload = list_reply(digits, "wamid.button-1", buttons[0])
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["interactive"] = {"type": "button_reply", "button_reply": buttons[0]}
    response = await post_notification(hub, "/webhooks/whatsapp/wa", payload, "sandbox-app-secret")
    assert response.status == 200
    conversation = await only_conversation(hub, "wa")
    replies = await bot_replies(hub, conversation["_id"], 2)
    assert replies[1]["text"] == "Done!"
    assert json.loads(fake_bot.requests[1][1])["message"]["text"] == "Yes"
