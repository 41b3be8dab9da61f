"""What every channel adapter is: its settings, its webhook routes, its sender,
its pace and how it classifies a provider's errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from hub.model import InboundEvent, OutboundMessage, SendResult, StatusUpdate


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


@dataclass(frozen=True)
class ChannelContext:
    """What the hub gives an adapter; adapters reach for nothing else."""

    ingest: Callable[[Sequence[InboundEvent]], Awaitable[list[object]]]
    record_status: Callable[[Sequence[StatusUpdate]], Awaitable[int]]
    http: Callable[[], aiohttp.ClientSession]
    public_url: str
    default_region: str
    logger: logging.Logger


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

    async def start(self) -> None:
        """Open what the adapter needs (clients, registrations)."""

    async def close(self) -> None:
        """Release what `start` opened."""

    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(f"channel {self.name} cannot send messages")
