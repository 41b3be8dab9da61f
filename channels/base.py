"""What every channel adapter is: its settings, its webhook routes, its sender,
its pace and how it classifies a provider's errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from hub.events import Event
from hub.model import IdentityRef, InboundEvent, OutboundMessage, SendResult, StatusUpdate
from hub.ratelimit import KeyedRateLimiter, RateLimiter


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


class StoreUnavailable(Exception):
    """The store could not take the write; the provider must retry (answer 5xx)."""


@dataclass(frozen=True)
class RateLimit:
    """Messages per second an inbox may send, and the burst it may use at once."""

    per_second: float
    burst: int = 1
    # Also pace each recipient (`OutboundMessage.to`) at this rate (Telegram chats).
    per_recipient: float | None = None


@dataclass(frozen=True)
class ChannelContext:
    """What the hub gives an adapter; adapters reach for nothing else."""

    ingest: Callable[[Sequence[InboundEvent]], Awaitable[list[object]]]
    record_status: Callable[[Sequence[StatusUpdate]], Awaitable[int]]
    http: Callable[[], aiohttp.ClientSession]
    public_url: str
    default_region: str
    logger: logging.Logger
    # The conversation of `inbox` holding a message with one of these e-mail
    # Message-IDs (inbound `email.message_id`, or an outbound send's provider id).
    find_thread: Callable[[str, Sequence[str]], Awaitable[str | None]]
    # Resolve-or-create the contact of an identity and set its opt-out on `medium`.
    opt_out: Callable[[IdentityRef, str, bool], Awaitable[str]]
    # Resolve-or-create the caller and publish `call.incoming` (the screen-pop).
    call_incoming: Callable[[str, IdentityRef, str], Awaitable[str]]
    # Queue a text from the system to `ref` on `inbox` and `medium` (keyword `key`:
    # once per key); the message id, or None when the contact opted out.
    send_text: Callable[..., Awaitable[str | None]]
    # Resolve-or-create the contact of `ref`, attach `also`, name it, set attributes.
    update_contact: Callable[..., Awaitable[str]]
    publish: Callable[[Sequence[Event]], Awaitable[None]]


class ChannelAdapter:
    """One provider. Subclasses set `name`, `Settings`, and implement the hooks."""

    name: ClassVar[str]
    Settings: ClassVar[type[ChannelSettings]]

    def __init__(self, inbox_id: str, settings: ChannelSettings, ctx: ChannelContext) -> None:
        self.inbox_id = inbox_id
        self.settings = settings
        self.ctx = ctx

    @property
    def webhook_prefix(self) -> str:
        return f"/webhooks/{self.name}/{self.inbox_id}"

    def routes(self) -> list[web.RouteDef]:
        """Webhook routes, with paths relative to `webhook_prefix`."""
        return []

    def rate_limit(self) -> RateLimit:
        return RateLimit(per_second=10.0, burst=1)

    def share_pacing(self, overall: RateLimiter, per_recipient: KeyedRateLimiter | None) -> None:
        """The dispatcher's limiters for this inbox (built from `rate_limit()`).

        The dispatcher takes one slot from them for each send before calling
        `send`. An adapter that sends one message in several parts takes the later
        parts' slots from these same limiters, so the dispatcher's pace counts
        them too; a second schedule of its own would drift from the dispatcher's
        and hold sends back at random.
        """

    async def start(self) -> None:
        """Open what the adapter needs (clients, registrations)."""

    async def close(self) -> None:
        """Release what `start` opened."""

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        """Why a reply cannot be queued now (None when it can); the API shows it."""
        return None

    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(f"channel {self.name} cannot send messages")
