"""The WhatsApp Cloud API on the wire: pydantic models of the Graph webhook
notification (what Meta posts) and of the send request's parts and answers
(what the Graph API takes and returns).

Provider JSON is parsed into these at the edge; unknown fields are ignored
because Meta adds fields without notice. What the hub sends itself (a template
as a queued message names it) is strict.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from channels.base import validation_message

# An attachment URL naming a WhatsApp media id: Meta's media URLs need the access
# token and expire, the id does not. Inbound media are stored so, and an outbound
# attachment so named is sent by id.
MEDIA_URL_PREFIX = "whatsapp-media:"

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


# -- sending: what the Graph API answers ----------------------------------------------


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


def error_message(error: ValidationError, where: str | None = None) -> str:
    """The toolkit's `validation_message` of at most the first five errors, each
    located under `where` (`entry[0].changes[1].value`) when given."""
    located = [
        InitErrorDetails(
            type=PydanticCustomError(item["type"], item["msg"]),
            loc=((where,) if where else ()) + (tuple(item["loc"]) or ("body",)),
            input=item["input"],
        )
        for item in error.errors()[:5]
    ]
    return validation_message(ValidationError.from_exception_data(error.title, located))
