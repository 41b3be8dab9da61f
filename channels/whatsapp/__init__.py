"""WhatsApp Cloud API (Meta): notifications in, Graph API messages out.

Routes, under `/webhooks/whatsapp/{inbox}`:

- `GET ""`: Meta's verification handshake. `hub.mode=subscribe` with a
  `hub.verify_token` equal (in constant time) to the inbox's `verify_token` is
  answered 200 with `hub.challenge` as a `text/plain` body; anything else 403.
- `POST ""`: notifications. `X-Hub-Signature-256` must be `sha256=` + the hex
  HMAC-SHA256 of the raw body with the app secret (403 otherwise). The body is
  parsed into typed models at the edge (400 when it is not JSON or not shaped
  like a WhatsApp notification), then every entry, every change and every
  message and status of the batch is normalised before anything is written: one
  `ingest` call takes all the messages, one `record_status` call all the statuses.

Media become attachments whose URL names the media id (`whatsapp-media:<id>`):
Meta's media URLs need the access token and expire, the id does not; the hub's
media fetcher calls `fetch_media` (`fetch`: id -> URL -> bytes) after the
webhook was answered. A reaction
is stored as a text message holding the emoji, with `extra.reaction` and
`extra.reaction_to` (the reacted-to message id) so the agent sees it in the
thread; removing a reaction is logged as ignored. The sender is the `from` phone
number in E.164 with the profile name from `contacts[]`; the provider id is the
message id (`wamid...`), so Meta's retries are stored once. Changes of another
`phone_number_id` (a shared WhatsApp Business Account) and change fields other
than `messages` are logged as ignored.

The package:

- `settings`: `WhatsAppSettings`, an inbox's settings.
- `wire`: pydantic models of Meta's notifications and of the Graph API's answers.
- `inbound`: the verification handshake, the signature check and a notification
  normalised into hub events and statuses (`MESSAGE_HANDLERS`, the map from
  Meta's message type to its handler function).
- `outbound`: sending (text, media, templates, buttons and lists) and Graph's
  errors classified (`classify_graph_error`).
- `simulator`: a Graph API server on loopback for the tests and the sandbox (not
  imported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from aiohttp import web

from channels.base import ChannelAdapter, FileRefusal, MessageTemplate, RateLimit
from channels.whatsapp import fetch, inbound, media, outbound, templates
from channels.whatsapp.inbound import (
    CHANGE_FIELDS,
    IGNORED_MESSAGE_TYPES,
    INTERACTIVE_REPLIES,
    MESSAGE_HANDLERS,
    STATUS_MAP,
    SUPPORTED_EVENTS,
)
from channels.whatsapp.outbound import WINDOW, WINDOW_REASON, build_payloads, classify_graph_error
from channels.whatsapp.settings import WhatsAppSettings
from channels.whatsapp.wire import MEDIA_URL_PREFIX
from hub.model import OutboundMessage, SendResult
from hub.ports import FetchedMedia, PermanentSendError

__all__ = [
    "CHANGE_FIELDS",
    "IGNORED_MESSAGE_TYPES",
    "INTERACTIVE_REPLIES",
    "MEDIA_URL_PREFIX",
    "MESSAGE_HANDLERS",
    "STATUS_MAP",
    "SUPPORTED_EVENTS",
    "WINDOW",
    "WINDOW_REASON",
    "WhatsAppChannel",
    "WhatsAppSettings",
    "build_payloads",
    "classify_graph_error",
]


class WhatsAppChannel(ChannelAdapter):
    name = "whatsapp"
    Settings = WhatsAppSettings
    simulator = "channels.whatsapp.simulator:FakeWhatsApp"
    settings: WhatsAppSettings

    REQUIRED_SECRETS: ClassVar[dict[str, str]] = {
        "app_secret": "to verify Meta's notification signatures",
        "verify_token": "to answer Meta's webhook verification",
        "access_token": "to send through the Graph API",
    }

    def routes(self) -> list[web.RouteDef]:
        return [web.get("", self.verify), web.post("", self.notification)]

    def rate_limit(self) -> RateLimit:
        return RateLimit(per_second=self.settings.rate, burst=1)

    async def start(self) -> None:
        for key, why in self.REQUIRED_SECRETS.items():
            if not str(getattr(self.settings, key)).strip():
                raise ValueError(f"{self.inbox_id}: {key} is required {why}")

    async def verify(self, request: web.Request) -> web.Response:
        return await inbound.verify(request, self.settings, self.ctx.logger, self.inbox_id)

    async def notification(self, request: web.Request) -> web.Response:
        return await inbound.notification(request, self.settings, self.ctx, self.inbox_id)

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        return outbound.reply_refusal(last_inbound_at, template)

    async def templates(self, medium: str | None) -> list[MessageTemplate] | None:
        return await templates.approved(self.settings, self.ctx.http())

    def template_message(
        self, template: MessageTemplate, parameters: Sequence[str]
    ) -> dict[str, Any]:
        return templates.template_message(template, parameters)

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        return media.refuse_file(content_type, size)

    def files_per_message(self, medium: str | None) -> int:
        return 1

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """A customer's file by its media id (`channels.whatsapp.fetch`)."""
        return await fetch.fetch(self.ctx.http(), self.settings, ref, max_bytes)

    async def send(self, message: OutboundMessage) -> SendResult:
        if any(a.id for a in message.attachments):
            # An agent's files: uploaded to Graph first, then sent by media id.
            refusal = outbound.reply_refusal(message.last_inbound_at, message.template is not None)
            if refusal:
                raise PermanentSendError(refusal, code="outside_window")
            attachments = []
            for attachment in message.attachments:
                if attachment.id:
                    file = await self.ctx.outbound_file(attachment)
                    media_id = await media.upload(self.settings, self.ctx.http(), file)
                    attachment = media.uploaded(attachment, media_id)
                attachments.append(attachment)
            message = message.model_copy(update={"attachments": tuple(attachments)})
        return await outbound.send(message, self.settings, self.ctx.http())
