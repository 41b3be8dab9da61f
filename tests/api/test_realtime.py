"""The WebSocket: agents get the events of the inboxes they see, at once, and
nothing of the others; logout closes it (issue 4, point 4)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from hub.api.base import API
from hub.model import IdentityRef
from hub.services.runtime import ChannelServices
from tests.api.conftest import hub, inbound, make_agent

A = "+15551230001"
B = "+15551230002"


async def _connect(api, agent):
    ws = await api.ws_connect(f"/api/ws?token={agent.token}")
    hello = await ws.receive_json(timeout=2)
    assert hello["type"] == "hello"
    return ws


async def _next(ws, timeout=1.0):
    """The next event that is not a heartbeat."""
    while True:
        event = await ws.receive_json(timeout=timeout)
        if event["type"] not in ("heartbeat", "pong"):
            return event


async def test_inbound_message_reaches_the_agent_within_a_second_and_not_an_agent_without_access(
    api,
):
    one = await make_agent(api, inboxes=["t1"])
    two = await make_agent(api, inboxes=["t2"])
    ws_one = await _connect(api, one)
    ws_two = await _connect(api, two)
    started = time.monotonic()
    message_id = await inbound(api, "t1", "SMws1", A, "live!")
    event = await _next(ws_one, timeout=1.0)
    while event["type"] != "message.created":
        event = await _next(ws_one, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert event["data"]["id"] == message_id
    assert event["data"]["text"] == "live!"
    assert event["data"]["inbox"] == "t1"
    # The other agent's first event is about its own inbox: t1's never reached it.
    await inbound(api, "t2", "SMws2", B, "for two")
    event = await _next(ws_two, timeout=2.0)
    assert event["data"]["inbox"] == "t2"
    assert event["data"].get("text") in ("for two", None)
    await ws_one.close()
    await ws_two.close()


async def test_supervisor_gets_every_inbox_and_conversation_updates(api):
    supervisor = await make_agent(api, "supervisor")
    ws = await _connect(api, supervisor)
    await inbound(api, "t2", "SMws3", B, "hello")
    types = set()
    while not {"message.created", "conversation.updated"} <= types:
        event = await _next(ws, timeout=2.0)
        assert event["data"]["inbox"] == "t2"
        types.add(event["type"])
    await ws.close()


async def test_call_incoming_pops_the_caller_card_only_where_the_inbox_is_seen(api):
    one = await make_agent(api, inboxes=["t1"])
    two = await make_agent(api, inboxes=["t2"])
    ws_one = await _connect(api, one)
    ws_two = await _connect(api, two)
    await inbound(api, "t1", "SMca", A, "hi", ProfileName="Ann")
    await ChannelServices(hub(api)).call_incoming("t1", IdentityRef(kind="phone", value=A), "CA1")
    event = await _next(ws_one)
    while event["type"] != "call.incoming":
        event = await _next(ws_one)
    assert event["data"]["contact"]["name"] == "Ann"
    await ChannelServices(hub(api)).call_incoming("t2", IdentityRef(kind="phone", value=B), "CA2")
    event = await _next(ws_two, timeout=2.0)
    while event["type"] != "call.incoming":
        event = await _next(ws_two, timeout=2.0)
    assert event["data"]["call_id"] == "CA2"  # CA1 never came
    await ws_one.close()
    await ws_two.close()


async def test_websocket_without_a_valid_token_is_refused(api):
    for path in ("/api/ws", "/api/ws?token=forged"):
        try:
            await api.ws_connect(path)
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 401
        else:
            raise AssertionError("connected without a valid token")


async def test_logout_closes_the_websocket(api):
    agent = await make_agent(api, inboxes=["t1"])
    ws = await _connect(api, agent)
    assert (await api.post("/api/auth/logout", headers=agent.auth)).status == 200
    message = await ws.receive(timeout=1.0)
    while message.type == aiohttp.WSMsgType.TEXT:
        message = await ws.receive(timeout=1.0)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4001


async def test_heartbeat_is_sent_and_a_revoked_session_is_closed_by_it(api):
    api.app[API].heartbeat = 0.2
    agent = await make_agent(api, inboxes=["t1"])
    ws = await _connect(api, agent)
    beat = await ws.receive_json(timeout=2.0)
    assert beat["type"] == "heartbeat"
    # The token disappears without a logout event here (another process, expiry).
    await hub(api).store.tokens.delete_many({})
    message = await ws.receive(timeout=2.0)
    while message.type == aiohttp.WSMsgType.TEXT:
        message = await ws.receive(timeout=2.0)
    assert ws.close_code == 4001


async def test_shutdown_closes_open_websockets_and_cancels_their_tasks(api_settings):
    from aiohttp.test_utils import TestClient, TestServer

    from hub.app import build_app
    from hub.services.accounts import Passwords
    from tests.api.conftest import FAST_HASHER

    client = TestClient(TestServer(build_app(api_settings())))
    await client.start_server()
    client.app[API].accounts.passwords = Passwords(FAST_HASHER)
    agent = await make_agent(client, inboxes=["t1"])
    ws = await _connect(client, agent)
    state = client.app[API]
    # Its tasks: the pump, and the keeper of its presence (round-robin assignment).
    assert len(state.sockets) == 1 and len(state.tasks) == 2
    tasks = list(state.tasks)
    await asyncio.wait_for(client.close(), 10)
    assert ws.closed or (await ws.receive(timeout=1)).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )
    assert all(t.done() for t in tasks)
    assert not state.sockets


async def test_websocket_with_the_session_cookie_needs_the_same_origin(api):
    agent = await make_agent(api, inboxes=["t1"])
    cookie = {"Cookie": f"hub_session={agent.token}"}
    try:
        await api.ws_connect("/api/ws", headers={**cookie, "Origin": "https://evil.example"})
    except aiohttp.WSServerHandshakeError as error:
        assert error.status == 403
    else:
        raise AssertionError("a cross-site page opened the agent's feed")
    host = api.make_url("/").host
    port = api.make_url("/").port
    ws = await api.ws_connect("/api/ws", headers={**cookie, "Origin": f"http://{host}:{port}"})
    assert (await ws.receive_json(timeout=2))["type"] == "hello"
    await ws.close()
