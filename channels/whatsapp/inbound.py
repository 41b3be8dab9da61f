"""WhatsApp notifications in: Meta's verification handshake, the signature check,
and a notification's messages and statuses normalised into the hub's events.

Inbound messages map onto the hub's types through `MESSAGE_HANDLERS`, an explicit
map from Meta's message `type` to a handler function; `IGNORED_MESSAGE_TYPES`
names the types acknowledged and logged as ignored. A type in neither is logged
as unknown and ignored too (Meta adds types without notice; the batch must not
fail for it). Whatever a batch holds that the hub does not handle becomes an
`IgnoredEvent` of the batch, logged, while the rest is stored; a part of it that
is not shaped like Meta's is a `MalformedPayload` and the whole POST a 400.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from channels.base import (
    ChannelContext,
    IgnoredEvent,
    MalformedPayload,
    json_object,
    supported_events,
)
from channels.signing import read_limited
from channels.whatsapp.settings import WhatsAppSettings
from channels.whatsapp.wire import (
    MEDIA_URL_PREFIX,
    Interactive,
    Media,
    MessagesValue,
    Notification,
    Reply,
    WaMessage,
    WaSharedContact,
    error_message,
)
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
    SharedContact,
    StatusUpdate,
    utcnow,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="
OBJECT = "whatsapp_business_account"


# -- the verification handshake ---------------------------------------------------------


async def verify(
    request: web.Request, settings: WhatsAppSettings, logger: logging.Logger, inbox: str
) -> web.Response:
    """`hub.mode=subscribe` with the inbox's `verify_token` (compared in constant
    time) is answered with `hub.challenge` as text/plain; anything else is 403."""
    query = request.query
    token = query.get("hub.verify_token", "")
    matches = hmac.compare_digest(token.encode("utf-8"), settings.verify_token.encode("utf-8"))
    if query.get("hub.mode") != "subscribe" or not matches:
        logger.warning("whatsapp verification refused", extra={"inbox": inbox})
        raise web.HTTPForbidden(text="verification refused")
    challenge = query.get("hub.challenge")
    if not challenge or len(challenge) > 256:
        raise MalformedPayload("hub.challenge is missing or too long")
    # text/plain: the challenge is echoed, never rendered.
    return web.Response(text=challenge, content_type="text/plain")


# -- notifications ----------------------------------------------------------------------


def signature_matches(app_secret: str, body: bytes, given: str | None) -> bool:
    """Whether `given` is `sha256=` + the hex HMAC-SHA256 of `body` with the app secret."""
    if not given:
        return False
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    expected = SIGNATURE_PREFIX + digest
    return hmac.compare_digest(given.strip().lower().encode(), expected.encode())


async def notification(
    request: web.Request, settings: WhatsAppSettings, ctx: ChannelContext, inbox: str
) -> web.Response:
    """A signed notification: all its messages in one `ingest` call, all its
    statuses in one `record_status` call, after the whole batch is normalised."""
    body = await read_limited(request, settings.max_body_bytes)
    if not signature_matches(settings.app_secret, body, request.headers.get(SIGNATURE_HEADER)):
        ctx.logger.warning("whatsapp notification with a bad signature", extra={"inbox": inbox})
        raise web.HTTPForbidden(text=f"missing or bad {SIGNATURE_HEADER}")
    batch = normalise(parse(body), inbox, settings.phone_number_id, ctx.default_region)
    results = await ctx.ingest(batch.events) if batch.events else []
    moved = await ctx.record_status(batch.statuses) if batch.statuses else 0
    for ignored in batch.ignored:
        ctx.logger.info(
            "whatsapp event ignored",
            extra={"inbox": inbox, "event": ignored.event, "reason": ignored.reason},
        )
    duplicates = sum(1 for result in results if result.duplicate)
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


def parse(body: bytes) -> Notification:
    """The notification in `body`; MalformedPayload when it is not one."""
    try:
        notification = Notification.model_validate(json_object(body))
    except ValidationError as error:
        raise MalformedPayload(error_message(error)) from None
    if notification.object != OBJECT:
        raise MalformedPayload(f"object must be {OBJECT!r}")
    return notification


# -- normalising a batch ----------------------------------------------------------------


@dataclass
class Batch:
    """Everything one notification holds, normalised before anything is written."""

    events: list[InboundEvent] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[IgnoredEvent] = field(default_factory=list)


def normalise(notification: Notification, inbox: str, phone_number_id: str, region: str) -> Batch:
    """Every message and status of every change of every entry; raises
    MalformedPayload when any part of the batch is not shaped like Meta's."""
    batch = Batch()
    for e, entry in enumerate(notification.entry):
        for c, change in enumerate(entry.changes):
            where = f"entry[{e}].changes[{c}]"
            if change.field not in CHANGE_FIELDS:
                batch.ignored.append(
                    IgnoredEvent(f"field {change.field[:64]}", "change field not handled")
                )
                continue
            try:
                value = MessagesValue.model_validate(change.value)
            except ValidationError as error:
                raise MalformedPayload(error_message(error, f"{where}.value")) from None
            if value.metadata.phone_number_id != phone_number_id:
                batch.ignored.append(
                    IgnoredEvent(
                        where,
                        f"for phone number id {value.metadata.phone_number_id[:32]}, "
                        "not this inbox's",
                    )
                )
                continue
            _messages(value, where, inbox, region, batch)
            _statuses(value, where, inbox, batch)
            for problem in value.errors:
                batch.ignored.append(
                    IgnoredEvent(f"error {problem.code}", problem.describe()[:300])
                )
    return batch


def _messages(value: MessagesValue, where: str, inbox: str, region: str, batch: Batch) -> None:
    names = {c.wa_id: c.profile.name for c in value.contacts if c.wa_id and c.profile}
    only_name = (
        value.contacts[0].profile.name
        if len(value.contacts) == 1 and value.contacts[0].profile
        else None
    )
    for m, message in enumerate(value.messages):
        at = f"{where}.value.messages[{m}]"
        handler = MESSAGE_HANDLERS.get(message.type)
        if handler is None:
            why = IGNORED_MESSAGE_TYPES.get(message.type, "unknown message type")
            if message.errors:
                why = f"{why}: {message.errors[0].describe()[:200]}"
            batch.ignored.append(IgnoredEvent(f"message type {message.type[:40]}", why))
            continue
        number = message.from_.lstrip("+")
        name = names.get(number, only_name)
        try:
            sender = phone_ref("+" + number, region, (name or "").strip()[:256] or None)
        except InvalidIdentity as error:
            raise MalformedPayload(f"{at}.from: {error}") from None
        extra: dict[str, str] = {}
        if message.context is not None:
            if message.context.id:
                extra["reply_to"] = message.context.id
            if message.context.forwarded or message.context.frequently_forwarded:
                extra["forwarded"] = "true"
        common = Inbound(
            inbox=inbox,
            provider_id=message.id,
            sender=sender,
            received_at=_unix_time(message.timestamp, at),
            extra=extra,
        )
        try:
            batch.events.extend(handler(message, common, region))
        except IgnoredEvent as ignored:
            batch.ignored.append(ignored)
        except ValidationError as error:
            raise MalformedPayload(error_message(error, at)) from None


def _statuses(value: MessagesValue, where: str, inbox: str, batch: Batch) -> None:
    for s, status in enumerate(value.statuses):
        at = f"{where}.value.statuses[{s}]"
        ours = STATUS_MAP.get(status.status)
        if ours is None:
            batch.ignored.append(IgnoredEvent(f"status {status.status[:40]}", "status not tracked"))
            continue
        error_code = error_text = None
        if status.errors:
            first = status.errors[0]
            error_code, error_text = str(first.code), first.describe()
        batch.statuses.append(
            StatusUpdate(
                inbox=inbox,
                provider_id=status.id,
                status=ours,  # type: ignore[arg-type]
                error_code=error_code,
                error=error_text,
                at=_unix_time(status.timestamp, at),
            )
        )


def _unix_time(value: str, where: str) -> datetime:
    try:
        seconds = int(value)
        at = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise MalformedPayload(f"{where}: timestamp {value[:32]!r} is not a Unix time") from None
    # A clock ahead of ours must not put a message in the future.
    return min(at, utcnow())


# -- one message to hub events ----------------------------------------------------------


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


def _media(part: Callable[[WaMessage], Media | None]) -> MessageHandler:
    """The handler of one media type; `part` picks that type's object out of a message."""

    def media_handler(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
        media = _part(message, part(message))
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

    return media_handler


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
        raise MalformedPayload(f"message {message.id}: contacts is empty")
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
    reply_of = INTERACTIVE_REPLIES.get(interactive.type)
    if reply_of is None:
        raise IgnoredEvent(
            f"message type {message.type}", f"interactive {interactive.type[:40]} reply"
        )
    reply = reply_of(interactive)
    if reply is None:
        raise MalformedPayload(f"message {message.id}: interactive.{interactive.type} is missing")
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
        raise MalformedPayload(f"message {message.id}: button has neither payload nor text")
    button = ButtonReply(payload=payload, title=quick.text)
    extra = {"button": "template_quick_reply"}
    return [InboundButton(**common.fields(text=quick.text or payload, button=button, extra=extra))]


def _reaction(message: WaMessage, common: Inbound, region: str) -> list[InboundEvent]:
    reaction = _part(message, message.reaction)
    if not reaction.emoji:
        raise IgnoredEvent(f"message type {message.type}", "reaction removed")
    extra = {"reaction": reaction.emoji, "reaction_to": reaction.message_id}
    return [InboundText(**common.fields(text=reaction.emoji, extra=extra))]


def _part[T](message: WaMessage, value: T | None) -> T:
    """The type-specific object of a message; a message without it is malformed."""
    if value is None:
        raise MalformedPayload(
            f"message {message.id}: type {message.type!r} without its {message.type}"
        )
    return value


# Meta's message `type` -> the handler function that turns it into hub events.
MESSAGE_HANDLERS: Mapping[str, MessageHandler] = {
    "text": _text,
    "image": _media(lambda message: message.image),
    "document": _media(lambda message: message.document),
    "audio": _media(lambda message: message.audio),
    "video": _media(lambda message: message.video),
    "sticker": _media(lambda message: message.sticker),
    "location": _location,
    "contacts": _contacts,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction,
}

# The message types the hub stores, read from the map.
SUPPORTED_EVENTS: tuple[str, ...] = supported_events(MESSAGE_HANDLERS)

# Types Meta documents that the hub acknowledges without storing, and why.
IGNORED_MESSAGE_TYPES: Mapping[str, str] = {
    "unsupported": "a message type Cloud API does not deliver",
    "system": "a system notice (the user changed number or identity)",
    "order": "catalog orders are not handled",
    "request_welcome": "a request for a welcome message",
    "errors": "a message Meta could not deliver",
}

# The interactive replies that are button presses -> their reply object; other
# kinds (flows) are ignored.
INTERACTIVE_REPLIES: Mapping[str, Callable[[Interactive], Reply | None]] = {
    "button_reply": lambda interactive: interactive.button_reply,
    "list_reply": lambda interactive: interactive.list_reply,
}

# Meta's status -> the hub's. A played voice message was heard, so it was read.
STATUS_MAP: Mapping[str, str] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "played": "read",
}

# Change fields handled; any other field (templates, account, quality...) is ignored.
CHANGE_FIELDS: frozenset[str] = frozenset({"messages"})
