"""Twilio: SMS, WhatsApp and Voice through one Twilio account.

Webhook routes, relative to `/webhooks/twilio/{inbox}`:

- `POST /messages`: inbound SMS and WhatsApp, answered with empty TwiML;
- `POST /status`: status callbacks of the messages we send (our `StatusCallback`);
- `POST /voice`: an incoming call, answered with TwiML: the greeting, the agents'
  phones ringing together, then voicemail;
- `POST /voice/status`: the `<Dial>` and `<Record>` actions of that TwiML, and the
  number's own call status callback when the console points it here;
- `POST /voice/recording`: the recording status callback, which becomes a voicemail.

The modules, by room: `messaging` (the first two routes), `voice` (the call flow),
`rest` (sending, and what Twilio's error answers mean), `webhook` (what every route
shares), `settings`, and `simulator` (a loopback Twilio for tests and the sandbox).

Every request is verified with the twilio library's `RequestValidator` over the URL
Twilio called (`public_url` + path and query) and the form parameters; a missing or
wrong `X-Twilio-Signature` is 403 before anything is parsed or written. Each request
is classified into one event type (`classify`), and `EVENTS` maps it to the function
that handles it, or to None: known, acknowledged as Twilio expects (empty TwiML or
an empty body) and logged as ignored. An event absent from `EVENTS` is a 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from aiohttp import web
from twilio.request_validator import RequestValidator

from channels.base import (
    ChannelAdapter,
    ChannelContext,
    ChannelSettings,
    FileRefusal,
    IgnoredEvent,
    MalformedPayload,
    MessageTemplate,
    RateLimit,
)
from channels.base import supported_events as events_of
from channels.twilio import content, fetch, media, messaging, rest, voice
from channels.twilio.rest import retry_after_seconds
from channels.twilio.settings import TwilioSettings
from channels.twilio.webhook import Acknowledge, Classifier, Handler, empty, verified_form
from hub.model import OutboundMessage, SendResult, utcnow
from hub.ports import FetchedMedia

# Each route and its classifier, in the order they are served.
ROUTES: dict[str, Classifier] = {**messaging.ROUTES, **voice.ROUTES}
# Every event type a request can be, and the function that handles it; None:
# known, acknowledged and logged as ignored. A type missing here is a 400.
EVENTS: dict[str, Handler | None] = {**messaging.EVENTS, **voice.EVENTS}
# What an ignored event is answered, by its family (the event type before the dot).
ACKNOWLEDGE: dict[str, Acknowledge] = {**messaging.ACKNOWLEDGE, **voice.ACKNOWLEDGE}
# The URLs to give Twilio (the number's messaging and voice webhooks, and the
# messaging status callback); the others are named by our own TwiML and sends.
CONSOLE_ROUTES = ("/messages", "/voice", "/status")

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]

# WhatsApp (through Twilio too) takes free-form messages only within 24 hours of
# the customer's last one; outside it only an approved template (error 63016).
WHATSAPP_WINDOW = timedelta(hours=24)
WHATSAPP_WINDOW_REASON = (
    "outside WhatsApp's 24-hour customer-service window: send an approved template"
)


def classify(route: str, form: Mapping[str, str]) -> str:
    """The event type of a request to `route` (the path after the inbox prefix)."""
    classifier = ROUTES.get(route)
    if classifier is None:
        raise MalformedPayload(f"no Twilio route {route}")
    return classifier(form)


class TwilioChannel(ChannelAdapter):
    """SMS, WhatsApp and Voice through Twilio."""

    name = "twilio"
    Settings = TwilioSettings
    simulator = "channels.twilio.simulator:FakeTwilio"
    settings: TwilioSettings

    EVENTS: ClassVar[dict[str, Handler | None]] = EVENTS

    @classmethod
    def supported_events(cls) -> list[str]:
        """The event types this adapter acts on (the others are acknowledged)."""
        return sorted(events_of({event: h for event, h in cls.EVENTS.items() if h}))

    def __init__(self, inbox_id: str, settings: ChannelSettings, ctx: ChannelContext) -> None:
        super().__init__(inbox_id, settings, ctx)
        self._validator = RequestValidator(self.settings.auth_token)
        self._authorization = rest.authorization(self.settings)

    # -- lifecycle and pace ---------------------------------------------------------

    async def start(self) -> None:
        if not self.settings.auth_token:
            raise ValueError(f"{self.inbox_id}: auth_token is required to verify Twilio")
        if not self.settings.account_sid:
            raise ValueError(f"{self.inbox_id}: account_sid is required")

    def rate_limit(self) -> RateLimit:
        per_second = self.settings.rate or (1.0 if self.settings.number else 10.0)
        return RateLimit(per_second=per_second, burst=self.settings.burst)

    # -- webhooks --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(route, self._endpoint(route)) for route in ROUTES]

    def url(self, path: str) -> str:
        """The public URL of one of this inbox's routes (what Twilio calls)."""
        return f"{self.ctx.public_url}{self.webhook_prefix}{path}"

    def webhook_urls(self, public_url: str) -> list[str]:
        return [f"{public_url}{self.webhook_prefix}{path}" for path in CONSOLE_ROUTES]

    def ignored_response(self, ignored: IgnoredEvent) -> web.StreamResponse:
        """Empty TwiML where Twilio waits for instructions, else an empty body."""
        family = ignored.event.partition(".")[0]
        return ACKNOWLEDGE.get(family, empty)()

    def _endpoint(self, route: str) -> Endpoint:
        classifier = ROUTES[route]

        async def endpoint(request: web.Request) -> web.StreamResponse:
            form = await verified_form(request, self._validator, self.ctx.public_url)
            event = classifier(form)
            if event not in self.EVENTS:
                raise MalformedPayload(f"unknown Twilio event {event!r}")
            handler = self.EVENTS[event]
            if handler is None:
                raise IgnoredEvent(event)
            return await handler(self, request, form)

        return endpoint

    # -- sending ---------------------------------------------------------------------

    def reply_refusal_on(
        self, medium: str | None, last_inbound_at: datetime | None, template: bool
    ) -> str | None:
        """On WhatsApp, free text only within 24 hours of the customer's last message."""
        if medium != "whatsapp" or template:
            return None
        if last_inbound_at is None:
            return WHATSAPP_WINDOW_REASON
        if last_inbound_at.tzinfo is None:  # the store hands back naive UTC
            last_inbound_at = last_inbound_at.replace(tzinfo=UTC)
        if utcnow() - last_inbound_at >= WHATSAPP_WINDOW:
            return WHATSAPP_WINDOW_REASON
        return None

    async def templates(self, medium: str | None) -> list[MessageTemplate] | None:
        """The Content API's approved WhatsApp templates (a WhatsApp sender only)."""
        if medium not in (None, "whatsapp") or not self.settings.whatsapp_number:
            return None
        return await content.approved(self.settings, self._authorization, self.ctx.http())

    def template_message(
        self, template: MessageTemplate, parameters: Sequence[str]
    ) -> dict[str, Any]:
        return content.template_message(template, parameters)

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        return media.refuse_file(medium, content_type, size)

    def files_per_message(self, medium: str | None) -> int:
        return media.files_per_message(medium)

    async def send(self, message: OutboundMessage) -> SendResult:
        if any(a.id for a in message.attachments):
            # The hub's own files: Twilio fetches each from a signed, expiring link.
            attachments = []
            for attachment in message.attachments:
                if attachment.id:
                    url = await self.ctx.signed_media_url(attachment)
                    attachment = attachment.model_copy(update={"url": url})
                attachments.append(attachment)
            message = message.model_copy(update={"attachments": tuple(attachments)})
        return await rest.send(self, message, self._authorization)

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """A customer's file (MediaUrl) or a call's recording (RecordingUrl), with
        the account's credentials (`channels.twilio.fetch`)."""
        return await fetch.fetch(self.ctx.http(), self.settings, ref, max_bytes)


__all__ = ["TwilioChannel", "TwilioSettings", "classify", "retry_after_seconds"]
