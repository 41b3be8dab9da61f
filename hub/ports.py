"""The contract between the hub's core and its plug-ins (channels, bots, scheduled jobs).

Plain types and protocols only: this module touches no store and imports only the
model, so a plug-in can depend on it without pulling in the core, and the core
can call a plug-in without importing its package.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from hub.model import (
    Attachment,
    ButtonReply,
    IdentityRef,
    InboundEvent,
    OutboundMessage,
    SendResult,
    StatusUpdate,
)

if TYPE_CHECKING:
    import aiohttp

    from hub.ratelimit import KeyedRateLimiter, RateLimiter


class StoreUnavailable(Exception):
    """The store could not take the write; the provider must retry (answer 5xx)."""


class UnstorableEvent(ValueError):
    """This one event holds something the store cannot keep; it was refused alone
    (answer 400: a retry of the same payload cannot succeed), and the events
    written with it were stored."""


@dataclass(frozen=True)
class IngestResult:
    """What ingest made of one inbound event."""

    message_id: str
    conversation_id: str
    contact_id: str
    duplicate: bool


# -- channels ---------------------------------------------------------------------


class ChannelSettings(BaseModel):
    """Base of every channel's settings; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SendError(Exception):
    """A send that did not go through. `reason` is shown to the agent."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientSendError(SendError):
    """Worth retrying later (rate limit, timeout, 5xx).

    `maybe_sent` says whether the provider may have taken the message anyway (a
    timeout, a 5xx); a 429 or a refused connection is certainly not sent. An
    at-most-once send (campaign, greeting) is retried only when it was not sent.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = True,
    ) -> None:
        super().__init__(reason, code=code)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


class PermanentSendError(SendError):
    """Will never succeed as it is; `opt_out` marks the recipient unsubscribed."""

    def __init__(self, reason: str, *, code: str | None = None, opt_out: bool = False) -> None:
        super().__init__(reason, code=code)
        self.opt_out = opt_out


@dataclass(frozen=True)
class RateLimit:
    """Messages per second an inbox may send, and the burst it may use at once."""

    per_second: float
    burst: int = 1
    # Also pace each recipient (`OutboundMessage.to`) at this rate (Telegram chats).
    per_recipient: float | None = None


@dataclass(frozen=True)
class OutboundFile:
    """An agent's file kept by the hub, as a channel sends it: its bytes, name and
    the content type the hub detected from the bytes."""

    data: bytes
    name: str | None
    content_type: str


@dataclass(frozen=True)
class FileRefusal:
    """Why a channel cannot send a file: 413 (too large) or 415 (a type it does
    not take), and the message naming the channel's limit."""

    status: int
    message: str


@dataclass(frozen=True)
class MessageTemplate:
    """An approved message template of an inbox (WhatsApp): what the agent picks
    and fills. `body` holds placeholders `{{1}}`, `{{2}}`, ... (or named ones);
    `parameters` names them in the order the agent fills them; `ref` is the
    provider's own id of it (Twilio's content SID), empty where the name is enough."""

    name: str
    language: str
    category: str
    body: str
    parameters: tuple[str, ...] = ()
    ref: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "language": self.language,
            "category": self.category,
            "body": self.body,
            "parameters": list(self.parameters),
        }


@dataclass(frozen=True)
class WebhookRoute:
    """One route an inbox serves: its method, its full path and its handler."""

    method: str
    path: str
    handler: Any  # an aiohttp handler: (web.Request) -> Awaitable[web.StreamResponse]


@dataclass(frozen=True)
class FetchedMedia:
    """A file a channel downloaded from its provider (`Channel.fetch_media`): the
    bytes, and the name and type the provider gave (the hub sniffs its own)."""

    data: bytes
    name: str | None = None
    content_type: str | None = None


class MediaFetchError(Exception):
    """A download that did not work. `permanent`: retrying cannot help (gone,
    refused, too large); otherwise the hub tries again later."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class MediaTooLarge(MediaFetchError):
    """The file is larger than the hub takes (`[media] max_inbound_bytes`)."""

    def __init__(self, size: int | None, limit: int) -> None:
        what = f"{size} bytes" if size is not None else "more"
        super().__init__(f"too large: {what}, the limit is {limit} bytes", permanent=True)
        self.size = size
        self.limit = limit


class ChannelContext(Protocol):
    """What the hub gives a channel adapter; adapters reach for nothing else."""

    public_url: str
    default_region: str
    logger: logging.Logger
    max_media_bytes: int  # the largest file the hub keeps ([media] max_inbound_bytes)

    async def ingest(self, events: Sequence[InboundEvent]) -> list[IngestResult]:
        """Dedupe, store and publish inbound events; one result per event, in order.
        Raises StoreUnavailable when they could not be stored (answer 5xx)."""
        ...

    async def record_status(self, updates: Sequence[StatusUpdate]) -> int:
        """Apply a provider's delivery statuses; how many messages changed."""
        ...

    def http(self) -> aiohttp.ClientSession:
        """The hub's shared HTTP client session (open while the hub runs)."""
        ...

    async def find_thread(self, inbox: str, message_ids: Sequence[str]) -> str | None:
        """The conversation of `inbox` holding a message with one of these e-mail
        Message-IDs (inbound `email.message_id`, or an outbound send's provider id)."""
        ...

    async def opt_out(self, ref: IdentityRef, medium: str, opted_out: bool = True) -> str:
        """Resolve-or-create the contact of `ref` and set its opt-out on `medium`."""
        ...

    async def call_incoming(self, inbox: str, ref: IdentityRef, call_id: str) -> str:
        """Resolve-or-create the caller and publish `call.incoming` (the screen-pop)."""
        ...

    async def send_text(
        self, inbox: str, medium: str, ref: IdentityRef, text: str, *, key: str | None = None
    ) -> str | None:
        """Queue a text from the system to `ref` (once per `key`); the message id,
        or None when the contact opted out of `medium`."""
        ...

    async def update_contact(
        self,
        ref: IdentityRef,
        also: Sequence[IdentityRef] = (),
        name: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Resolve-or-create the contact of `ref`, attach `also`, name it, set attributes."""
        ...

    async def outbound_file(self, attachment: Attachment) -> OutboundFile:
        """The bytes of an agent's file the hub keeps (`attachment.id`), to upload."""
        ...

    async def signed_media_url(self, attachment: Attachment) -> str:
        """A public, signed and expiring URL of an agent's file the hub keeps, for a
        provider that fetches outbound files itself (Twilio's MediaUrl)."""
        ...

    async def keep_media(self, data: bytes, *, name: str | None, content_type: str | None) -> str:
        """Keep a file that came inside a webhook (an e-mail's attachment) until its
        message is stored; the reference to give as the attachment's `url`."""
        ...


class Channel(Protocol):
    """What the core needs of a configured inbox's adapter (`channels.base.ChannelAdapter`
    implements it): its routes and URLs for the factory, its pace and sender for the
    dispatcher, its reply rule for the reply service."""

    name: ClassVar[str]
    inbox_id: str

    @property
    def webhook_prefix(self) -> str:
        """The path under which the inbox's webhook routes are served."""
        ...

    def webhook_routes(self) -> list[WebhookRoute]: ...

    def webhook_urls(self, public_url: str) -> list[str]: ...

    def rate_limit(self) -> RateLimit: ...

    def share_pacing(
        self, overall: RateLimiter, per_recipient: KeyedRateLimiter | None
    ) -> None: ...

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None: ...

    def reply_refusal_on(
        self, medium: str | None, last_inbound_at: datetime | None, template: bool
    ) -> str | None:
        """`reply_refusal` for a conversation on `medium` (an adapter serving several
        media, such as Twilio's SMS and WhatsApp, answers per medium)."""
        ...

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        """Why the inbox cannot send this file on `medium` (its type or size), or
        None; asked before an agent's files are queued."""
        ...

    def files_per_message(self, medium: str | None) -> int:
        """How many files one message on `medium` carries (more go as more messages)."""
        ...

    async def templates(self, medium: str | None) -> list[MessageTemplate] | None:
        """The approved templates the inbox may send on `medium`; None when it has
        none (not a template channel). Raises SendError when the provider fails."""
        ...

    def template_message(
        self, template: MessageTemplate, parameters: Sequence[str]
    ) -> dict[str, Any]:
        """The `OutboundMessage.template` that sends `template` filled with `parameters`."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """Download an inbound attachment by the reference the adapter gave it
        (its `Attachment.url`), with the inbox's own credentials; at most
        `max_bytes` (else MediaTooLarge). Raises MediaFetchError."""
        ...


# -- bots -------------------------------------------------------------------------


class BotHook(Protocol):
    """The bot of the hub: called with every new inbound message after it is stored."""

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        """Called once per new inbound message (never for a provider's retry).
        `conversation` holds its `_id` and, as ingest knew it, its `contact_id`;
        the conversation itself is read from the store."""
        ...


class NoBot:
    """No bot: every conversation waits for an agent."""

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        return None


class Replies(Protocol):
    """How a bot or a scheduled job sends: through the outbox, never a channel."""

    async def reply(
        self,
        conversation_id: str,
        *,
        text: str | None,
        sender: dict[str, Any],
        template: dict[str, Any] | None = None,
        buttons: list[ButtonReply] | None = None,
        attachments: list[Attachment] | None = None,
        subject: str | None = None,
        at_most_once: bool = False,
        campaign_id: str | None = None,
        key: str | None = None,
    ) -> dict[str, Any]: ...


# -- scheduled jobs ---------------------------------------------------------------


class ScheduledJob(Protocol):
    """A job the scheduler fires. `name` is unique among jobs and names the lease
    that one hub process takes before `run`, so of many processes one runs it;
    `every` is the interval in seconds between runs."""

    name: str
    every: float

    async def run(self, now: datetime) -> None: ...
