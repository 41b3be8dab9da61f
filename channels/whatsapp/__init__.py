"""WhatsApp Cloud API (Meta): notifications in, Graph API messages out.

Routes, under `/webhooks/whatsapp/{inbox}`:

- `GET ""`: Meta's verification handshake. `hub.mode=subscribe` with a
  `hub.verify_token` equal (in constant time) to the inbox's `verify_token` is
  answered 200 with `hub.challenge` as a `text/plain` body; anything else 403.
- `POST ""`: notifications. `X-Hub-Signature-256` must be `sha256=` + the hex
  HMAC-SHA256 of the raw body with the app secret (403 otherwise). The body is
  parsed into typed models at the edge (400 when it is not JSON or not shaped
  like a WhatsApp notification), then every entry, every change and every
  message and status of the batch is normalised before anything is written: one
  `ingest` call takes all the messages, one `record_status` call all the statuses.

Inbound messages map onto the hub's types through `MESSAGE_HANDLERS`, an explicit
map from Meta's message `type` to a handler; `IGNORED_MESSAGE_TYPES` names the
types acknowledged and logged as ignored. A type in neither is logged as unknown
and ignored too (Meta adds types without notice; the batch must not fail for it).
Media become attachments whose URL names the media id (`whatsapp-media:<id>`):
Meta's media URLs need the access token and expire, the id does not. A reaction
is stored as a text message holding the emoji, with `extra.reaction` and
`extra.reaction_to` (the reacted-to message id) so the agent sees it in the
thread; removing a reaction is logged as ignored. The sender is the `from` phone
number in E.164 with the profile name from `contacts[]`; the provider id is the
message id (`wamid...`), so Meta's retries are stored once. Changes of another
`phone_number_id` (a shared WhatsApp Business Account) and change fields other
than `messages` are logged as ignored.

Sending: `POST {api_base}/{phone_number_id}/messages` with the access token as a
Bearer token: text, media (`link`, or `id` for `whatsapp-media:` URLs), approved
templates (`OutboundMessage.template`) and reply buttons or a list
(`OutboundMessage.buttons`). Outside the 24-hour customer-service window only a
template may be sent: `reply_refusal` says so before the reply is queued and
`send` refuses such a message before calling the API. Graph errors are
classified in `classify_graph_error`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    TransientSendError,
)
from channels.signing import read_limited
from hub.addresses import InvalidIdentity, normalize_email, normalize_phone, phone_ref
from hub.model import (
    Attachment,
    ButtonReply,
    IdentityRef,
    InboundButton,
    InboundEvent,
    InboundLocation,
    InboundMedia,
    InboundSharedContact,
    InboundText,
    Location,
    OutboundMessage,
    SendResult,
    SharedContact,
    StatusUpdate,
    utcnow,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="
OBJECT = "whatsapp_business_account"
MEDIA_URL_PREFIX = "whatsapp-media:"
WINDOW = timedelta(hours=24)
WINDOW_REASON = "outside WhatsApp's 24-hour customer-service window: send an approved template"

# Graph's limits on what one message may carry (Cloud API "send messages" reference).
TEXT_MAX = 4096
CAPTION_MAX = 1024
BUTTONS_BODY_MAX = 1024
LIST_BODY_MAX = 4096
REPLY_BUTTONS_MAX = 3
LIST_ROWS_MAX = 10
BUTTON_TITLE_MAX = 20
ROW_TITLE_MAX = 24
BUTTON_ID_MAX = 256
LIST_BUTTON_LABEL = "Options"


class WhatsAppSettings(ChannelSettings):
    # The business phone number's id (WhatsApp Manager > API setup), not the number.
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    # A system-user access token with whatsapp_business_messaging.
    access_token: str = Field(min_length=1, json_schema_extra={"secret": True})
    # The Meta app's secret: Meta signs every notification with it.
    app_secret: str = Field(min_length=8, json_schema_extra={"secret": True})
    # The token typed into the app's webhook settings; Meta echoes it on verification.
    verify_token: str = Field(min_length=8, json_schema_extra={"secret": True})
    api_base: str = "https://graph.facebook.com/v21.0"
    # Messages per second for this phone number (Cloud API: 80 by default, up to 1000).
    rate: float = Field(default=80.0, gt=0, le=1000)
    # Larger notification bodies are refused (413) before they are parsed.
    max_body_bytes: int = Field(default=1024 * 1024, ge=16 * 1024, le=16 * 1024 * 1024)

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


# -- the notification, as Meta sends it ------------------------------------------------


class _Wire(BaseModel):
    """Provider JSON: unknown fields are ignored (Meta adds fields without notice)."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)


class Change(_Wire):
    field: str
    # Parsed further according to `field`; a `messages` value becomes `MessagesValue`.
    value: dict[str, Any]


class Entry(_Wire):
    id: str
    changes: list[Change]


class Notification(_Wire):
    object: str
    entry: list[Entry]


class Metadata(_Wire):
    phone_number_id: str
    display_phone_number: str | None = None


class Profile(_Wire):
    name: str | None = None


class WaContact(_Wire):
    wa_id: str | None = None
    profile: Profile | None = None


class ErrorData(_Wire):
    details: str | None = None


class WaError(_Wire):
    code: int
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None

    def describe(self) -> str:
        """`title: details`, without repeating what the two share."""
        head = self.title or self.message or f"error {self.code}"
        details = self.error_data.details if self.error_data else None
        return f"{head}: {details}" if details and details not in head else head


class Text(_Wire):
    body: str


class Media(_Wire):
    id: str = Field(min_length=1, max_length=256)
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class WaLocation(_Wire):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactName(_Wire):
    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class ContactPhone(_Wire):
    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class ContactEmail(_Wire):
    email: str | None = None
    type: str | None = None


class WaSharedContact(_Wire):
    name: ContactName | None = None
    phones: list[ContactPhone] = []
    emails: list[ContactEmail] = []


class Reply(_Wire):
    id: str = Field(min_length=1)
    title: str | None = None
    description: str | None = None


class Interactive(_Wire):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None


class QuickReply(_Wire):
    payload: str | None = None
    text: str | None = None


class Reaction(_Wire):
    message_id: str
    emoji: str | None = None


class Context(_Wire):
    id: str | None = None
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class WaMessage(_Wire):
    from_: str = Field(alias="from", min_length=1, max_length=32)
    id: str = Field(min_length=1, max_length=512)
    timestamp: str
    type: str
    context: Context | None = None
    text: Text | None = None
    image: Media | None = None
    document: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    sticker: Media | None = None
    location: WaLocation | None = None
    contacts: list[WaSharedContact] | None = None
    interactive: Interactive | None = None
    button: QuickReply | None = None
    reaction: Reaction | None = None
    errors: list[WaError] = []


class WaStatus(_Wire):
    id: str = Field(min_length=1, max_length=512)
    status: str
    timestamp: str
    recipient_id: str | None = None
    errors: list[WaError] = []


class MessagesValue(_Wire):
    """The value of a `messages` change: messages from users or statuses of ours."""

    messaging_product: str | None = None
    metadata: Metadata
    contacts: list[WaContact] = []
    messages: list[WaMessage] = []
    statuses: list[WaStatus] = []
    errors: list[WaError] = []


# -- normalising a batch ---------------------------------------------------------------


class Malformed(Exception):
    """The notification is not shaped like Meta's: the whole POST is a 400."""


class Ignored(Exception):
    """A known message the hub does not store: acknowledged and logged."""


@dataclass
class Batch:
    """Everything one notification holds, normalised before anything is written."""

    events: list[InboundEvent] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (what, why)


@dataclass(frozen=True)
class Inbound:
    """What every event of one message shares."""

    inbox: str
    provider_id: str
    sender: IdentityRef
    received_at: datetime
    extra: dict[str, str]

    def fields(self, **more: Any) -> dict[str, Any]:
        extra = {**self.extra, **more.pop("extra", {})}
        return {
            "inbox": self.inbox,
            "medium": "whatsapp",
            "provider_id": more.pop("provider_id", self.provider_id),
            "sender": self.sender,
            "received_at": self.received_at,
            "extra": extra,
            **more,
        }


MessageHandler = Callable[[WaMessage, Inbound, str], list[InboundEvent]]


def _text(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    text = _part(message, message.text)
    return [InboundText(**common.fields(text=text.body))]


def _media(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    media = _part(message, getattr(message, message.type))
    extra = {"media_type": message.type}
    if media.voice:
        extra["voice"] = "true"
    if media.animated:
        extra["animated"] = "true"
    if media.sha256:
        extra["media_sha256"] = media.sha256
    attachment = Attachment(
        url=MEDIA_URL_PREFIX + media.id, content_type=media.mime_type, name=media.filename
    )
    return [
        InboundMedia(
            **common.fields(text=media.caption or None, attachments=(attachment,), extra=extra)
        )
    ]


def _location(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    place = _part(message, message.location)
    extra = {"location_url": place.url} if place.url else {}
    location = Location(
        latitude=place.latitude, longitude=place.longitude, name=place.name, address=place.address
    )
    return [InboundLocation(**common.fields(location=location, extra=extra))]


def _contacts(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    shared = _part(message, message.contacts)
    if not shared:
        raise Malformed(f"message {message.id}: contacts is empty")
    events: list[InboundEvent] = []
    # One event per shared card; the first keeps the message id, so a retry of the
    # message maps every card to the same ids again.
    for index, card in enumerate(shared):
        provider_id = message.id if index == 0 else f"{message.id}#{index}"
        events.append(
            InboundSharedContact(
                **common.fields(provider_id=provider_id, contact=_shared_contact(card, region))
            )
        )
    return events


def _shared_contact(card: WaSharedContact, region: str) -> SharedContact:
    name = None
    if card.name is not None:
        parts = [p for p in (card.name.first_name, card.name.last_name) if p]
        name = card.name.formatted_name or " ".join(parts) or None
    phones: list[str] = []
    for phone in card.phones:
        raw = phone.phone or (f"+{phone.wa_id}" if phone.wa_id else None)
        if raw:
            try:
                phones.append(normalize_phone(raw, region))
            except InvalidIdentity:
                phones.append(raw.strip())  # kept as the customer wrote it
    emails: list[str] = []
    for mail in card.emails:
        if mail.email:
            try:
                emails.append(normalize_email(mail.email))
            except InvalidIdentity:
                emails.append(mail.email.strip())
    return SharedContact(name=name, phones=tuple(phones), emails=tuple(emails))


def _interactive(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    interactive = _part(message, message.interactive)
    if interactive.type not in INTERACTIVE_REPLIES:
        raise Ignored(f"interactive {interactive.type[:40]} reply")
    reply = getattr(interactive, interactive.type)
    if reply is None:
        raise Malformed(f"message {message.id}: interactive.{interactive.type} is missing")
    extra = {"interactive": interactive.type}
    if reply.description:
        extra["description"] = reply.description
    button = ButtonReply(payload=reply.id, title=reply.title)
    return [
        InboundButton(**common.fields(text=reply.title or reply.id, button=button, extra=extra))
    ]


def _button(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    quick = _part(message, message.button)
    payload = quick.payload or quick.text
    if not payload:
        raise Malformed(f"message {message.id}: button has neither payload nor text")
    button = ButtonReply(payload=payload, title=quick.text)
    extra = {"button": "template_quick_reply"}
    return [InboundButton(**common.fields(text=quick.text or payload, button=button, extra=extra))]


def _reaction(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    reaction = _part(message, message.reaction)
    if not reaction.emoji:
        raise Ignored("reaction removed")
    extra = {"reaction": reaction.emoji, "reaction_to": reaction.message_id}
    return [InboundText(**common.fields(text=reaction.emoji, extra=extra))]


def _part[T](message: WaMessage, value: T | None) -> T:
    """The type-specific object of a message; a message without it is malformed."""
    if value is None:
        raise Malformed(f"message {message.id}: type {message.type!r} without its {message.type}")
    return value


# Meta's message `type` -> the handler that turns it into hub events.
MESSAGE_HANDLERS: dict[str, MessageHandler] = {
    "text": _text,
    "image": _media,
    "document": _media,
    "audio": _media,
    "video": _media,
    "sticker": _media,
    "location": _location,
    "contacts": _contacts,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction,
}

# Types Meta documents that the hub acknowledges without storing, and why.
IGNORED_MESSAGE_TYPES: dict[str, str] = {
    "unsupported": "a message type Cloud API does not deliver",
    "system": "a system notice (the user changed number or identity)",
    "order": "catalog orders are not handled",
    "request_welcome": "a request for a welcome message",
    "errors": "a message Meta could not deliver",
}

# The interactive replies that are button presses; other kinds (flows) are ignored.
INTERACTIVE_REPLIES: frozenset[str] = frozenset({"button_reply", "list_reply"})

# Meta's status -> the hub's. A played voice message was heard, so it was read.
STATUS_MAP: dict[str, str] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "played": "read",
}

# Change fields handled; any other field (templates, account, quality...) is ignored.
CHANGE_FIELDS: frozenset[str] = frozenset({"messages"})


def _unix_time(value: str, where: str) -> datetime:
    try:
        seconds = int(value)
        at = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise Malformed(f"{where}: timestamp {value[:32]!r} is not a Unix time") from None
    # A clock ahead of ours must not put a message in the future.
    return min(at, utcnow())


def _validation_message(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{prefix}{where}: {item['msg']}")
    return "; ".join(parts)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"code": "bad_request", "message": message}}),
        content_type="application/json",
    )


# -- sending: Graph's answers ----------------------------------------------------------


class GraphErrorDetails(_Wire):
    message: str = ""
    type: str | None = None
    code: int
    error_subcode: int | None = None
    error_data: ErrorData | None = None
    fbtrace_id: str | None = None


class GraphErrorBody(_Wire):
    error: GraphErrorDetails


class SentMessage(_Wire):
    id: str = Field(min_length=1)


class SendResponse(_Wire):
    messages: list[SentMessage] = Field(min_length=1)


class TemplateLanguage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=2, max_length=16)
    policy: str | None = None


class TemplateSpec(BaseModel):
    """An approved template as a queued message names it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512)
    language: str | TemplateLanguage
    components: list[dict[str, Any]] = []

    def payload(self) -> dict[str, Any]:
        code = self.language if isinstance(self.language, str) else self.language.code
        body: dict[str, Any] = {"name": self.name, "language": {"code": code}}
        if self.components:
            body["components"] = self.components
        return body


# Throughput (130429), pair rate (131056), app (4) and account (80007) rate limits:
# the message was refused, retry after a pause. Seconds to wait when Graph says none.
RATE_LIMIT_CODES: dict[int, float] = {130429: 1.0, 131056: 6.0, 4: 60.0, 80007: 60.0}
# Graph's own "try again": 1 unknown/possible server error, 2 downtime,
# 131000 unknown send failure, 131016 service unavailable.
TRANSIENT_CODES: frozenset[int] = frozenset({1, 2, 131000, 131016})
RE_ENGAGEMENT = 131047  # more than 24 h since the customer's last message
OPTED_OUT = 131050  # the user stopped marketing messages from this business


def classify_graph_error(
    status: int, error: GraphErrorDetails | None, retry_after: str | None = None
) -> TransientSendError | PermanentSendError:
    """The send error for Graph's answer `status` with error body `error`."""
    if error is None:
        reason = f"HTTP {status} from the Graph API"
        code = str(status)
    else:
        details = error.error_data.details if error.error_data else None
        reason = error.message or f"Graph API error {error.code}"
        if details and details not in reason:
            reason = f"{reason}: {details}"
        code = str(error.code)
    number = error.code if error is not None else None
    wait = _seconds(retry_after)
    if number in RATE_LIMIT_CODES or status == 429:
        default = RATE_LIMIT_CODES.get(number or 0, 1.0)
        return TransientSendError(reason, code=code, retry_after=wait or default, maybe_sent=False)
    if number in TRANSIENT_CODES or status >= 500:
        # With an error body Graph says the message was refused; without one
        # (a proxy's 502, a cut connection) it may have been taken.
        return TransientSendError(reason, code=code, retry_after=wait, maybe_sent=error is None)
    if number == RE_ENGAGEMENT:
        return PermanentSendError(f"{WINDOW_REASON} (Meta: {reason})", code=code, opt_out=False)
    if number == OPTED_OUT:
        return PermanentSendError(
            f"the customer stopped marketing messages from this business (Meta: {reason})",
            code=code,
            opt_out=True,
        )
    return PermanentSendError(reason, code=code)


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 3600 else None


def _aware(moment: datetime) -> datetime:
    # The store hands back naive UTC datetimes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- the adapter -----------------------------------------------------------------------


class WhatsAppChannel(ChannelAdapter):
    name = "whatsapp"
    Settings = WhatsAppSettings
    settings: WhatsAppSettings

    REQUIRED_SECRETS: ClassVar[dict[str, str]] = {
        "app_secret": "to verify Meta's notification signatures",
        "verify_token": "to answer Meta's webhook verification",
        "access_token": "to send through the Graph API",
    }

    def routes(self) -> list[web.RouteDef]:
        return [web.get("", self.verify), web.post("", self.notification)]

    def rate_limit(self) -> RateLimit:
        return RateLimit(per_second=self.settings.rate, burst=1)

    async def start(self) -> None:
        for key, why in self.REQUIRED_SECRETS.items():
            if not str(getattr(self.settings, key)).strip():
                raise ValueError(f"{self.inbox_id}: {key} is required {why}")

    # -- verification handshake --------------------------------------------------------

    async def verify(self, request: web.Request) -> web.Response:
        query = request.query
        token = query.get("hub.verify_token", "")
        matches = hmac.compare_digest(
            token.encode("utf-8"), self.settings.verify_token.encode("utf-8")
        )
        if query.get("hub.mode") != "subscribe" or not matches:
            self.ctx.logger.warning("whatsapp verification refused", extra={"inbox": self.inbox_id})
            raise web.HTTPForbidden(text="verification refused")
        challenge = query.get("hub.challenge")
        if not challenge or len(challenge) > 256:
            raise _bad_request("hub.challenge is missing or too long")
        # text/plain: the challenge is echoed, never rendered.
        return web.Response(text=challenge, content_type="text/plain")

    # -- notifications -------------------------------------------------------------------

    def signature_matches(self, body: bytes, given: str | None) -> bool:
        if not given:
            return False
        digest = hmac.new(self.settings.app_secret.encode(), body, hashlib.sha256).hexdigest()
        expected = SIGNATURE_PREFIX + digest
        return hmac.compare_digest(given.strip().lower().encode(), expected.encode())

    async def notification(self, request: web.Request) -> web.Response:
        body = await read_limited(request, self.settings.max_body_bytes)
        if not self.signature_matches(body, request.headers.get(SIGNATURE_HEADER)):
            self.ctx.logger.warning(
                "whatsapp notification with a bad signature", extra={"inbox": self.inbox_id}
            )
            raise web.HTTPForbidden(text=f"missing or bad {SIGNATURE_HEADER}")
        notification = self.parse(body)
        try:
            batch = self.normalise(notification)
        except Malformed as error:
            raise _bad_request(str(error)) from None
        results = await self.ctx.ingest(batch.events) if batch.events else []
        moved = await self.ctx.record_status(batch.statuses) if batch.statuses else 0
        for what, why in batch.ignored:
            self.ctx.logger.info(
                "whatsapp event ignored",
                extra={"inbox": self.inbox_id, "event": what, "reason": why},
            )
        duplicates = sum(1 for r in results if getattr(r, "duplicate", False))
        return web.json_response(
            {
                "ok": True,
                "stored": len(results) - duplicates,
                "duplicates": duplicates,
                "statuses": len(batch.statuses),
                "moved": moved,
                "ignored": len(batch.ignored),
            }
        )

    @staticmethod
    def parse(body: bytes) -> Notification:
        """The notification in `body`; 400 when it is not one."""
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise _bad_request("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise _bad_request("the body must be a JSON object")
        try:
            notification = Notification.model_validate(payload)
        except ValidationError as error:
            raise _bad_request(_validation_message(error)) from None
        if notification.object != OBJECT:
            raise _bad_request(f"object must be {OBJECT!r}")
        return notification

    def normalise(self, notification: Notification) -> Batch:
        """Every message and status of every change of every entry; raises
        Malformed when any part of the batch is not shaped like Meta's."""
        batch = Batch()
        for e, entry in enumerate(notification.entry):
            for c, change in enumerate(entry.changes):
                where = f"entry[{e}].changes[{c}]"
                if change.field not in CHANGE_FIELDS:
                    batch.ignored.append((f"field {change.field[:64]}", "change field not handled"))
                    continue
                try:
                    value = MessagesValue.model_validate(change.value)
                except ValidationError as error:
                    raise Malformed(_validation_message(error, f"{where}.value.")) from None
                if value.metadata.phone_number_id != self.settings.phone_number_id:
                    batch.ignored.append(
                        (
                            f"{where}",
                            f"for phone number id {value.metadata.phone_number_id[:32]}, "
                            "not this inbox's",
                        )
                    )
                    continue
                self._messages(value, where, batch)
                self._statuses(value, where, batch)
                for problem in value.errors:
                    batch.ignored.append((f"error {problem.code}", problem.describe()[:300]))
        return batch

    def _messages(self, value: MessagesValue, where: str, batch: Batch) -> None:
        names = {c.wa_id: c.profile.name for c in value.contacts if c.wa_id and c.profile}
        only_name = (
            value.contacts[0].profile.name
            if len(value.contacts) == 1 and value.contacts[0].profile
            else None
        )
        region = self.ctx.default_region
        for m, message in enumerate(value.messages):
            at = f"{where}.value.messages[{m}]"
            handler = MESSAGE_HANDLERS.get(message.type)
            if handler is None:
                why = IGNORED_MESSAGE_TYPES.get(message.type, "unknown message type")
                if message.errors:
                    why = f"{why}: {message.errors[0].describe()[:200]}"
                batch.ignored.append((f"message type {message.type[:40]}", why))
                continue
            number = message.from_.lstrip("+")
            name = names.get(number, only_name)
            try:
                sender = phone_ref("+" + number, region, (name or "").strip()[:256] or None)
            except InvalidIdentity as error:
                raise Malformed(f"{at}.from: {error}") from None
            extra: dict[str, str] = {}
            if message.context is not None:
                if message.context.id:
                    extra["reply_to"] = message.context.id
                if message.context.forwarded or message.context.frequently_forwarded:
                    extra["forwarded"] = "true"
            common = Inbound(
                inbox=self.inbox_id,
                provider_id=message.id,
                sender=sender,
                received_at=_unix_time(message.timestamp, at),
                extra=extra,
            )
            try:
                batch.events.extend(handler(message, common, region))
            except Ignored as ignored:
                batch.ignored.append((f"message type {message.type}", str(ignored)))
            except ValidationError as error:
                raise Malformed(_validation_message(error, f"{at}.")) from None

    def _statuses(self, value: MessagesValue, where: str, batch: Batch) -> None:
        for s, status in enumerate(value.statuses):
            at = f"{where}.value.statuses[{s}]"
            ours = STATUS_MAP.get(status.status)
            if ours is None:
                batch.ignored.append((f"status {status.status[:40]}", "status not tracked"))
                continue
            error_code = error_text = None
            if status.errors:
                first = status.errors[0]
                error_code, error_text = str(first.code), first.describe()
            batch.statuses.append(
                StatusUpdate(
                    inbox=self.inbox_id,
                    provider_id=status.id,
                    status=ours,  # type: ignore[arg-type]
                    error_code=error_code,
                    error=error_text,
                    at=_unix_time(status.timestamp, at),
                )
            )

    # -- sending -------------------------------------------------------------------------

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        if template:
            return None
        if last_inbound_at is None or utcnow() - _aware(last_inbound_at) >= WINDOW:
            return WINDOW_REASON
        return None

    async def send(self, message: OutboundMessage) -> SendResult:
        refusal = self.reply_refusal(message.last_inbound_at, message.template is not None)
        if refusal:
            raise PermanentSendError(refusal, code="outside_window")
        to = message.to.strip().lstrip("+")
        if not to.isdigit():
            raise PermanentSendError(f"not a phone number: {message.to!r}", code="bad_recipient")
        provider_id = ""
        # Several payloads (text then media, several media) go out in order; the
        # last one's id stands for the message.
        for payload in build_payloads(message):
            provider_id = await self._post(
                {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
                | payload
            )
        return SendResult(provider_id=provider_id)

    async def _post(self, payload: dict[str, Any]) -> str:
        url = f"{self.settings.api_base}/{self.settings.phone_number_id}/messages"
        headers = {"Authorization": f"Bearer {self.settings.access_token}"}
        try:
            async with self.ctx.http().post(url, json=payload, headers=headers) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                raw = await response.read()
        except aiohttp.ClientConnectorError as error:
            raise TransientSendError(
                f"cannot connect to the Graph API: {type(error).__name__}", maybe_sent=False
            ) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientSendError(f"Graph API request failed: {type(error).__name__}") from error
        try:
            body = json.loads(raw) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = None
        if 200 <= status < 300:
            try:
                return SendResponse.model_validate(body).messages[0].id
            except ValidationError:
                # Graph said yes but named no message: it may well be on its way.
                raise TransientSendError(
                    f"HTTP {status} from the Graph API without a message id"
                ) from None
        graph_error: GraphErrorDetails | None
        try:
            graph_error = GraphErrorBody.model_validate(body).error
        except ValidationError:
            graph_error = None
        raise classify_graph_error(status, graph_error, retry_after)


# -- building Graph payloads -----------------------------------------------------------


def build_payloads(message: OutboundMessage) -> list[dict[str, Any]]:
    """The type-specific parts of the Graph requests that send `message`, in order.

    A template is sent alone (its text lives at Meta). Buttons go in one
    interactive message with the text as its body (attachments are not sent with
    them). Otherwise the text becomes the caption of the first image, video or
    document, or a text message of its own before the media (audio and stickers
    take no caption); each attachment is one media message.
    """
    if message.template is not None:
        try:
            template = TemplateSpec.model_validate(message.template)
        except ValidationError as error:
            raise PermanentSendError(
                f"template: {_validation_message(error)}", code="bad_template"
            ) from None
        return [{"type": "template", "template": template.payload()}]
    text = (message.text or "").strip() or None
    if message.buttons:
        return [_interactive_payload(text, message.buttons)]
    payloads: list[dict[str, Any]] = []
    media = [_media_payload(a) for a in message.attachments]
    captioned = next((p for p in media if p["type"] in CAPTIONED), None)
    if text and captioned is not None and len(text) <= CAPTION_MAX:
        captioned[captioned["type"]]["caption"] = text
        text = None
    if text:
        if len(text) > TEXT_MAX:
            raise PermanentSendError(
                f"the text is longer than WhatsApp's {TEXT_MAX} characters", code="too_long"
            )
        payloads.append({"type": "text", "text": {"preview_url": False, "body": text}})
    payloads.extend(media)
    if not payloads:
        raise PermanentSendError("nothing to send: no text, attachment or template", code="empty")
    return payloads


CAPTIONED = frozenset({"image", "video", "document"})


def _media_payload(attachment: Attachment) -> dict[str, Any]:
    content_type = (attachment.content_type or "").split(";", 1)[0].strip().lower()
    if content_type == "image/webp":
        kind = "sticker"
    elif content_type.startswith(("image/", "audio/", "video/")):
        kind = content_type.split("/", 1)[0]
    else:
        kind = "document"
    if attachment.url.startswith(MEDIA_URL_PREFIX):
        media: dict[str, Any] = {"id": attachment.url[len(MEDIA_URL_PREFIX) :]}
    else:
        media = {"link": attachment.url}
    if kind == "document":
        filename = attachment.name or attachment.url.rsplit("/", 1)[-1].split("?", 1)[0]
        if filename:
            media["filename"] = filename[:240]
    return {"type": kind, kind: media}


def _interactive_payload(text: str | None, buttons: Sequence[ButtonReply]) -> dict[str, Any]:
    if not text:
        raise PermanentSendError("buttons need a text to go with them", code="no_text")
    if len(buttons) > LIST_ROWS_MAX:
        raise PermanentSendError(
            f"WhatsApp offers at most {LIST_ROWS_MAX} choices in one message", code="too_many"
        )
    if len(buttons) <= REPLY_BUTTONS_MAX:
        if len(text) > BUTTONS_BODY_MAX:
            raise PermanentSendError(
                f"the text of a button message is longer than {BUTTONS_BODY_MAX} characters",
                code="too_long",
            )
        return {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": text},
                "action": {
                    "buttons": [
                        {
                            "type": "reply",
                            "reply": {
                                "id": b.payload[:BUTTON_ID_MAX],
                                "title": (b.title or b.payload)[:BUTTON_TITLE_MAX],
                            },
                        }
                        for b in buttons
                    ]
                },
            },
        }
    if len(text) > LIST_BODY_MAX:
        raise PermanentSendError(
            f"the text of a list message is longer than {LIST_BODY_MAX} characters",
            code="too_long",
        )
    rows = [
        {"id": b.payload[:BUTTON_ID_MAX], "title": (b.title or b.payload)[:ROW_TITLE_MAX]}
        for b in buttons
    ]
    return {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": text},
            "action": {"button": LIST_BUTTON_LABEL, "sections": [{"rows": rows}]},
        },
    }
