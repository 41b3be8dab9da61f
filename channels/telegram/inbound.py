"""Reading what Telegram sends: the body of a webhook request as aiogram's `Update`,
its kind, and a message as the hub's inbound event.

Files are stored as `tg://file/<file_id>` references (see the package docstring);
an edited message gets its own provider id and `extra.edited = "true"`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from aiogram import Bot
from aiogram.enums import ContentType
from aiogram.types import Chat, Message, Update, User
from pydantic import ValidationError

from channels.base import MalformedPayload, json_object
from hub.addresses import InvalidIdentity, normalize_phone
from hub.model import (
    Attachment,
    IdentityRef,
    InboundEvent,
    InboundLocation,
    InboundMedia,
    InboundSharedContact,
    InboundText,
    Location,
    SharedContact,
)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
FILE_SCHEME = "tg://file/"
MEDIUM: Literal["telegram"] = "telegram"

# (message, the event's common fields, the hub's default phone region) -> the event
EventBuilder = Callable[[Message, dict[str, Any], str], InboundEvent]


def parse_update(body: bytes, bot: Bot | None) -> Update:
    """The request body as aiogram's `Update`, or MalformedPayload naming what is wrong."""
    data = json_object(body)
    try:
        return Update.model_validate(data, context={"bot": bot} if bot is not None else {})
    except ValidationError as error:
        raise MalformedPayload(f"not a Telegram Update: {errors_of(error)}") from None


def update_kind(update: Update) -> str:
    """The one kind an Update carries: a field of aiogram's model, or a newer one."""
    kinds = [
        name
        for name in type(update).model_fields
        if name != "update_id" and getattr(update, name) is not None
    ]
    kinds += [name for name in update.model_extra or {} if name not in kinds]
    if len(kinds) != 1:
        raise MalformedPayload(
            "a Telegram Update carries exactly one of message, edited_message, "
            f"callback_query, ...; this one has {len(kinds)}"
        )
    return kinds[0]


# -- a message as the hub's event ----------------------------------------------------------


def sender(chat: Chat, user: User | None) -> IdentityRef:
    """The chat is the identity; its name is the person's in a private chat."""
    if chat.type == "private":
        name = person_name(user) if user is not None else _chat_person(chat)
    else:
        name = chat.title
    return IdentityRef(kind="telegram", value=str(chat.id), name=name or None)


def message_event(
    inbox: str, region: str, message: Message, provider_id: str, extra: dict[str, str]
) -> InboundEvent | None:
    """The hub's event for a message, or None for content we do not take."""
    builder = MESSAGE_CONTENT.get(plain(message.content_type))
    if builder is None:
        return None
    fields: dict[str, Any] = {
        "inbox": inbox,
        "medium": MEDIUM,
        "provider_id": provider_id,
        "sender": sender(message.chat, message.from_user),
        "received_at": _edited_at(message) if extra.get("edited") else message.date,
        "text": message.text if message.text is not None else message.caption,
        "extra": {**_message_extra(message), **extra},
    }
    try:
        return builder(message, fields, region)
    except (ValidationError, ValueError) as error:
        raise MalformedPayload(f"cannot read the message: {errors_of(error)}") from None


def _text(message: Message, fields: dict[str, Any], region: str) -> InboundEvent:
    return InboundText(**fields)


def _photo(message: Message, fields: dict[str, Any], region: str) -> InboundEvent:
    assert message.photo
    largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
    attachment = Attachment(
        url=FILE_SCHEME + largest.file_id, content_type="image/jpeg", size=largest.file_size
    )
    return InboundMedia(**fields, attachments=(attachment,))


def _file(message: Message, fields: dict[str, Any], region: str) -> InboundEvent:
    content = plain(message.content_type)
    media = getattr(message, content)
    attachment = Attachment(
        url=FILE_SCHEME + media.file_id,
        content_type=getattr(media, "mime_type", None) or DEFAULT_MIME.get(content),
        name=getattr(media, "file_name", None) or getattr(media, "title", None),
        size=media.file_size,
    )
    return InboundMedia(**fields, attachments=(attachment,))


def _location(message: Message, fields: dict[str, Any], region: str) -> InboundEvent:
    if message.venue is not None:
        venue = message.venue
        place = Location(
            latitude=venue.location.latitude,
            longitude=venue.location.longitude,
            name=venue.title,
            address=venue.address,
        )
    else:
        assert message.location is not None
        place = Location(latitude=message.location.latitude, longitude=message.location.longitude)
    return InboundLocation(**fields, location=place)


def _contact(message: Message, fields: dict[str, Any], region: str) -> InboundEvent:
    shared = message.contact
    assert shared is not None
    own = message.from_user is not None and shared.user_id == message.from_user.id
    name = " ".join(p for p in (shared.first_name, shared.last_name) if p) or None
    phones = (shared_phone(shared.phone_number, own, region),) if shared.phone_number else ()
    return InboundSharedContact(**fields, contact=SharedContact(name=name, phones=phones))


def shared_phone(raw: str, own: bool, region: str) -> str:
    """E.164 when we can tell; the number as sent otherwise.

    Telegram sends a user's own number (the "share my phone" button) as digits
    without the `+`; a number from the address book comes as the user typed it.
    """
    text = raw.strip()
    candidates = [text]
    if own and text.isdigit():
        candidates.insert(0, "+" + text)
    for candidate in candidates:
        try:
            return normalize_phone(candidate, region)
        except InvalidIdentity:
            continue
    return text


MESSAGE_CONTENT: dict[str, EventBuilder] = {
    ContentType.TEXT: _text,
    ContentType.PHOTO: _photo,
    ContentType.DOCUMENT: _file,
    ContentType.ANIMATION: _file,
    ContentType.VOICE: _file,
    ContentType.AUDIO: _file,
    ContentType.VIDEO: _file,
    ContentType.VIDEO_NOTE: _file,
    ContentType.LOCATION: _location,
    ContentType.VENUE: _location,
    ContentType.CONTACT: _contact,
}

# Telegram omits the type of some files it always encodes the same way.
DEFAULT_MIME: dict[str, str] = {
    ContentType.VOICE: "audio/ogg",
    ContentType.VIDEO_NOTE: "video/mp4",
    ContentType.ANIMATION: "video/mp4",
    ContentType.VIDEO: "video/mp4",
}

# The bot's new status in a chat -> whether that chat is opted out. "kicked" in a
# private chat is the user blocking the bot; "member" is them unblocking it.
OPT_OUT_BY_STATUS: dict[str, bool] = {
    "kicked": True,
    "left": True,
    "member": False,
    "administrator": False,
}


# -- helpers -------------------------------------------------------------------------------


def button_title(message: Message, data: str) -> str | None:
    """The label of the button with this callback data on the message it came from."""
    markup = message.reply_markup
    if markup is None:
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == data:
                return button.text
    return None


def plain(value: object) -> str:
    """An aiogram enum member or plain string as the plain string Telegram sent."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def person_name(user: User | None) -> str | None:
    if user is None:
        return None
    full = " ".join(p for p in (user.first_name, user.last_name) if p)
    return full or user.username


def errors_of(error: ValidationError | ValueError) -> str:
    """Where a payload is wrong, without echoing its values (customer text)."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors(include_input=False)[:5]
        )
    return str(error)


def _edited_at(message: Message) -> datetime:
    if message.edit_date is None:
        return message.date
    return datetime.fromtimestamp(message.edit_date, UTC)


def _chat_person(chat: Chat) -> str | None:
    full = " ".join(p for p in (chat.first_name, chat.last_name) if p)
    return full or chat.username


def _message_extra(message: Message) -> dict[str, str]:
    extra = {"chat_type": plain(message.chat.type)}
    user = message.from_user
    if user is not None:
        if user.username:
            extra["username"] = user.username
        if user.language_code:
            extra["language_code"] = user.language_code
        if message.chat.type != "private":
            extra["from_id"] = str(user.id)
            name = person_name(user)
            if name:
                extra["from_name"] = name
    return extra
