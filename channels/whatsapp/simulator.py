"""A simulated WhatsApp Cloud API: a real aiohttp server on 127.0.0.1 that speaks the
Graph API's `POST /{phone_number_id}/messages` and enforces a throughput limit.
The tests and the pacing benchmark send to it, and the sandbox puts it in Meta's
place (`channels.simulation`); it reads no files and imports nothing of the hub but
the inbox settings.

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

The sandbox attaches its WhatsApp inboxes: each is one more phone number (its id and
access token). What such a number sends is shown to the customer
(`Customers.received`) and followed, over the delivery delay, by the `sent` and
`delivered` status notifications, signed with the inbox's app secret. Its customer
side (`write`) posts the notification of a customer's text message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from channels.base import ChannelSettings
from channels.simulation import (
    Customers,
    Delivered,
    Handed,
    HttpSimulator,
    LineOffer,
    Medium,
    Place,
    Receipt,
    Step,
    Writing,
    keep_last,
    report_delivery,
)
from channels.whatsapp.settings import WhatsAppSettings

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


# The account's templates as Graph lists them (`GET /{waba_id}/message_templates`);
# only APPROVED ones may be sent.
DEFAULT_TEMPLATES: tuple[dict[str, Any], ...] = (
    {
        "id": "594425479261595",
        "name": "hello_world",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            {
                "type": "BODY",
                "text": "Welcome and congratulations!! This message demonstrates your "
                "ability to send a WhatsApp message notification from the Cloud API, hosted "
                "by Meta. Thank you for taking the time to test with us.",
            },
        ],
    },
    {
        "id": "594425479261596",
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Your order {{1}} has shipped."}],
    },
    {
        "id": "594425479261600",
        "name": "appointment_reminder",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [
            {"type": "BODY", "text": "Hello {{1}}, your appointment is on {{2}}."},
        ],
    },
    {
        "id": "594425479261597",
        "name": "follow_up",
        "language": "en_US",
        "status": "APPROVED",
        "category": "MARKETING",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Still there?"},
            {
                "type": "BODY",
                "text": "We have not heard from you. Reply to pick up where we left off.",
            },
            {"type": "FOOTER", "text": "Reply STOP to opt out"},
        ],
    },
    {
        "id": "594425479261598",
        "name": "follow_up",
        "language": "ru",
        "status": "APPROVED",
        "category": "MARKETING",
        "components": [
            {"type": "BODY", "text": "Мы давно не слышали от вас. Ответьте, чтобы продолжить."},
        ],
    },
    {
        "id": "594425479261599",
        "name": "summer_sale",
        "language": "en_US",
        "status": "REJECTED",
        "category": "MARKETING",
        "components": [{"type": "BODY", "text": "Everything half price, {{1}}!"}],
    },
)
TEMPLATE_MISSING = 132001
TEMPLATE_PARAMS = 132000


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
class Number:
    """A business phone number the simulator serves: the default one, or an attached
    inbox's."""

    phone_number_id: str
    access_token: str
    settings: WhatsAppSettings | None = None  # an attached inbox's
    inbox: str | None = None


@dataclass
class FakeWhatsApp(HttpSimulator):
    phone_number_id: str = "106540352242922"  # the default number ("": none)
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
    display_phone_number: str = "15550783881"  # in every notification's metadata
    business_account_id: str = "102290129340398"
    history: int | None = None  # requests and sent kept (None: all)
    customers: Customers | None = None  # the sandbox's customer side
    numbers: dict[str, Number] = field(default_factory=dict)
    # The business account's templates (Graph's shape); a template send must name
    # an approved one with as many body parameters as its placeholders.
    templates: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(t) for t in DEFAULT_TEMPLATES]
    )
    template_reads: int = 0  # GET .../message_templates requests answered
    # Uploaded media (`POST /{phone_number_id}/media`): id -> {bytes, type, filename}.
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    media_downloads: int = 0  # media URL downloads answered
    _window: deque[float] = field(default_factory=deque)
    _pairs: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # wamids differ from one run to the next (a store outlives the simulator).
    _run: str = field(default_factory=lambda: secrets.token_hex(4))

    def __post_init__(self) -> None:
        if self.phone_number_id:
            self.numbers[self.phone_number_id] = Number(self.phone_number_id, self.access_token)

    # -- the sandbox -------------------------------------------------------------------

    @classmethod
    def for_sandbox(cls, customers: Customers) -> FakeWhatsApp:
        return cls(
            phone_number_id="",
            display_phone_number="15550100000",
            business_account_id="100000000000001",
            history=1000,
            customers=customers,
        )

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        assert isinstance(settings, WhatsAppSettings)
        self.numbers[settings.phone_number_id] = Number(
            settings.phone_number_id, settings.access_token, settings, inbox
        )
        return settings.model_copy(update={"api_base": place.api_base})

    def _attached(self, inbox: str) -> tuple[Number, WhatsAppSettings]:
        for number in self.numbers.values():
            if number.inbox == inbox and number.settings is not None:
                return number, number.settings
        raise LookupError(f"no WhatsApp inbox {inbox!r} attached")

    def lines(self, inbox: str) -> list[LineOffer]:
        self._attached(inbox)
        business = f"+{self.display_phone_number}"
        return [LineOffer("whatsapp", f"WhatsApp to {business}", business)]

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        """Post the notification of a customer's text message to the number."""
        number, _ = self._attached(inbox)
        digits = writing.customer.address.lstrip("+")
        wamid = self.new_wamid(digits)
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": self._metadata(number.phone_number_id),
            "contacts": [{"profile": {"name": writing.customer.name or digits}, "wa_id": digits}],
            "messages": [
                {
                    "from": digits,
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": writing.text},
                }
            ],
        }
        status, answer = await self._to_hub(number, self.notification(value))
        return Handed(status, answer, provider_id=wamid)

    async def _to_hub(self, number: Number, payload: dict[str, Any]) -> tuple[int, str]:
        """Post a notification to the attached number's inbox, signed as Meta does."""
        assert self.customers is not None and number.settings is not None
        assert number.inbox is not None
        body = json.dumps(payload).encode()
        return await self.customers.post(
            self.customers.webhook_url(number.inbox),
            body,
            {
                "Content-Type": "application/json",
                "User-Agent": "facebookexternalua",
                "X-Hub-Signature-256": sign(number.settings.app_secret, body),
            },
        )

    def _show(self, number: Number, digits: str, wamid: str, body: dict[str, Any]) -> None:
        """Show an attached number's message to its customer; then report it."""
        customers = self.customers
        assert customers is not None and number.inbox is not None
        receipt: Receipt = customers.received(
            Delivered(
                inbox=number.inbox,
                medium="whatsapp",
                address=f"+{digits}",
                text=shown_text(body),
                provider_id=wamid,
            )
        )

        def step(status: str) -> Step:
            payload = self.status_notification(
                wamid, status, digits, phone_number_id=number.phone_number_id
            )
            return lambda: self._to_hub(number, payload)

        customers.spawn(report_delivery(customers, receipt, [step("sent"), step("delivered")]))

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
        keep_last(self.requests, self.history)
        if self.delay:
            await asyncio.sleep(self.delay)
        number = self.numbers.get(request.match_info["phone_number_id"])
        given = request.headers.get("Authorization", "").encode()
        tokens = (
            [number.access_token] if number else [n.access_token for n in self.numbers.values()]
        )
        if not any(hmac.compare_digest(given, f"Bearer {t}".encode()) for t in tokens):
            return self._answer(
                record,
                401,
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
                None,
            )
        if number is None:
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
            if body.get("type") == "template":
                self._check_template(body["template"])
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
        keep_last(self.sent, self.history)
        if number.inbox is not None:
            self._show(number, digits, wamid, body)
        message: dict[str, Any] = {"id": wamid}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": digits}],
            "messages": [message],
        }
        return self._answer(record, 200, answer, None)

    def _check_template(self, part: dict[str, Any]) -> None:
        """Graph's checks of a template send: an approved template of that name
        and language, and a body parameter for each of its placeholders."""
        code = (part.get("language") or {}).get("code")
        found = next(
            (
                t
                for t in self.templates
                if t["name"] == part.get("name")
                and t["language"] == code
                and t.get("status") == "APPROVED"
            ),
            None,
        )
        if found is None:
            raise ShapeError(
                TEMPLATE_MISSING,
                "(#132001) Template name does not exist in the translation",
                f"template name ({part.get('name')}) does not exist in {code}",
            )
        body_text = next(
            (c.get("text", "") for c in found["components"] if c["type"] == "BODY"), ""
        )
        wanted = len(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", body_text)))
        given = sum(
            len(c.get("parameters") or [])
            for c in part.get("components") or []
            if str(c.get("type", "")).lower() == "body"
        )
        if wanted != given:
            raise ShapeError(
                TEMPLATE_PARAMS,
                "(#132000) Number of parameters does not match the expected number of params",
                f"body: number of localizable_params ({given}) does not match the expected "
                f"number of params ({wanted})",
            )

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return any(
            hmac.compare_digest(given, f"Bearer {n.access_token}".encode())
            for n in self.numbers.values()
        )

    async def message_templates(self, request: web.Request) -> web.Response:
        """`GET /{waba_id}/message_templates?status=&limit=&after=`: one page."""
        if not self._authorised(request):
            return web.json_response(
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
                status=401,
            )
        self.template_reads += 1
        wanted = request.query.get("status", "").upper()
        items = [t for t in self.templates if not wanted or t.get("status") == wanted]
        limit = max(1, min(int(request.query.get("limit", "25") or 25), 250))
        start = int(request.query.get("after", "0") or 0)
        page = items[start : start + limit]
        paging: dict[str, Any] = {"cursors": {"before": str(start), "after": str(start + limit)}}
        if start + limit < len(items):
            query = {**request.query, "after": str(start + limit)}
            paging["next"] = str(request.url.with_query(query))
        return web.json_response({"data": page, "paging": paging})

    async def upload_media(self, request: web.Request) -> web.Response:
        """`POST /{phone_number_id}/media` (multipart: messaging_product, type, file):
        the bytes are kept under a new media id."""
        if not self._authorised(request):
            return web.json_response(
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
                status=401,
            )
        form = await request.post()
        upload = form.get("file")
        if form.get("messaging_product") != "whatsapp":
            return web.json_response(_missing("messaging_product").body, status=400)
        if not isinstance(upload, web.FileField):
            return web.json_response(_missing("file").body, status=400)
        data = upload.file.read()
        media_id = str(10**15 + len(self.media) + 1)
        self.media[media_id] = {
            "bytes": data,
            "type": str(form.get("type") or upload.content_type),
            "filename": upload.filename,
        }
        return web.json_response({"id": media_id})

    def put_media(self, data: bytes, content_type: str, filename: str | None = None) -> str:
        """A file a customer sent: its media id, as a notification names it."""
        media_id = str(10**15 + len(self.media) + 1)
        self.media[media_id] = {"bytes": data, "type": content_type, "filename": filename}
        return media_id

    async def media_info(self, request: web.Request) -> web.Response:
        """`GET /{media-id}`: the media's short-lived download URL, type and size."""
        if not self._authorised(request):
            return web.json_response(
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
                status=401,
            )
        media_id = request.match_info["media_id"]
        found = self.media.get(media_id)
        if found is None:
            return web.json_response(
                graph_error(100, "Invalid parameter", f"Unsupported get request: {media_id}"),
                status=400,
            )
        data: bytes = found["bytes"]
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"{self.url}/media-download/{media_id}",
                "mime_type": found["type"],
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data),
                "id": media_id,
            }
        )

    async def download_media(self, request: web.Request) -> web.Response:
        """The media URL's bytes, with the same Bearer token (as lookaside.fbsbx.com)."""
        self.media_downloads += 1
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        found = self.media.get(request.match_info["media_id"])
        if found is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=found["bytes"], content_type="application/octet-stream")

    def new_wamid(self, digits: str) -> str:
        serial = next(self._ids)
        token = base64.b64encode(f"{digits}:{self._run}{serial:012d}".encode()).decode()
        return f"wamid.{token}"

    def _metadata(self, phone_number_id: str) -> dict[str, str]:
        return {
            "display_phone_number": self.display_phone_number,
            "phone_number_id": phone_number_id,
        }

    def notification(self, value: dict[str, Any]) -> dict[str, Any]:
        """Meta's webhook envelope around one change of the `messages` field."""
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self.business_account_id,
                    "changes": [{"value": value, "field": "messages"}],
                }
            ],
        }

    def status_notification(
        self,
        wamid: str,
        status: str,
        recipient: str,
        errors: list[dict[str, Any]] | None = None,
        *,
        phone_number_id: str | None = None,
    ) -> dict[str, Any]:
        """Meta's status webhook for a message the simulator accepted (with the
        conversation and pricing Meta adds to `sent` and `delivered`)."""
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient.lstrip("+"),
        }
        if status in ("sent", "delivered"):
            entry["conversation"] = {
                "id": secrets.token_hex(16),
                "origin": {"type": "service"},
            }
            entry["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "service"}
        if errors:
            entry["errors"] = errors
        value = {
            "messaging_product": "whatsapp",
            "metadata": self._metadata(phone_number_id or self.phone_number_id),
            "statuses": [entry],
        }
        return self.notification(value)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{phone_number_id}/messages", self.messages)
        app.router.add_post("/{phone_number_id}/media", self.upload_media)
        app.router.add_get("/media-download/{media_id}", self.download_media)
        app.router.add_get("/{media_id}", self.media_info)
        app.router.add_get("/{waba_id}/message_templates", self.message_templates)
        return app


def shown_text(body: dict[str, Any]) -> str:
    """What the customer's WhatsApp shows of a message the Graph API accepted."""
    kind = body.get("type", "text")
    part = body.get(kind) or {}
    if kind == "text":
        return str(part.get("body") or "")
    if kind == "template":
        return f"[template {part.get('name', '?')}]"
    if kind in MEDIA_TYPES:
        caption = str(part.get("caption") or "")
        return (caption + f"\n[{kind}] {part.get('link') or part.get('id') or ''}").strip()
    if kind == "interactive":
        text = str((part.get("body") or {}).get("text") or "")
        action = part.get("action") or {}
        titles = [
            str((b.get("reply") or {}).get("title", ""))
            for b in action.get("buttons", [])
            if isinstance(b, dict)
        ]
        for section in action.get("sections", []):
            titles += [str(r.get("title", "")) for r in section.get("rows", [])]
        return (text + "\n" + " ".join(f"[{t}]" for t in titles if t)).strip()
    return f"[{kind}]"


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
