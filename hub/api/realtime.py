"""`GET /api/ws`: the agents' realtime feed.

Each connection subscribes to the hub's event bus (which carries this process's
events and, through the `events` collection, every other process's) and is sent
the events of the inboxes its agent sees, and the events about the contacts its
agent may see (hub.services.visibility), with only the conversations of its
inboxes in them. A heartbeat every `heartbeat` seconds
also re-checks the session, so an expired or revoked token, or a disabled
agent, ends the connection even when the logout happened on another process;
a logout here ends it at once (`session.ended`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from pymongo.errors import PyMongoError

from hub.api.base import SESSION_COOKIE, ApiError, ApiState, Call, RouteTable
from hub.model import Event, utcnow
from hub.services import presence
from hub.services.accounts import Accounts, Session, agent_view
from hub.services.events import Subscription
from hub.services.notify import NOTICES, addressed_to, without_address
from hub.services.visibility import Audience, audience_of
from hub.shapes import iso
from hub.store import Store

log = logging.getLogger("hub.api.ws")

table = RouteTable()

# What agents are sent; events about an inbox go only to agents who see it, events
# about a contact only to agents who may see the contact.
CONTACT_EVENTS = frozenset({"contact.updated", "contact.merged"})
PUSHED = frozenset(
    {
        "message.created",
        "message.updated",
        "conversation.updated",
        "call.incoming",
        *CONTACT_EVENTS,
    }
)
SESSION_CHANGES = frozenset({"agent.updated", "team.updated"})
SESSION_ENDED = 4001  # the close code when the session ends (logout, expiry, disabled)
AUDIENCES_KEPT = 256


def may_see(session: Session, event_type: str, data: dict[str, Any]) -> bool:
    """Whether an event about an inbox is for this session (contact events are
    decided by `shown`, which reads who may see the contact)."""
    if event_type not in PUSHED or event_type in CONTACT_EVENTS:
        return False
    return session.sees(data.get("inbox"))


class Audiences:
    """Who may see the contact of each contact event: read from the store once per
    event, however many of this process's sockets ask (each waits on one read)."""

    def __init__(self, kept: int = AUDIENCES_KEPT) -> None:
        self.kept = kept
        # By the event's identity; the event is kept with it, so its id is not reused.
        self._reads: OrderedDict[int, tuple[Event, asyncio.Task[Audience | None]]] = OrderedDict()

    async def of(self, store: Store, event: Event) -> Audience | None:
        contact_id = event.data.get("id")
        if not isinstance(contact_id, str):
            return None
        entry = self._reads.get(id(event))
        if entry is None or entry[0] is not event:
            task = asyncio.ensure_future(audience_of(store, contact_id))
            task.add_done_callback(_observe)
            entry = self._reads[id(event)] = (event, task)
            while len(self._reads) > self.kept:
                self._reads.popitem(last=False)
        return await asyncio.shield(entry[1])


def _observe(task: asyncio.Task[Audience | None]) -> None:
    # Each socket waiting on the read gets its error; none waiting must not warn.
    if not task.cancelled():
        task.exception()


AUDIENCES = Audiences()


def narrowed(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """A contact event's data with only the conversations in the session's inboxes."""
    conversations = data.get("conversations")
    if session.inboxes is None or conversations is None:
        return data
    if not isinstance(conversations, list):
        return {**data, "conversations": []}
    kept = [c for c in conversations if isinstance(c, dict) and session.sees(c.get("inbox"))]
    return {**data, "conversations": kept}


async def shown(store: Store | None, session: Session, event: Event) -> dict[str, Any] | None:
    """What this session is sent of `event`, or None when it is not for it."""
    if event.type in NOTICES:  # for the agents it names (hub.services.notify)
        if addressed_to(event.data, session.agent_id, session.role) and session.sees(
            event.data.get("inbox")
        ):
            return {"type": event.type, "data": without_address(event.data)}
        return None
    if event.type not in CONTACT_EVENTS:
        return event.as_dict() if may_see(session, event.type, event.data) else None
    if session.inboxes is None:
        return event.as_dict()
    if store is None:
        return None
    try:
        audience = await AUDIENCES.of(store, event)
    except PyMongoError:
        log.warning("contact event withheld: the store is away", extra={"event": event.type})
        return None
    if audience is None or not audience.admits(session.agent_id, session.inboxes):
        return None
    return {"type": event.type, "data": narrowed(session, event.data)}


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: a cookie cannot be riding along cross-site
    return urlsplit(origin).netloc == request.host


@table.route(
    "GET",
    "/api/ws",
    summary="WebSocket of events (message.created, message.updated, conversation.updated, "
    "call.incoming, contact.updated, sla.breached, reminder.due, snooze.ended); "
    "authenticate with ?token=",
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
    present: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        state.sockets.add(ws)
        if call.hub.store is not None:
            # An open inbox socket makes its agent one round robin may pick.
            present = asyncio.create_task(
                _keep_present(call.hub.store, session.agent_id, call.hub.instance_id),
                name="ws-presence",
            )
            state.tasks.add(present)
            present.add_done_callback(state.tasks.discard)
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
            _pump(ws, sub, session, call.accounts, token, state, call.hub.store),
            name="ws-pump",
        )
        state.tasks.add(pump)
        pump.add_done_callback(state.tasks.discard)
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "ping":
                await ws.send_json({"type": "pong", "data": {"at": iso(utcnow())}})
    finally:
        sub.close()
        state.sockets.discard(ws)
        if present is not None:
            present.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await present
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
    store: Store | None = None,
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
            message = await shown(store, session, event)
            if message is not None:
                await ws.send_json(message)
    except (ConnectionResetError, RuntimeError):
        return  # the client went away mid-send


async def _keep_present(store: Store, agent_id: str, instance_id: str) -> None:
    """Keep this socket's presence (hub.services.presence) while it is open, and
    remove it when the socket closes."""
    presence_id: str | None = None
    try:
        while True:
            try:
                if presence_id is None:
                    presence_id = await presence.opened(store, agent_id, instance_id)
                else:
                    await presence.renew(store, presence_id, agent_id)
            except PyMongoError as error:
                log.warning("presence not recorded", extra={"error": str(error)})
            await asyncio.sleep(presence.RENEW_SECONDS)
    finally:
        if presence_id is not None:
            with contextlib.suppress(PyMongoError):
                await asyncio.shield(presence.closed(store, presence_id))


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
