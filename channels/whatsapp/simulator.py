"""A simulated WhatsApp Cloud API: a real aiohttp server on 127.0.0.1 that speaks the
Graph API's `POST /{phone_number_id}/messages` and enforces a throughput limit.
The tests and the pacing benchmark send to it (the sandbox may too); it reads no
files and imports nothing of the hub.

- Auth: `Authorization: Bearer <access_token>`; a wrong or missing token gets
  Graph's HTTP 401 with error code 190.
- Shape: the body is checked the way Graph checks it (messaging_product, to,
  type and its object: text, image/audio/video/document/sticker with exactly one
  of `id` or `link`, template with name and language.code, interactive buttons
  and lists within WhatsApp's limits); a bad one gets HTTP 400 with code 100
  (invalid parameter) or 131008 (required parameter missing).
- Success: `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}],
  "messages": [{"id": "wamid...."}]}`.
- Throughput: at most `rate` accepted messages in any 1-second window. Beyond it
  the answer is Graph's own: **HTTP 400** with error code 130429 "(#130429) Rate
  limit hit", as Meta's error-code reference lists 130429 under HTTP 400 Bad
  Request (it is not a 429). `rate_limit_status=429` makes it answer 429 instead.
  Every such refusal counts in `rejected_429` (the name the pacing benchmark
  reads for "rejected for going too fast", whatever the HTTP status).
- `pair_limit`: optionally at most that many messages to one recipient in 6 s
  (Graph's pair rate, error 131056).
- `fail_next(...)` queues Graph error answers; `requests` records every request
  with its monotonic time, its body and the status answered.

`sign` and `post_notification` sign a notification body with the app secret
(`X-Hub-Signature-256`) and post it to the hub; `status_notification` builds
Meta's status webhook for a message the simulator accepted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GRAPH_TRACE = "AbCdEfGhIjKlMnOpQrStUvW"
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
CAPTION_TYPES = ("image", "video", "document")


def graph_error(
    code: int, message: str, details: str = "", error_type: str = "OAuthException"
) -> dict[str, Any]:
    """Graph's error body, as the Cloud API error-code reference shows it."""
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = GRAPH_TRACE
    return {"error": error}


RATE_LIMIT_ERROR = graph_error(
    130429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."
)
PAIR_RATE_ERROR = graph_error(
    131056,
    "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    "Message failed to send because there were too many messages sent from this phone "
    "number to the same phone number in a short period of time.",
)


class ShapeError(Exception):
    def __init__(self, code: int, message: str, details: str) -> None:
        super().__init__(message)
        self.body = graph_error(code, message, details)


def _missing(name: str) -> ShapeError:
    return ShapeError(
        131008, "(#131008) Required parameter is missing", f"Parameter '{name}' is required."
    )


def _invalid(details: str) -> ShapeError:
    return ShapeError(100, "(#100) Invalid parameter", details)


def check_message(body: Any) -> str:
    """Raise ShapeError when `body` is not a message request Graph would take;
    return the recipient's digits."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    if body.get("messaging_product") != "whatsapp":
        raise _invalid("messaging_product must be 'whatsapp'.")
    if body.get("recipient_type", "individual") != "individual":
        raise _invalid("recipient_type must be 'individual'.")
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise _missing("to")
    digits = to.lstrip("+")
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise _invalid(f"Invalid 'to' parameter: {to!r}.")
    kind = body.get("type", "text")
    part = body.get(kind)
    if not isinstance(part, dict):
        raise _missing(kind)
    if kind == "text":
        text = part.get("body")
        if not isinstance(text, str) or not text.strip():
            raise _missing("text.body")
        if len(text) > 4096:
            raise _invalid("text.body is longer than 4096 characters.")
    elif kind in MEDIA_TYPES:
        if ("id" in part) == ("link" in part):
            raise _invalid(f"{kind} needs exactly one of 'id' or 'link'.")
        if "caption" in part and kind not in CAPTION_TYPES:
            raise _invalid(f"{kind} does not take a caption.")
        if len(str(part.get("caption", ""))) > 1024:
            raise _invalid("caption is longer than 1024 characters.")
    elif kind == "template":
        if not part.get("name"):
            raise _missing("template.name")
        language = part.get("language")
        if not isinstance(language, dict) or not language.get("code"):
            raise _missing("template.language.code")
    elif kind == "interactive":
        _check_interactive(part)
    else:
        raise _invalid(f"Unsupported message type {kind!r}.")
    return digits


def _check_interactive(part: dict[str, Any]) -> None:
    body = part.get("body")
    if not isinstance(body, dict) or not body.get("text"):
        raise _missing("interactive.body.text")
    action = part.get("action")
    if not isinstance(action, dict):
        raise _missing("interactive.action")
    if part.get("type") == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise _invalid("interactive.action.buttons must hold 1 to 3 buttons.")
        for button in buttons:
            reply = button.get("reply") if isinstance(button, dict) else None
            if button.get("type") != "reply" or not isinstance(reply, dict):
                raise _invalid("Each button must be a reply button.")
            if not reply.get("id") or not 1 <= len(str(reply.get("title", ""))) <= 20:
                raise _invalid("A reply button needs an id and a title of 1 to 20 characters.")
    elif part.get("type") == "list":
        sections = action.get("sections")
        if not action.get("button") or not isinstance(sections, list) or not sections:
            raise _missing("interactive.action.sections")
        rows = [row for section in sections for row in section.get("rows", [])]
        if not 1 <= len(rows) <= 10:
            raise _invalid("A list holds 1 to 10 rows.")
        if any(not r.get("id") or not 1 <= len(str(r.get("title", ""))) <= 24 for r in rows):
            raise _invalid("A row needs an id and a title of 1 to 24 characters.")
    else:
        raise _invalid(f"Unsupported interactive type {part.get('type')!r}.")


@dataclass
class FakeWhatsApp:
    phone_number_id: str = "106540352242922"
    access_token: str = "EAAG-test-access-token"  # noqa: S105 (the simulator's own token)
    rate: float | None = None  # accepted messages per second (80 is Meta's default)
    pair_limit: int | None = None  # messages to one recipient per 6 s
    rate_limit_status: int = 400  # Graph answers 130429 with HTTP 400
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    failures: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    url: str = ""
    _window: deque[float] = field(default_factory=deque)
    _pairs: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def fail_next(
        self,
        code: int,
        message: str = "",
        *,
        status: int = 400,
        details: str = "",
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next `times` requests with Graph error `code` (or `body`)."""
        payload = body if body is not None else graph_error(code, message or f"(#{code})", details)
        for _ in range(times):
            self.failures.append((status, payload, dict(headers or {})))

    def _answer(
        self, record: dict[str, Any], status: int, payload: Any, headers: dict[str, str] | None
    ) -> web.Response:
        record["status"] = status
        return web.json_response(payload, status=status, headers=headers)

    async def messages(self, request: web.Request) -> web.Response:
        raw = await request.read()
        now = time.monotonic()
        record: dict[str, Any] = {"at": now, "path": request.path, "body": None}
        self.requests.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return self._answer(
                record,
                401,
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
                None,
            )
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return self._answer(
                record,
                400,
                graph_error(
                    100,
                    "Unsupported post request. Object with ID "
                    f"'{request.match_info['phone_number_id']}' does not exist.",
                    error_type="GraphMethodException",
                ),
                None,
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return self._answer(record, 400, _invalid("The body is not JSON.").body, None)
        record["body"] = body
        if self.failures:
            status, payload, headers = self.failures.popleft()
            return self._answer(record, status, payload, headers)
        try:
            digits = check_message(body)
        except ShapeError as error:
            return self._answer(record, 400, error.body, None)
        if self.rate is not None:
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                self.rejected_429 += 1
                return self._answer(record, self.rate_limit_status, RATE_LIMIT_ERROR, None)
        if self.pair_limit is not None:
            pair = self._pairs[digits]
            while pair and now - pair[0] >= 6.0:
                pair.popleft()
            if len(pair) >= self.pair_limit:
                return self._answer(record, 400, PAIR_RATE_ERROR, None)
            pair.append(now)
        if self.rate is not None:
            self._window.append(now)
        wamid = self.new_wamid(digits)
        self.sent.append({**body, "id": wamid, "at": now})
        message: dict[str, Any] = {"id": wamid}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": digits}],
            "messages": [message],
        }
        return self._answer(record, 200, answer, None)

    def new_wamid(self, digits: str) -> str:
        serial = next(self._ids)
        token = base64.b64encode(f"{digits}:{serial:012d}".encode()).decode()
        return f"wamid.{token}"

    def status_notification(
        self, wamid: str, status: str, recipient: str, errors: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Meta's status webhook for a message the simulator accepted."""
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient.lstrip("+"),
        }
        if errors:
            entry["errors"] = errors
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": self.phone_number_id,
                                },
                                "statuses": [entry],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{phone_number_id}/messages", self.messages)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def sign(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` Meta puts on `body`."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def post_notification(
    client: Any,
    path: str,
    payload: bytes | dict[str, Any],
    app_secret: str,
    *,
    signature: str | None = None,
) -> Any:
    """Post a notification to the hub as Meta does: the raw JSON body, signed.

    `client` is anything with aiohttp's `post` (a TestClient, or a ClientSession
    with an absolute `path`); `signature` overrides the computed one.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signature if signature is not None else sign(app_secret, body),
    }
    return await client.post(path, data=body, headers=headers)
