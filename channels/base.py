"""The channel toolkit: what every channel adapter is (its settings, webhook routes,
sender, pace and error classification) and the few things every webhook needs.

Two exceptions say what a webhook could not use, and one place answers them for
every route of every adapter (`ChannelAdapter.webhook_routes`):

- `IgnoredEvent`: a known event the hub does not handle. Acknowledged (200) so
  the provider does not retry it, and logged as ignored.
- `MalformedPayload`: a body that does not look like the provider's. 400 with
  the API's JSON error body (`{"error": {"code": "bad_request", ...}}`).

A bad signature is a 403 (`web.HTTPForbidden`). None of the three writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from aiohttp import web
from pydantic import ValidationError

from hub.jsontext import UnreadableJson, parse_json
from hub.model import OutboundMessage, SendResult
from hub.ports import (
    ChannelContext,
    ChannelSettings,
    FetchedMedia,
    FileRefusal,
    MediaFetchError,
    MessageTemplate,
    PermanentSendError,
    RateLimit,
    SendError,
    StoreUnavailable,
    TransientSendError,
    UnstorableEvent,
    WebhookRoute,
)
from hub.ratelimit import KeyedRateLimiter, RateLimiter

log = logging.getLogger("hub.channels")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IgnoredEvent(Exception):
    """A known event that the hub does not handle: acknowledged (200) and logged."""

    def __init__(self, event: str, reason: str = "not handled") -> None:
        super().__init__(f"{event}: {reason}")
        self.event = event
        self.reason = reason


class MalformedPayload(Exception):
    """A payload that does not look like the provider's: 400 with the API's error body."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def bad_request(message: str) -> web.Response:
    """A 400 in the API's error shape."""
    return web.json_response({"error": {"code": "bad_request", "message": message}}, status=400)


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line naming each field: `to: Field required; ...`."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def json_object(body: bytes) -> dict[str, Any]:
    """A raw body as a JSON object, or MalformedPayload saying why it is not one
    (`hub.jsontext`: not JSON, nested too deep, a number with too many digits)."""
    try:
        payload = parse_json(body)
    except UnreadableJson as error:
        raise MalformedPayload(str(error)) from None
    if not isinstance(payload, dict):
        raise MalformedPayload("the body must be a JSON object")
    return payload


def supported_events(event_map: Mapping[str, object]) -> tuple[str, ...]:
    """The events an adapter handles, read from its map of event type to handler."""
    return tuple(event_map)


class ChannelAdapter:
    """One provider. Subclasses set `name`, `Settings`, and implement the hooks."""

    name: ClassVar[str]
    Settings: ClassVar[type[ChannelSettings]]
    # "module:Class" of the provider's simulator (`channels.simulation.Simulator`),
    # which the sandbox puts in the provider's place; None: the sandbox skips it.
    simulator: ClassVar[str | None] = None

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

    def webhook_routes(self) -> list[WebhookRoute]:
        """The routes the hub serves for this inbox, with their full paths, each
        answering `IgnoredEvent` and `MalformedPayload` the one way they are answered."""
        return [
            WebhookRoute(route.method, self.webhook_prefix + route.path, self._guarded(route))
            for route in self.routes()
            if isinstance(route, web.RouteDef)
        ]

    def _guarded(self, route: web.RouteDef) -> Handler:
        handler: Handler = route.handler  # type: ignore[assignment]

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except IgnoredEvent as ignored:
                log.info(
                    "event ignored",
                    extra={
                        "inbox": self.inbox_id,
                        "channel": self.name,
                        "event": ignored.event[:64],
                        "reason": ignored.reason,
                    },
                )
                return self.ignored_response(ignored)
            except MalformedPayload as malformed:
                message = malformed.message
            except ValidationError as error:
                # What the adapter built from the payload is not a valid hub event
                # (a value the store cannot hold, a field out of range).
                message = validation_message(error)
            except UnstorableEvent as error:
                message = str(error)
            log.info(
                "malformed webhook",
                extra={"inbox": self.inbox_id, "channel": self.name, "error": message},
            )
            return bad_request(message)

        return guarded

    def ignored_response(self, ignored: IgnoredEvent) -> web.StreamResponse:
        """What the provider is answered for an event the hub does not handle."""
        return web.json_response({"ok": True, "ignored": ignored.reason})

    def webhook_urls(self, public_url: str) -> list[str]:
        """The URLs to give the provider, for the status page and the docs."""
        return [public_url + self.webhook_prefix]

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

    def reply_refusal_on(
        self, medium: str | None, last_inbound_at: datetime | None, template: bool
    ) -> str | None:
        """`reply_refusal` for a conversation on `medium`; the same for every medium
        unless the adapter serves several with different rules."""
        return self.reply_refusal(last_inbound_at, template)

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        """Why the inbox cannot send this file (type or size); None: it can."""
        return None

    def files_per_message(self, medium: str | None) -> int:
        """Files one message carries; more are sent as more messages."""
        return 10

    async def templates(self, medium: str | None) -> list[MessageTemplate] | None:
        """The inbox's approved templates on `medium`; None: it has no templates."""
        return None

    def template_message(
        self, template: MessageTemplate, parameters: Sequence[str]
    ) -> dict[str, Any]:
        """What `OutboundMessage.template` holds to send `template` with `parameters`."""
        raise PermanentSendError(f"channel {self.name} sends no templates", code="no_templates")

    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(f"channel {self.name} cannot send messages")

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """Download an inbound attachment by its reference (`Attachment.url` as the
        adapter gave it); channels with media override this."""
        raise MediaFetchError(f"channel {self.name} has no media to fetch", permanent=True)


__all__ = [
    "ChannelAdapter",
    "ChannelContext",
    "ChannelSettings",
    "FileRefusal",
    "IgnoredEvent",
    "MalformedPayload",
    "MessageTemplate",
    "PermanentSendError",
    "RateLimit",
    "SendError",
    "StoreUnavailable",
    "TransientSendError",
    "UnstorableEvent",
    "bad_request",
    "json_object",
    "supported_events",
    "validation_message",
]
