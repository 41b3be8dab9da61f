"""Handoff from a bot to people, an agent taking over, and round-robin assignment.

Bot conversations are seeded in the store (`bot` set, status pending) so these
tests hold whatever bot serves them; the inbox `rr` assigns round robin.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.api.base import API
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import utcnow
from hub.services import assignment, handoff, presence
from hub.services.accounts import Passwords
from hub.services.events import Subscription
from tests.api.conftest import (
    FAST_HASHER,
    Agent,
    Client,
    conversation_of,
    hub,
    inbound,
    make_agent,
)
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider


def _settings(uri: str, db: str, tmp_path: Path, provider: FakeProvider) -> Settings:
    base = {"channel": "testchan", "secret": SECRET, "api_base": provider.url, "rate": 200.0}
    data: dict[str, Any] = {
        "store": {"uri": uri, "database": db},
        "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
        "events": {"poll_interval": 0.05},
        "inboxes": [
            {**base, "id": "t1"},
            {**base, "id": "rr", "assignment": "round_robin"},
            {**base, "id": "other", "assignment": "round_robin"},
        ],
    }
    return parse_settings(data, source="<test>", base_dir=tmp_path)


async def _client(settings: Settings) -> Client:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    client: Client = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    accounts = client.app[API].accounts
    assert accounts is not None
    accounts.passwords = Passwords(FAST_HASHER)
    return client


@pytest.fixture
async def api(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> AsyncIterator[Client]:
    client = await _client(_settings(embedded_uri, db_name, tmp_path, provider))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def second(
    api: Client, embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> AsyncIterator[Client]:
    """Another hub process on the same store."""
    client = await _client(_settings(embedded_uri, db_name, tmp_path, provider))
    try:
        yield client
    finally:
        await client.close()


def _store(client: Client) -> Any:
    store = hub(client).store
    assert store is not None
    return store


async def bot_conversation(client: Client, inbox: str = "rr", bot: str = "shop") -> str:
    """A conversation a bot serves: a customer's message, then `bot` set, pending."""
    sid = f"SM{os.urandom(6).hex()}"
    phone = f"+1555{int.from_bytes(os.urandom(3)) % 10_000_000:07d}"
    conv_id = await conversation_of(client, await inbound(client, inbox, sid, phone, "hello"))
    await _store(client).conversations.update_one(
        {"_id": conv_id}, {"$set": {"bot": bot, "status": "pending", "assignee_id": None}}
    )
    return conv_id


async def online(client: Client, agent: Agent) -> str:
    """The agent has an inbox WebSocket open (its presence, as /api/ws keeps it)."""
    return await presence.opened(_store(client), agent.id, hub(client).instance_id)


async def events_of(sub: Subscription, kind: str, wait: float = 0.3) -> list[dict[str, Any]]:
    found = []
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return found
        try:
            event = await sub.get(timeout=left)
        except TimeoutError:
            return found
        if event.type == kind:
            found.append(event.data)


# -- handoff ------------------------------------------------------------------------


async def test_hand_off_opens_assigns_stores_the_reason_and_publishes_once(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])
    await online(api, agent)
    conv_id = await bot_conversation(api)
    sub = hub(api).bus.subscribe()
    try:
        assert await handoff.hand_off(hub(api), conv_id, reason="the customer asked for a person")
        updates = await events_of(sub, "conversation.updated")
    finally:
        sub.close()
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["status"] == "open" and doc["bot"] is None and doc["assignee_id"] == agent.id
    assert len(updates) == 1
    assert updates[0]["id"] == conv_id and updates[0]["bot"] is None
    assert updates[0]["assignee"] == agent.id and updates[0]["status"] == "open"
    notes = await _store(api).messages.find({"conversation_id": conv_id, "kind": "event"}).to_list()
    assert [(m["sender"], m["text"]) for m in notes] == [
        ({"type": "system", "id": None}, "the customer asked for a person")
    ]
    # Once: the conversation has no bot any more.
    assert not await handoff.hand_off(hub(api), conv_id, reason="again")


async def test_hand_off_without_a_reason_stores_no_message(api: Client) -> None:
    conv_id = await bot_conversation(api, inbox="t1")
    assert await handoff.hand_off(hub(api), conv_id, reason=None)
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["status"] == "open" and doc["bot"] is None and doc.get("assignee_id") is None
    assert await _store(api).messages.count_documents({"conversation_id": conv_id}) == 1


async def test_two_concurrent_hand_offs_do_it_once(api: Client, second: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])
    await online(api, agent)
    conv_id = await bot_conversation(api)
    sub = hub(api).bus.subscribe()
    try:
        done = await asyncio.gather(
            handoff.hand_off(hub(api), conv_id, reason="one"),
            handoff.hand_off(hub(second), conv_id, reason="two"),
            handoff.hand_off(hub(api), conv_id, reason="three"),
        )
        updates = await events_of(sub, "conversation.updated", wait=0.6)
    finally:
        sub.close()
    assert sorted(done) == [False, False, True]
    assert len([u for u in updates if u["id"] == conv_id]) == 1
    notes = {"conversation_id": conv_id, "kind": "event"}
    assert await _store(api).messages.count_documents(notes) == 1


async def test_hand_off_of_a_conversation_without_a_bot_is_false(api: Client) -> None:
    conv_id = await conversation_of(api, await inbound(api, "t1", "SMnobot", "+15550001111", "hi"))
    assert not await handoff.hand_off(hub(api), conv_id, reason="x")
    assert not await handoff.hand_off(hub(api), "no-such-conversation", reason="x")


def test_assignment_key_is_checked(tmp_path: Path, provider: FakeProvider) -> None:
    base = {"channel": "testchan", "secret": SECRET, "api_base": provider.url}
    with pytest.raises(ConfigError, match=r"inboxes\[0\]\.assignment"):
        parse_settings(
            {"inboxes": [{**base, "id": "a", "assignment": "random"}]},
            source="<test>",
            base_dir=tmp_path,
        )
    settings = parse_settings({"inboxes": [{**base, "id": "a"}]}, source="<t>", base_dir=tmp_path)
    assert settings.inboxes[0].assignment == "none"


async def test_presence_expires(api: Client) -> None:
    store = _store(api)
    agent = await make_agent(api, "agent", inboxes=["rr"])
    pid = await online(api, agent)
    assert await presence.connected(store, [agent.id]) == {agent.id}
    await store.presence.update_one({"_id": pid}, {"$set": {"expires_at": utcnow()}})
    assert await presence.connected(store, [agent.id]) == set()
    await presence.renew(store, pid, agent.id)
    assert await presence.connected(store, [agent.id]) == {agent.id}
    await presence.closed(store, pid)
    assert await presence.connected(store, [agent.id]) == set()
    assert await assignment.eligible(store, "rr") == []
