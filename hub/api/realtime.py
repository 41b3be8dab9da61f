"""`GET /api/ws`: the agents' realtime feed.

Each connection subscribes to the hub's event bus (which carries this process's
events and, through the `events` collection, every other process's) and is sent
the events of the inboxes its agent sees. A heartbeat every `heartbeat` seconds
also re-checks the session, so an expired or revoked token, or a disabled
agent, ends the connection even when the logout happened on another process;
a logout here ends it at once (`session.ended`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from pymongo.errors import PyMongoError

from hub.api.base import SESSION_COOKIE, ApiError, ApiState, Call, RouteTable
from hub.model import utcnow
from hub.services.accounts import Accounts, Session, agent_view
from hub.services.events import Subscription
from hub.shapes import iso

log = logging.getLogger("hub.api.ws")

table = RouteTable()

# What agents are sent; events about an inbox go only to agents who see it.
PUSHED = frozenset(
    {
        "message.created",
        "message.updated",
        "conversation.updated",
        "call.incoming",
        "contact.updated",
        "contact.merged",
    }
)
SESSION_CHANGES = frozenset({"agent.updated", "team.updated"})
SESSION_ENDED = 4001  # the close code when the session ends (logout, expiry, disabled)


def may_see(session: Session, event_type: str, data: dict[str, Any]) -> bool:
    if event_type not in PUSHED:
        return False
    if event_type.startswith("contact."):
        return True
    return session.sees(data.get("inbox"))


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: a cookie cannot be riding along cross-site
    return urlsplit(origin).netloc == request.host


@table.route(
    "GET",
    "/api/ws",
    summary="WebSocket of events (message.created, message.updated, conversation.updated, "
    "call.incoming, contact.updated); authenticate with ?token=",
    role=None,
    websocket=True,
)
async def websocket(call: Call) -> web.StreamResponse:
    request = call.request
    token = request.query.get("token") or ""
    via = "bearer"
    if not token:
        token = request.cookies.get(SESSION_COOKIE) or ""
        via = "cookie"
        if token and not _same_origin(request):
            raise ApiError(403, "forbidden", "cross-site WebSocket with a cookie")
    if not token:
        raise ApiError(401, "unauthenticated", "log in first (?token=<token>)")
    session = await call.accounts.resolve(token, via)
    if session is None:
        raise ApiError(401, "unauthenticated", "the token is invalid or expired")
    state = call.state
    ws = web.WebSocketResponse(heartbeat=state.heartbeat)
    # Subscribe before the handshake completes: nothing published after the
    # client sees the connection open is missed.
    sub = call.hub.bus.subscribe(maxsize=5_000)
    pump: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        state.sockets.add(ws)
        await ws.send_json(
            {
                "type": "hello",
                "data": {
                    "agent": agent_view(session.agent),
                    "inboxes": None if session.inboxes is None else sorted(session.inboxes),
                },
            }
        )
        pump = asyncio.create_task(
            _pump(ws, sub, session, call.accounts, token, state), name="ws-pump"
        )
        state.tasks.add(pump)
        pump.add_done_callback(state.tasks.discard)
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "ping":
                await ws.send_json({"type": "pong", "data": {"at": iso(utcnow())}})
    finally:
        sub.close()
        state.sockets.discard(ws)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    return ws


async def _pump(
    ws: web.WebSocketResponse,
    sub: Subscription,
    session: Session,
    accounts: Accounts,
    token: str,
    state: ApiState,
) -> None:
    """Forward the events this session may see until the socket or session ends."""
    try:
        while not ws.closed:
            try:
                event = await sub.get(timeout=state.heartbeat)
            except TimeoutError:
                fresh = await _recheck(accounts, token, session)
                if fresh is None:
                    await ws.close(code=SESSION_ENDED, message=b"session ended")
                    return
                session = fresh
                await ws.send_json({"type": "heartbeat", "data": {"at": iso(utcnow())}})
                continue
            if event.type == "session.ended":
                if event.data.get("sid") == session.sid:
                    await ws.close(code=SESSION_ENDED, message=b"logged out")
                    return
                continue
            if event.type in SESSION_CHANGES:
                fresh = await _recheck(accounts, token, session)
                if fresh is None:
                    await ws.close(code=SESSION_ENDED, message=b"session ended")
                    return
                session = fresh
                continue
            if may_see(session, event.type, event.data):
                await ws.send_json(event.as_dict())
    except (ConnectionResetError, RuntimeError):
        return  # the client went away mid-send


async def _recheck(accounts: Accounts, token: str, session: Session) -> Session | None:
    try:
        return await accounts.resolve(token, session.via)
    except PyMongoError:
        return session  # the store is away: keep the connection, check again later


async def close_all(app: web.Application, state: ApiState) -> None:
    """On shutdown: close every WebSocket and cancel every task feeding one."""
    for ws in list(state.sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
    tasks = list(state.tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
