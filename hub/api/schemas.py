"""The API's typed bodies, queries and answers: validation at the edge and the
OpenAPI document are both built from these.

Every input model forbids unknown fields and takes only plain values (strings,
numbers, booleans, lists of strings), so nothing a client sends can become a
query operator: an object where a string belongs is a 400.

Booleans and enums are strict, where a coerced mistake is costly (`"private": 0`
read as false sends a colleague's note to the customer): a body's booleans are
JSON `true`/`false` (StrictBool), a query's are the strings "true"/"false"
(QueryBool), and an enum (a Literal) takes only its exact values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from hub.model import ConversationStatus, Medium

RoleName = Literal["admin", "supervisor", "agent"]
Availability = Literal["online", "busy", "offline"]
Capacity = Annotated[StrictInt, Field(ge=1, le=100_000)]

# Ids are the hub's own: hex ObjectIds and derived ids, never anything with `$` or `.`.
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:-]{1,64}$")]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^$.\x00]+$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
LOCALE = r"^[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8})*$"
AttributeKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w -]+$")]


def _query_bool(value: Any) -> Any:
    # A query string is text: "true" and "false" are the booleans, nothing else
    # ("1", "yes", "on" are refused, not guessed at); a non-string goes on to the
    # strict check, which refuses it.
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError('give "true" or "false"')
        return value == "true"
    return value


# A boolean in a query string.
QueryBool = Annotated[StrictBool, BeforeValidator(_query_bool)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Output(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors -------------------------------------------------------------------------


class ErrorBody(Output):
    code: str
    message: str


class ErrorOut(Output):
    error: ErrorBody


# -- auth, agents, teams ----------------------------------------------------------------


class LoginIn(Input):
    email: Annotated[str, Field(min_length=3, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class AgentOut(Output):
    id: str
    email: str
    name: str
    role: RoleName
    inboxes: list[str]
    teams: list[str]
    active: bool
    availability: Availability = "online"
    capacity: int | None = Field(
        default=None, description="open conversations at most (round robin); null: no limit"
    )


class LoginOut(Output):
    token: str
    csrf_token: str
    agent: AgentOut
    expires_at: str


class MeOut(Output):
    agent: AgentOut
    inboxes: list[str] | None = Field(description="inboxes this agent sees; null: all")


class OkOut(Output):
    ok: bool


class LockOut(Output):
    id: str = Field(description="the handle to clear it with")
    kind: Literal["account", "address", "device"] = Field(
        description="an account (from browsers it does not know), a client address, "
        "or one known browser of an account"
    )
    subject: str = Field(description="the e-mail, the address (an IPv6 /64), or both")
    failures: int = Field(description="failed logins counted toward the next backoff")
    locked_until: str | None = Field(description="when its backoff ends; null: not backed off")
    retry_after: int = Field(description="seconds until then; 0: not backed off")


class LockList(Output):
    items: list[LockOut]
    next_cursor: str | None = None


class AgentCreate(Input):
    email: Annotated[str, Field(min_length=3, max_length=254)]
    name: Name
    role: RoleName = "agent"
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    inboxes: list[Id] = Field(default_factory=list, max_length=200)
    teams: list[Id] = Field(default_factory=list, max_length=200)


class AgentPatch(Input):
    name: Name | None = None
    role: RoleName | None = None
    password: Annotated[str, Field(min_length=8, max_length=1024)] | None = None
    inboxes: list[Id] | None = Field(default=None, max_length=200)
    teams: list[Id] | None = Field(default=None, max_length=200)
    active: StrictBool | None = None
    capacity: Capacity | None = Field(
        default=None, description="open conversations at most (round robin); null: no limit"
    )


class AvailabilityIn(Input):
    availability: Availability


class AgentList(Output):
    items: list[AgentOut]
    next_cursor: str | None = None


class TeamIn(Input):
    name: Name
    inboxes: list[Id] = Field(default_factory=list, max_length=200)


class TeamPatch(Input):
    name: Name | None = None
    inboxes: list[Id] | None = Field(default=None, max_length=200)


class TeamOut(Output):
    id: str
    name: str
    inboxes: list[str]


class TeamList(Output):
    items: list[TeamOut]
    next_cursor: str | None = None


# -- conversations and messages -----------------------------------------------------------


class ConversationQuery(Input):
    status: ConversationStatus | None = None
    inbox: Id | None = None
    assignee: Id | None = Field(default=None, description='an agent id, "me" or "none"')
    bot: QueryBool | None = Field(
        default=None, description="true: only conversations a bot serves; false: only people's"
    )
    overdue: QueryBool | None = Field(
        default=None, description="true: only those past the first-response SLA, unanswered"
    )
    q: Annotated[str, Field(max_length=200)] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 25
    cursor: Annotated[str, Field(max_length=300)] | None = None


class ContactRef(Output):
    id: str | None
    name: str | None


class LastMessage(Output):
    text: str | None
    direction: str | None
    at: str | None


class SearchMatch(Output):
    message_id: str
    text: str | None


class ConversationOut(Output):
    id: str
    status: ConversationStatus | None
    inbox: str | None
    channel: str | None
    contact: ContactRef
    assignee: str | None
    bot: str | None = None  # the bot serving it (status pending), else null
    labels: list[str]
    last_message: LastMessage | None
    unread: int
    last_activity_at: str | None
    created_at: str | None
    snooze_until: str | None = None
    sla_breached_at: str | None = None
    overdue: bool = Field(default=False, description="past the first-response SLA, unanswered")
    match: SearchMatch | None = Field(
        default=None, description="with q: the newest message holding the words (null: the contact)"
    )


class ConversationList(Output):
    items: list[ConversationOut]
    next_cursor: str | None


class ConversationPatch(Input):
    status: ConversationStatus | None = None
    snooze_until: datetime | None = None
    assignee_id: Id | None = None
    labels: list[Label] | None = Field(default=None, max_length=50)
    unread: Annotated[int, Field(ge=0, le=0)] | None = Field(
        default=None, description="0 marks the conversation read"
    )


class MessageQuery(Input):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    before: Id | None = None


class Sender(Output):
    type: Literal["contact", "agent", "bot", "system"]
    id: str | None


class CallOut(Output):
    direction: str | None = None
    status: str | None = None
    duration: int | float | None = None
    recording_url: str | None = None


class AttachmentOut(Output):
    """A message's file (CONTRACT.md "Media and search"); `error` says why a
    `failed` one could not be had."""

    id: str | None
    name: str | None
    content_type: str | None
    size: int | None
    status: Literal["pending", "ready", "failed"]
    url: str | None = Field(description="/api/media/{id}: the bytes, to an agent who may see it")
    error: str | None = None


class MessageOut(Output):
    id: str
    conversation_id: str | None
    inbox: str | None
    direction: Literal["in", "out"] | None
    kind: Literal["text", "media", "call", "voicemail", "email", "note", "event"] | None
    text: str | None
    subject: str | None
    sender: Sender
    status: str | None
    error: str | None
    attachments: list[AttachmentOut]
    call: CallOut | None
    created_at: str | None
    send_at: str | None = Field(default=None, description="when a scheduled reply goes")


class MessageList(Output):
    items: list[MessageOut]
    next_cursor: str | None


class ConversationOpen(Input):
    contact_id: Id
    inbox: Id
    medium: Medium | None = Field(
        default=None,
        description="for an inbox on several media (Twilio: sms or whatsapp); "
        "default: the first of the inbox's media the contact has an identity for",
    )


class TemplateIn(Input):
    name: Annotated[str, Field(min_length=1, max_length=512)]
    language: Annotated[str, Field(min_length=2, max_length=16, description='e.g. "en_US"')]
    parameters: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(max_length=20)
    ] = Field(default_factory=list, description="the placeholders' values, in order")


class MessageIn(Input):
    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    private: StrictBool = False
    subject: Annotated[str, Field(max_length=500)] | None = None
    send_at: datetime | None = Field(
        default=None, description="send later: a future time (201 with status scheduled)"
    )
    template: TemplateIn | None = Field(
        default=None,
        description="WhatsApp: an approved template (GET /api/inboxes/{id}/templates); "
        "the stored text is its filled body; it goes outside the 24-hour window too",
    )

    @model_validator(mode="after")
    def _text_or_template(self) -> MessageIn:
        if self.template is None and self.text is None:
            raise ValueError("text: Field required")
        if self.template is not None and (self.private or self.send_at is not None):
            raise ValueError("template: a template is sent now, not as a note or later")
        return self


class TemplateOut(Output):
    name: str
    language: str
    category: str
    body: str
    parameters: list[str]


class TemplateList(Output):
    items: list[TemplateOut]
    next_cursor: str | None


class TemplateQuery(Input):
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    cursor: Annotated[str, Field(max_length=300)] | None = None
    medium: Medium | None = Field(
        default=None, description="for an inbox on several media (Twilio): whatsapp"
    )


# -- contacts ----------------------------------------------------------------------


class Birthday(Input):
    month: Annotated[int, Field(ge=1, le=12)]
    day: Annotated[int, Field(ge=1, le=31)]
    year: Annotated[int, Field(ge=1900, le=2100)] | None = None

    @model_validator(mode="after")
    def _a_real_day(self) -> Birthday:
        import calendar

        # 29 February is a birthday (greeted on the 28th in other years) unless the
        # year is given and is not a leap year.
        leap_ok = self.year is None or calendar.isleap(self.year)
        days = calendar.monthrange(2000 if leap_ok else 2001, self.month)[1]
        if self.day > days:
            raise ValueError(f"no such day: month {self.month} has no day {self.day}")
        return self


class ContactQuery(Input):
    q: Annotated[str, Field(max_length=200)] | None = None
    label: Label | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 25
    cursor: Annotated[str, Field(max_length=300)] | None = None


Phone = Annotated[str, Field(min_length=3, max_length=40)]
Email = Annotated[str, Field(min_length=3, max_length=254)]
AttributeValue = Annotated[str, Field(max_length=1000)]


class _ContactFields(Input):
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=35, pattern=LOCALE)] | None = None
    birthday: Birthday | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class ContactCreate(_ContactFields):
    name: Name | None = None
    phones: list[Phone] = Field(default_factory=list, max_length=20)
    emails: list[Email] = Field(default_factory=list, max_length=20)
    telegram: Id | None = None
    labels: list[Label] = Field(default_factory=list, max_length=50)
    attributes: dict[AttributeKey, AttributeValue] = Field(default_factory=dict, max_length=100)


class ContactPatch(_ContactFields):
    name: Name | None = None
    phones: list[Phone] | None = Field(default=None, max_length=20)
    emails: list[Email] | None = Field(default=None, max_length=20)
    labels: list[Label] | None = Field(default=None, max_length=50)
    attributes: dict[AttributeKey, AttributeValue | None] | None = Field(
        default=None, max_length=100, description="a null value removes the attribute"
    )
    opted_out: dict[Medium, StrictBool] | None = None


class MergeIn(Input):
    other_id: Id


class IdentityOut(Output):
    kind: str
    value: str


class ContactOut(Output):
    id: str
    name: str | None
    phones: list[str]
    emails: list[str]
    telegram: str | None
    birthday: dict[str, int | None] | None
    timezone: str | None
    locale: str | None
    labels: list[str]
    attributes: dict[str, str]
    opted_out: dict[str, bool]
    identities: list[IdentityOut]
    created_at: str | None


class ContactList(Output):
    items: list[ContactOut]
    next_cursor: str | None
