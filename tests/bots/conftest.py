"""A hub with the sandbox on (one inbox per channel, each talking to its provider's
simulator through the real adapter) and bots configured on its inboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.sandbox.core import Sandbox
from hub.sandbox.page import SANDBOX
from hub.services.runtime import HUB, Hub
from hub.store import Store
from tests.multihub.conftest import cluster  # noqa: F401  (two hubs on one store)
from tests.sandbox.conftest import free_port, sandbox_inboxes
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
SHOP_FLOW = ROOT / "deploy" / "flows" / "shop.toml"

Client = TestClient[web.Request, web.Application]


def shop_bot(inboxes: list[str]) -> dict[str, Any]:
    return {"id": "shop", "kind": "flow", "flow": str(SHOP_FLOW), "inboxes": inboxes}


@pytest.fixture
def bot_settings(embedded_uri: str, db_name: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(*bots: dict[str, Any]) -> Settings:
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "sandbox": {"enabled": True, "delivery_delay": 0.05},
            "inboxes": sandbox_inboxes(free_port()),
            "bots": list(bots),
        }
        return parse_settings(data, source="<bots test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def shop(bot_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    """The demo's shop flow on the Telegram, WhatsApp and SMS inboxes."""
    app = build_app(bot_settings(shop_bot(["tg", "wa", "sms"])))
    async with TestClient(TestServer(app)) as client:
        yield client


def hub_of(client: Client) -> Hub:
    return client.app[HUB]


def sandbox_of(client: Client) -> Sandbox:
    return client.app[SANDBOX]


def store_of(client: Client) -> Store:
    store = hub_of(client).store
    assert store is not None
    return store


async def write(client: Client, line: str, address: str, text: str, name: str = "Ann") -> None:
    """Write as the customer through the sandbox: the provider's signed webhook."""
    response = await client.post(
        "/sandbox/api/messages", json={"line": line, "address": address, "text": text, "name": name}
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["message"]["status"] == "sent"


async def bot_messages(client: Client, conversation_id: str) -> list[dict[str, Any]]:
    store = store_of(client)
    docs = await store.messages.find({"conversation_id": conversation_id}).to_list()
    docs.sort(key=lambda d: (d["created_at"], d["_id"]))
    return [d for d in docs if (d.get("sender") or {}).get("type") == "bot"]


async def bot_replies(
    client: Client, conversation_id: str, count: int, *, deadline: float = 10.0
) -> list[dict[str, Any]]:
    """The bot's messages in the conversation, once there are `count` of them."""
    return await eventually(
        lambda: bot_messages(client, conversation_id),
        lambda found: len(found) >= count,
        deadline=deadline,
    )


async def only_conversation(client: Client, inbox: str) -> dict[str, Any]:
    store = store_of(client)
    found = await eventually(
        lambda: store.conversations.find({"inbox": inbox}).to_list(),
        lambda docs: len(docs) == 1,
    )
    return dict(found[0])
