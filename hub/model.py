"""The hub's own types. Channels translate provider payloads into these and
nothing past `channels/` ever sees a provider's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IdentityRef(_Frozen):
    """Who sent an inbound event: one identity (already normalised by `hub.identity`)."""

    kind: IdentityKind
    value: str
    name: str | None = None


class Attachment(_Frozen):
    url: str
    content_type: str | None = None
    name: str | None = None
    size: int | None = None


class Location(_Frozen):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class SharedContact(_Frozen):
    name: str | None = None
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


class ButtonReply(_Frozen):
    payload: str
    title: str | None = None


class CallInfo(_Frozen):
    direction: Literal["in", "out"] = "in"
    status: Literal["ringing", "answered", "missed", "completed"]
    duration: int | None = None
    recording_url: str | None = None
    call_id: str | None = None


class EmailInfo(_Frozen):
    subject: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    html: str | None = None
    quoted: str | None = None


class _Inbound(_Frozen):
    inbox: str
    medium: Medium
    provider_id: str = Field(min_length=1, max_length=512)
    sender: IdentityRef
    received_at: datetime = Field(default_factory=utcnow)
    text: str | None = None
    # A hint from the adapter (e-mail threading): store the message in this
    # conversation when it exists on the same inbox, else in the sender's own.
    conversation_id: str | None = None
    # Provider fields we keep but do not model (profile name, country, ...).
    extra: dict[str, str] = Field(default_factory=dict)


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

    inbox: str
    provider_id: str = Field(min_length=1, max_length=512)
    status: Literal["sent", "delivered", "read", "failed"]
    error_code: str | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow)


class OutboundMessage(_Frozen):
    """What the dispatcher hands a channel adapter to send."""

    id: str
    inbox: str
    medium: Medium
    conversation_id: str | None = None
    to: str
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    subject: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
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
