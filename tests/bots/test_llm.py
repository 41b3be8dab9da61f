"""The AI assistant (`kind = "llm"`) against a loopback double of the OpenAI
chat-completions API: answers from the knowledge files in the customer's
language, hands off when the model says it cannot answer, when the customer asks
for a person, and when the endpoint fails; its key never reaches a log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings
from hub.logs import setup_logging
from tests.bots.conftest import (
    Client,
    bot_messages,
    bot_replies,
    only_conversation,
    store_of,
    write,
)
from tests.support.waiting import eventually

API_KEY = "sk-test-llm-key-0123456789"
KNOWLEDGE = """# Corner Coffee
We open at 9:00 and close at 20:00, Monday to Saturday.
A cappuccino costs 3.20 EUR. We have oat milk.
"""


@dataclass
class FakeCompletions:
    """POST /v1/chat/completions on loopback, answering what `reply` says."""

    reply: Callable[[dict[str, Any]], Any] = lambda _body: "OK"
    status: int = 200
    delay: float = 0.0
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.status)
        content = self.reply(body)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def model() -> AsyncIterator[FakeCompletions]:
    fake = FakeCompletions()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(
    bot_settings: Callable[..., Settings], model: FakeCompletions, tmp_path: Path
) -> AsyncIterator[Client]:
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "faq.md").write_text(KNOWLEDGE)
    settings = bot_settings(
        {
            "id": "ai",
            "kind": "llm",
            "inboxes": ["wa", "sms"],
            "api_base": model.url,
            "model": "qwen2.5:7b",
            "api_key": API_KEY,
            "knowledge": ["knowledge/faq.md"],
            "timeout_seconds": 1,
        }
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


async def handed_off(client: Client, conversation_id: str) -> str:
    store = store_of(client)
    await eventually(
        lambda: store.conversations.find_one({"_id": conversation_id}),
        lambda doc: doc is not None and doc["bot"] is None and doc["status"] == "open",
    )
    system = await store.messages.find_one(
        {"conversation_id": conversation_id, "sender.type": "system"}
    )
    assert system is not None
    return str(system["text"])


async def test_answers_from_the_knowledge_with_the_conversation(
    hub: Client, model: FakeCompletions
) -> None:
    model.reply = lambda body: (
        "We open at 9:00." if len(body["messages"]) == 2 else "Мы открываемся в 9:00."
    )
    await write(hub, "wa:whatsapp", "+15551230701", "When do you open?")
    conversation = await only_conversation(hub, "wa")
    (answer,) = await bot_replies(hub, conversation["_id"], 1)
    assert answer["text"] == "We open at 9:00."
    assert answer["sender"] == {"type": "bot", "id": "ai"}

    headers, body = model.requests[0]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "qwen2.5:7b"
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "Answer ONLY from the KNOWLEDGE" in system["content"]
    assert "language of the customer's last message" in system["content"]
    assert "answer exactly HANDOFF" in system["content"]
    assert "A cappuccino costs 3.20 EUR." in system["content"]
    assert user == {"role": "user", "content": "When do you open?"}

    await write(hub, "wa:whatsapp", "+15551230701", "А по-русски?")  # noqa: RUF001
    replies = await bot_replies(hub, conversation["_id"], 2)
    assert replies[1]["text"] == "Мы открываемся в 9:00."
    _, body = model.requests[1]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "А по-русски?"  # noqa: RUF001


async def test_hands_off_when_the_model_cannot_answer(hub: Client, model: FakeCompletions) -> None:
    model.reply = lambda _body: "HANDOFF"
    await write(hub, "sms:sms", "+15551230702", "Can I rent the place for a wedding?")
    conversation = await only_conversation(hub, "sms")
    reason = await handed_off(hub, conversation["_id"])
    assert reason == "the assistant has no answer in its knowledge"
    assert await bot_messages(hub, conversation["_id"]) == []


async def test_hands_off_when_the_customer_asks_for_a_person(
    hub: Client, model: FakeCompletions
) -> None:
    await write(hub, "sms:sms", "+15551230703", "Соедините с оператором, пожалуйста")  # noqa: RUF001
    conversation = await only_conversation(hub, "sms")
    assert await handed_off(hub, conversation["_id"]) == "the customer asked for a person"
    assert model.requests == []


@pytest.mark.parametrize(
    ("status", "delay", "reason"),
    [
        (503, 0.0, "the model endpoint answered 503"),
        (200, 2.0, "the model endpoint did not answer within 1 s"),
    ],
    ids=["5xx", "timeout"],
)
async def test_hands_off_when_the_endpoint_fails(
    hub: Client, model: FakeCompletions, status: int, delay: float, reason: str
) -> None:
    model.status, model.delay = status, delay
    await write(hub, "sms:sms", "+15551230704", "Do you have oat milk?")
    conversation = await only_conversation(hub, "sms")
    text = await handed_off(hub, conversation["_id"])
    assert reason in text and text.startswith("The bot ai could not answer:")
    inbound = await store_of(hub).messages.count_documents(
        {"conversation_id": conversation["_id"], "direction": "in"}
    )
    assert inbound == 1


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_api_key_is_redacted_in_logs(
    bot_settings: Callable[..., Settings], restore_logging: None
) -> None:
    settings = bot_settings(
        {"id": "ai", "kind": "llm", "api_base": "http://127.0.0.1:9/v1", "model": "m",
         "api_key": API_KEY}
    )  # fmt: skip
    stream = io.StringIO()
    setup_logging("INFO", "json", settings.secrets, stream=stream)
    logging.getLogger("hub.bots.llm").info("calling with %s", API_KEY, extra={"k": API_KEY})
    assert API_KEY not in stream.getvalue()
    assert json.loads(stream.getvalue())["msg"] == "calling with *** "[:-1]
