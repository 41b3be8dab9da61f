"""What every API route shares: the route table, authentication, CSRF, role
checks, validation of queries and bodies, errors in the contract's shape, cursors.

A route is declared once, with its method, path, role and pydantic types; the
handler the router calls and the OpenAPI document are both made from that
declaration, so they cannot disagree.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hub.api.addressing import client_address
from hub.jsontext import UnreadableJson
from hub.jsontext import parse_json as read_json
from hub.services import audit
from hub.services.accounts import Accounts, LoginLimiter, Session, UnknownTeams, token_hash
from hub.services.campaigns import CampaignError, CampaignStateError
from hub.services.canned import ShortcutTaken
from hub.services.contacts import IdentityTaken, InvalidContact
from hub.services.conversations import AssigneeCannotSee, InvalidChange, NotInConversation
from hub.services.outbox import OutboxError
from hub.services.paging import BadCursor
from hub.services.reminders import InvalidReminder, NoSuchReminder
from hub.services.runtime import HUB, Hub
from hub.services.send_later import InvalidSendAt, NoSuchMessage, NotScheduled

log = logging.getLogger("hub.api")

SESSION_COOKIE = "hub_session"
CSRF_COOKIE = "hub_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(Exception):
    """An answer in the contract's error shape: `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message)


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def forbidden(message: str = "you may not do this") -> ApiError:
    return ApiError(403, "forbidden", message)


@dataclass
class ApiState:
    """The API's own long-lived parts (one per application)."""

    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    accounts: Accounts | None = None
    # Open WebSockets and the tasks that feed them, closed and cancelled on shutdown.
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    tasks: set[Any] = field(default_factory=set)
    heartbeat: float = 20.0
    secure_cookies: bool = False


API: web.AppKey[ApiState] = web.AppKey("api", ApiState)


@dataclass
class Call:
    """One authenticated, validated API request, as a handler receives it."""

    request: web.Request
    hub: Hub
    state: ApiState
    accounts: Accounts
    session: Session | None
    body: Any = None
    query: Any = None

    @property
    def me(self) -> Session:
        assert self.session is not None
        return self.session

    def param(self, name: str) -> str:
        value = self.request.match_info[name]
        if not value or len(value) > 64 or not all(c.isalnum() or c in "_:-" for c in value):
            raise not_found(name)
        return value


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: str | None = "agent"  # the least role allowed; None: no login needed
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    websocket: bool = False
    # Also takes multipart/form-data (files): the handler reads it (call.body None).
    multipart: bool = False


class RouteTable:
    """The routes one module declares."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        role: str | None = "agent",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        websocket: bool = False,
        multipart: bool = False,
    ) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method,
                    path,
                    handler,
                    summary,
                    role,
                    body,
                    query,
                    response,
                    status,
                    websocket,
                    multipart,
                )
            )
            return handler

        return add


def validation_message(error: ValidationError, whole: str = "body") -> str:
    """The first errors, each after the field it is about (`whole` when the
    error is about the body or query as a whole)."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or whole
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def authenticate(request: web.Request, accounts: Accounts) -> Session:
    """The request's session (Bearer header, else the session cookie), or 401.
    A cookie session must show its CSRF token on a state-changing request (403)."""
    token = bearer_token(request)
    via = "bearer"
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
        via = "cookie"
    if not token:
        raise ApiError(401, "unauthenticated", "log in first (Authorization: Bearer <token>)")
    session = await accounts.resolve(token, via)
    if session is None:
        raise ApiError(401, "unauthenticated", "the token is invalid or expired")
    if via == "cookie" and request.method not in SAFE_METHODS:
        check_csrf(request, session)
    return session


def check_csrf(request: web.Request, session: Session) -> None:
    """Double submit, bound to the session: the header must repeat the CSRF cookie,
    and be the CSRF token issued with this session."""
    header = request.headers.get(CSRF_HEADER, "")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if (
        not header
        or not hmac.compare_digest(header.encode(), cookie.encode())
        or session.csrf_hash is None
        or not hmac.compare_digest(token_hash(header), session.csrf_hash)
    ):
        raise ApiError(403, "csrf", f"a cookie session needs the {CSRF_HEADER} header")


# The largest JSON body a route reads (the largest real one, a contact with every
# field full, is about 150 kB).
MAX_BODY_BYTES = 1024 * 1024


def too_large() -> ApiError:
    return ApiError(413, "too_large", f"the body may hold at most {MAX_BODY_BYTES} bytes")


async def read_capped(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, or 413 once it is longer than `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise too_large()
            chunks.append(chunk)
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """`data` as JSON, or 400 saying why not (`hub.jsontext.parse_json`)."""
    try:
        return read_json(data)
    except UnreadableJson as error:
        raise ApiError(400, "bad_request", str(error)) from None


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw: Any = parse_json(await read_capped(request)) if request.can_read_body else {}
    if not isinstance(raw, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ApiError(400, "invalid", validation_message(error)) from None


def read_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(400, "invalid", f"{key}: given more than once")
        raw[key] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ApiError(400, "invalid", validation_message(error, "query")) from None


# A service's refusal, as the API answers it: (status, code); the message is the
# error's own text. A handler lets these through rather than catching them.
SERVICE_ERROR_STATUS: dict[type[Exception], tuple[int, str]] = {
    BadCursor: (400, "invalid"),
    InvalidChange: (400, "invalid"),
    NotInConversation: (400, "invalid"),
    AssigneeCannotSee: (422, "no_access"),
    OutboxError: (409, "reply_refused"),
    InvalidContact: (400, "invalid"),
    IdentityTaken: (409, "identity_taken"),
    ShortcutTaken: (409, "shortcut_taken"),
    UnknownTeams: (400, "invalid"),
    CampaignError: (422, "invalid_campaign"),
    CampaignStateError: (409, "campaign_state"),
    InvalidSendAt: (422, "invalid_send_at"),
    NotScheduled: (409, "not_scheduled"),
    NoSuchMessage: (404, "not_found"),
    InvalidReminder: (422, "invalid_reminder"),
    NoSuchReminder: (404, "not_found"),
}
SERVICE_ERRORS = tuple(SERVICE_ERROR_STATUS)


def service_error(error: Exception) -> ApiError:
    status, code = next(
        answer for kind, answer in SERVICE_ERROR_STATUS.items() if isinstance(error, kind)
    )
    return ApiError(status, code, str(error))


def make_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[API]
        try:
            if state.accounts is None:
                raise ApiError(503, "starting", "the hub is starting")
            session = None
            if route.role is not None:
                session = await authenticate(request, state.accounts)
                if not session.may(route.role):
                    raise forbidden(f"this needs the {route.role} role")
            call = Call(request, request.app[HUB], state, state.accounts, session)
            # Where the request came from, for the audit log of what it changes.
            audit.ORIGIN.set(
                client_address(
                    request.remote,
                    request.headers.getall("X-Forwarded-For", []),
                    call.hub.settings.server.trusted_proxies,
                )
            )
            if route.query is not None:
                call.query = read_query(request, route.query)
            form = route.multipart and request.content_type == "multipart/form-data"
            if route.body is not None and not form:
                call.body = await read_body(request, route.body)
            try:
                result = await route.handler(call)
            except SERVICE_ERRORS as error:
                raise service_error(error) from None
        except ApiError as error:
            return error.response()
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=route.status)

    handle.__name__ = route.handler.__name__
    return handle


def shared_answers(route: Route) -> set[int]:
    """The error statuses every route declared like `route` can answer, whatever
    its handler does: make_handler's (and the app's error middleware's) part. The
    OpenAPI document lists them; keep the two together."""
    statuses = {503}  # the hub is starting, or the store is unavailable
    if route.role is not None:
        statuses.add(401)
        # Every agent has the least role, "agent"; a cookie session needs CSRF on
        # a state-changing method.
        if route.role != "agent" or route.method not in SAFE_METHODS:
            statuses.add(403)
    if route.query is not None:
        statuses.add(400)
    if route.body is not None:
        statuses |= {400, 413}
    return statuses
