"""The hub's own types. Channels translate provider payloads into these and
nothing past `channels/` ever sees a provider's wire format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Medium = Literal["sms", "whatsapp", "telegram", "email", "voice", "form"]
MEDIA: tuple[str, ...] = ("sms", "whatsapp", "telegram", "email", "voice", "form")
IdentityKind = Literal["phone", "email", "telegram"]
MessageKind = Literal["text", "media", "call", "voicemail", "email", "note", "event"]
OutboundStatus = Literal["queued", "sending", "sent", "delivered", "read", "failed", "unknown"]
ConversationStatus = Literal["open", "pending", "snoozed", "resolved"]

# How far along a delivery is; a status callback never moves a message backwards
# (providers send callbacks out of order).
STATUS_RANK: dict[str, int] = {
    "queued": 0,
    "sending": 1,
    "unknown": 2,
    "sent": 3,
    "delivered": 4,
    "read": 5,
    "failed": 6,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


# What the store (BSON) can hold, checked where a channel builds these types, so
# one bad value is refused with its own request (or, for text, repaired) and never
# fails a write it shares with other customers' messages.
_SURROGATE = re.compile("[\ud800-\udfff]")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _storable_text(value: str) -> str:
    """A customer's text with each lone UTF-16 surrogate (which UTF-8, and so the
    store, cannot hold) replaced by U+FFFD: the message is kept, not lost."""
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def _storable_key(value: str) -> str:
    """A field name the store can hold: text as above, without NUL."""
    return _storable_text(value).replace("\x00", "\ufffd")


def _storable_time(value: datetime) -> datetime:
    """A time the store can hold: in years 1 to 9999 once taken to UTC."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("a time outside the years 1 to 9999 in UTC") from None
    return value


# For text that reaches a service without passing through a model (a form's
# fields given to `update_contact`, say).
storable_text = _storable_text

Text = Annotated[str, AfterValidator(_storable_text)]
Key = Annotated[str, AfterValidator(_storable_key)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Time = Annotated[datetime, AfterValidator(_storable_time)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IdentityRef(_Frozen):
    """Who sent an inbound event: one identity (already normalised by `hub.identity`)."""

    kind: IdentityKind
    value: Text
    name: Text | None = None


class Attachment(_Frozen):
    url: Text
    # The hub's own file (`/api/media/{id}`): an agent's upload being sent.
    id: Text | None = None
    content_type: Text | None = None
    name: Text | None = None
    size: Int64 | None = None


class Location(_Frozen):
    latitude: float
    longitude: float
    name: Text | None = None
    address: Text | None = None


class SharedContact(_Frozen):
    name: Text | None = None
    phones: tuple[Text, ...] = ()
    emails: tuple[Text, ...] = ()


class ButtonReply(_Frozen):
    payload: Text
    title: Text | None = None


class CallInfo(_Frozen):
    direction: Literal["in", "out"] = "in"
    status: Literal["ringing", "answered", "missed", "completed"]
    duration: Int64 | None = None
    recording_url: Text | None = None
    call_id: Text | None = None


class EmailInfo(_Frozen):
    subject: Text | None = None
    message_id: Text | None = None
    in_reply_to: Text | None = None
    references: tuple[Text, ...] = ()
    html: Text | None = None
    quoted: Text | None = None


class _Inbound(_Frozen):
    inbox: Text
    medium: Medium
    provider_id: Text = Field(min_length=1, max_length=512)
    sender: IdentityRef
    received_at: Time = Field(default_factory=utcnow)
    text: Text | None = None
    # A hint from the adapter (e-mail threading): store the message in this
    # conversation when it exists on the same inbox, else in the sender's own.
    conversation_id: Text | None = None
    # Provider fields we keep but do not model (profile name, country, ...).
    extra: dict[Key, Text] = Field(default_factory=dict)


class InboundText(_Inbound):
    type: Literal["text"] = "text"


class InboundMedia(_Inbound):
    type: Literal["media"] = "media"
    attachments: tuple[Attachment, ...] = Field(min_length=1)


class InboundLocation(_Inbound):
    type: Literal["location"] = "location"
    location: Location


class InboundSharedContact(_Inbound):
    type: Literal["contact"] = "contact"
    contact: SharedContact


class InboundButton(_Inbound):
    type: Literal["button"] = "button"
    button: ButtonReply


class InboundCall(_Inbound):
    type: Literal["call"] = "call"
    call: CallInfo


class InboundVoicemail(_Inbound):
    type: Literal["voicemail"] = "voicemail"
    call: CallInfo


class InboundEmail(_Inbound):
    type: Literal["email"] = "email"
    email: EmailInfo
    attachments: tuple[Attachment, ...] = ()


InboundEvent = Annotated[
    InboundText
    | InboundMedia
    | InboundLocation
    | InboundSharedContact
    | InboundButton
    | InboundCall
    | InboundVoicemail
    | InboundEmail,
    Field(discriminator="type"),
]

# The message `kind` (CONTRACT.md) each inbound type is stored as.
KIND_OF_INBOUND: dict[str, MessageKind] = {
    "text": "text",
    "media": "media",
    "location": "text",
    "contact": "text",
    "button": "text",
    "call": "call",
    "voicemail": "voicemail",
    "email": "email",
}


class StatusUpdate(_Frozen):
    """A provider's word on an outbound message we sent."""

    inbox: Text
    provider_id: Text = Field(min_length=1, max_length=512)
    status: Literal["sent", "delivered", "read", "failed"]
    error_code: Text | None = None
    error: Text | None = None
    at: Time = Field(default_factory=utcnow)


class OutboundMessage(_Frozen):
    """What the dispatcher hands a channel adapter to send."""

    id: Text
    inbox: Text
    medium: Medium
    conversation_id: Text | None = None
    to: Text
    text: Text | None = None
    attachments: tuple[Attachment, ...] = ()
    subject: Text | None = None
    in_reply_to: Text | None = None
    references: tuple[Text, ...] = ()
    template: dict[str, object] | None = None
    buttons: tuple[ButtonReply, ...] = ()
    attempt: int = 1
    # The customer's last message in the conversation (WhatsApp's 24-hour window).
    last_inbound_at: datetime | None = None


class SendResult(_Frozen):
    provider_id: str
    status: Literal["sent", "delivered"] = "sent"


@dataclass(frozen=True)
class Event:
    """Something that happened, for the inbox, the bots and every other hub process:
    `type` as in the realtime API (`message.created`, ...) and its JSON `data`."""

    type: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data}
