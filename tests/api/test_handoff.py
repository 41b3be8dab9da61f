"""Handoff from a bot to people, an agent taking over, and round-robin assignment.

Bot conversations are seeded in the store (`bot` set, status pending) so these
tests hold whatever bot serves them; the inbox `rr` assigns round robin.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
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
    store = _store(client)
    turn = await store.assignment.find_one({"_id": inbox})
    conv_id = await conversation_of(client, await inbound(client, inbox, sid, phone, "hello"))
    await settled(client)
    # As if the inbox's bot had it from the start: a bot's new conversation is never
    # assigned, so the round-robin turn its message took is given back.
    await store.conversations.update_one(
        {"_id": conv_id}, {"$set": {"bot": bot, "status": "pending", "assignee_id": None}}
    )
    if turn is None:
        await store.assignment.delete_one({"_id": inbox})
    else:
        await store.assignment.replace_one({"_id": inbox}, turn)
    return conv_id


async def settled(client: Client) -> None:
    """Wait until ingest's hooks after the new messages (bot, assignment) are done."""
    ingestor = hub(client).ingestor
    assert ingestor is not None
    tasks = list(ingestor._bot_tasks)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


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


# -- takeover -----------------------------------------------------------------------


async def test_an_agent_reply_takes_a_bot_conversation_over(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv_id = await bot_conversation(api, inbox="t1")
    sub = hub(api).bus.subscribe()
    try:
        resp = await api.post(
            f"/api/conversations/{conv_id}/messages",
            json={"text": "Hi, I am Ann"},
            headers=agent.auth,
        )
        assert resp.status == 201, await resp.text()
        updates = await events_of(sub, "conversation.updated")
    finally:
        sub.close()
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["bot"] is None and doc["status"] == "open" and doc["assignee_id"] == agent.id
    assert [(u["bot"], u["assignee"], u["status"]) for u in updates] == [(None, agent.id, "open")]
    resp = await api.get(f"/api/conversations/{conv_id}", headers=agent.auth)
    assert (await resp.json())["bot"] is None


async def test_a_private_note_does_not_take_over(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv_id = await bot_conversation(api, inbox="t1")
    resp = await api.post(
        f"/api/conversations/{conv_id}/messages",
        json={"text": "the bot is doing fine", "private": True},
        headers=agent.auth,
    )
    assert resp.status == 201, await resp.text()
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["bot"] == "shop" and doc["status"] == "pending" and doc["assignee_id"] is None


async def test_take_over_button_route(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["t1"])
    stranger = await make_agent(api, "agent", inboxes=["t2"])
    conv_id = await bot_conversation(api, inbox="t1")
    resp = await api.post(f"/api/conversations/{conv_id}/takeover", headers=stranger.auth)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    resp = await api.post(f"/api/conversations/{conv_id}/takeover")
    assert resp.status == 401
    resp = await api.post(f"/api/conversations/{conv_id}/takeover", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["bot"] is None and body["status"] == "open" and body["assignee"] == agent.id
    resp = await api.post(f"/api/conversations/{conv_id}/takeover", headers=agent.auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "conflict"
    resp = await api.post("/api/conversations/nope/takeover", headers=agent.auth)
    assert resp.status == 404


async def test_two_agents_taking_over_at_once_one_gets_it(api: Client, second: Client) -> None:
    ann = await make_agent(api, "agent", inboxes=["t1"])
    bob = await make_agent(api, "agent", inboxes=["t1"])
    conv_id = await bot_conversation(api, inbox="t1")
    url = f"/api/conversations/{conv_id}/takeover"
    answers = await asyncio.gather(
        api.post(url, headers=ann.auth), second.post(url, headers=bob.auth)
    )
    assert sorted(r.status for r in answers) == [200, 409]
    winner = ann if answers[0].status == 200 else bob
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["assignee_id"] == winner.id and doc["bot"] is None


async def test_takeover_and_handoff_at_once_change_it_once(api: Client, second: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])
    conv_id = await bot_conversation(api)
    taken, handed = await asyncio.gather(
        handoff.take_over(hub(api), conv_id, agent.id),
        handoff.hand_off(hub(second), conv_id, reason="the customer asked for a person"),
    )
    assert (taken is not None) != handed
    doc = await _store(api).conversations.find_one({"_id": conv_id})
    assert doc["bot"] is None and doc["status"] == "open"


async def test_the_bot_never_answers_after_a_takeover(api: Client, provider: FakeProvider) -> None:
    """The bot's reply queued before the takeover is taken back; one queued after
    it is refused; the agent's reply is the one the customer gets."""
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv_id = await bot_conversation(api, inbox="t1")
    dispatcher = hub(api).dispatcher
    assert dispatcher is not None
    await dispatcher.stop()  # hold sends: the bot's reply stays queued
    queued = await handoff.reply_as_bot(hub(api), conv_id, "shop", text="Our menu: ...")
    assert queued is not None and queued["sender"] == {"type": "bot", "id": "shop"}
    resp = await api.post(
        f"/api/conversations/{conv_id}/messages", json={"text": "I am Ann"}, headers=agent.auth
    )
    assert resp.status == 201
    late = await handoff.reply_as_bot(hub(api), conv_id, "shop", text="Anything else?")
    assert late is None
    bot_message = await _store(api).messages.find_one({"_id": queued["_id"]})
    assert bot_message["status"] == "cancelled"
    assert await _store(api).outbox.find_one({"_id": queued["_id"]}) is None
    texts = [m["text"] async for m in _store(api).messages.find({"conversation_id": conv_id})]
    assert "Anything else?" not in texts
    assert not await handoff.still_bot(hub(api), conv_id, "shop")


async def test_a_bot_answer_already_claimed_is_not_sent_after_a_takeover(
    api: Client, provider: FakeProvider
) -> None:
    """A bot's answer a dispatcher had claimed before the takeover (so the takeover
    could not take it back) is cancelled when its turn comes, not sent."""
    agent = await make_agent(api, "agent", inboxes=["t1"])
    conv_id = await bot_conversation(api, inbox="t1")
    dispatcher = hub(api).dispatcher
    assert dispatcher is not None
    await dispatcher.stop()  # hold sends: the test claims the answer itself
    queued = await handoff.reply_as_bot(hub(api), conv_id, "shop", text="Our menu: ...")
    assert queued is not None
    await dispatcher._hold_inboxes(force=True)  # the stop handed the inbox's lease back
    claimed = await dispatcher.claim_batch()
    assert [item["_id"] for item in claimed] == [queued["_id"]]
    resp = await api.post(f"/api/conversations/{conv_id}/takeover", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    sent_before = len(provider.sent)
    await dispatcher._send_batch(claimed)
    assert len(provider.sent) == sent_before
    bot_message = await _store(api).messages.find_one({"_id": queued["_id"]})
    assert bot_message["status"] == "cancelled"
    assert await _store(api).outbox.find_one({"_id": queued["_id"]}) is None


async def test_the_list_filters_bot_conversations(api: Client) -> None:
    admin = await make_agent(api, "admin")
    bots = {await bot_conversation(api, inbox="t1") for _ in range(2)}
    people = await conversation_of(api, await inbound(api, "t1", "SMppl", "+15550002222", "hi"))
    async def ids(query: str) -> set[str]:
        resp = await api.get(f"/api/conversations?inbox=t1&{query}", headers=admin.auth)
        assert resp.status == 200, await resp.text()
        return {c["id"] for c in (await resp.json())["items"]}

    assert await ids("bot=true") == bots
    assert people in await ids("bot=false") and not bots & await ids("bot=false")
    assert not bots & await ids("status=open")
    resp = await api.get("/api/conversations?bot=maybe", headers=admin.auth)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid"
    resp = await api.get("/api/conversations?inbox=t1&bot=true", headers=admin.auth)
    assert {c["bot"] for c in (await resp.json())["items"]} == {"shop"}


# -- round robin --------------------------------------------------------------------


async def _team(client: Client, n: int, inbox: str = "rr") -> list[Agent]:
    agents = [await make_agent(client, "agent", inboxes=[inbox]) for _ in range(n)]
    for agent in agents:
        await online(client, agent)
    return sorted(agents, key=lambda a: a.id)


async def _handed(
    client: Client, n: int, inbox: str = "rr", via: Client | None = None
) -> list[Any]:
    """Hand off `n` new bot conversations one after another; their assignees."""
    assignees = []
    for _ in range(n):
        conv_id = await bot_conversation(client, inbox=inbox)
        assert await handoff.hand_off(hub(via or client), conv_id, reason=None)
        doc = await _store(client).conversations.find_one({"_id": conv_id})
        assignees.append(doc.get("assignee_id"))
    return assignees


async def test_round_robin_assigns_in_turn(api: Client) -> None:
    a, b, c = await _team(api, 3)
    await make_agent(api, "agent", inboxes=["t1"])  # does not see rr: never picked
    assert await _handed(api, 7) == [a.id, b.id, c.id, a.id, b.id, c.id, a.id]


async def test_round_robin_skips_busy_offline_unconnected_and_full(api: Client) -> None:
    store = _store(api)
    a, b, c, d, e = await _team(api, 5)
    await store.agents.update_one({"_id": b.id}, {"$set": {"availability": "busy"}})
    await store.agents.update_one({"_id": c.id}, {"$set": {"availability": "offline"}})
    await store.presence.delete_many({"agent_id": d.id})  # no inbox socket open
    await store.agents.update_one({"_id": e.id}, {"$set": {"capacity": 1}})
    first = await _handed(api, 3)
    # e takes one and is then full (one open conversation, capacity 1).
    assert first == [a.id, e.id, a.id]
    # A resolved conversation does not count toward capacity.
    await store.conversations.update_many({"assignee_id": e.id}, {"$set": {"status": "resolved"}})
    assert await _handed(api, 2) == [e.id, a.id]


async def test_round_robin_with_nobody_online_leaves_it_unassigned(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])  # no socket
    assert await _handed(api, 1) == [None]
    await online(api, agent)
    await _store(api).agents.update_one({"_id": agent.id}, {"$set": {"availability": "offline"}})
    assert await _handed(api, 1) == [None]
    # Unassigned: every agent who sees the inbox sees it in the list.
    resp = await api.get("/api/conversations?inbox=rr&assignee=none", headers=agent.auth)
    assert len((await resp.json())["items"]) == 2


async def test_assignment_none_leaves_handoffs_unassigned(api: Client) -> None:
    await _team(api, 2, inbox="t1")
    assert await _handed(api, 2, inbox="t1") == [None, None]


async def test_the_turn_is_kept_per_inbox(api: Client) -> None:
    a, b = await _team(api, 2)
    for agent in (a, b):
        await _store(api).agents.update_one(
            {"_id": agent.id}, {"$set": {"inboxes": ["rr", "other"]}}
        )
    assert await _handed(api, 1) == [a.id]
    assert await _handed(api, 1, inbox="other") == [a.id]
    assert await _handed(api, 1) == [b.id]


async def test_two_hub_processes_share_the_turn(api: Client, second: Client) -> None:
    a, b, c = await _team(api, 3)
    order = []
    for via in (api, second, second, api, second, api):
        order += await _handed(api, 1, via=via)
    assert order == [a.id, b.id, c.id, a.id, b.id, c.id]
    # At once, from both: every agent gets its turn, none twice.
    conv_ids = [await bot_conversation(api) for _ in range(6)]
    results = await asyncio.gather(
        *(
            handoff.hand_off(hub(api if i % 2 else second), conv_id, reason=None)
            for i, conv_id in enumerate(conv_ids)
        )
    )
    assert all(results)
    docs = await _store(api).conversations.find({"_id": {"$in": conv_ids}}).to_list()
    counts = {agent.id: 0 for agent in (a, b, c)}
    for doc in docs:
        counts[doc["assignee_id"]] += 1
    assert counts == {a.id: 2, b.id: 2, c.id: 2}


async def test_a_new_conversation_with_people_is_assigned_round_robin(api: Client) -> None:
    a, b = await _team(api, 2)
    convs = []
    for n in range(3):
        message_id = await inbound(api, "rr", f"SMnew{n}", f"+1555000300{n}", "hello")
        convs.append(await conversation_of(api, message_id))
    await settled(api)
    docs = {d["_id"]: d for d in await _store(api).conversations.find({"inbox": "rr"}).to_list()}
    assert [docs[c]["assignee_id"] for c in convs] == [a.id, b.id, a.id]
    # The customer's next message does not assign it again.
    await inbound(api, "rr", "SMnew9", "+15550003000", "still there?")
    await settled(api)
    doc = await _store(api).conversations.find_one({"_id": convs[0]})
    assert doc["assignee_id"] == a.id


async def test_an_inbox_websocket_makes_its_agent_present(api: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])
    store = _store(api)
    async with api.ws_connect(f"/api/ws?token={agent.token}") as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
        for _ in range(100):
            if await presence.connected(store, [agent.id]):
                break
            await asyncio.sleep(0.02)
        assert await presence.connected(store, [agent.id]) == {agent.id}
        assert await _handed(api, 1) == [agent.id]
    for _ in range(100):
        if not await presence.connected(store, [agent.id]):
            break
        await asyncio.sleep(0.02)
    assert await presence.connected(store, [agent.id]) == set()
    assert await _handed(api, 1) == [None]


async def test_a_handoffs_line_in_the_thread_is_not_counted_as_sent(api: Client) -> None:
    boss = await make_agent(api, "supervisor")
    conv_id = await bot_conversation(api, inbox="t1")
    assert await handoff.hand_off(hub(api), conv_id, reason="the bot could not help")
    today = utcnow().date()  # and yesterday: the messages may be from before midnight
    days = f"from={(today - timedelta(days=1)).isoformat()}&to={today.isoformat()}"
    resp = await api.get(f"/api/reports/summary?{days}", headers=boss.auth)
    assert resp.status == 200, await resp.text()
    totals = (await resp.json())["totals"]
    assert (totals["messages_in"], totals["messages_out"]) == (1, 0)


async def test_a_socket_open_on_another_hub_process_counts(api: Client, second: Client) -> None:
    agent = await make_agent(api, "agent", inboxes=["rr"])
    async with second.ws_connect(f"/api/ws?token={agent.token}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        for _ in range(100):
            if await presence.connected(_store(api), [agent.id]):
                break
            await asyncio.sleep(0.02)
        # The handoff runs on the first process; the socket is open on the second.
        assert await _handed(api, 1) == [agent.id]
