"""E-mail: SMTP out (aiosmtplib), in through the hub's own SMTP receiver (aiosmtpd on
the hub's loop) and through an inbound-parse webhook (SendGrid field names).

Inbound, whichever way it came, a mail is parsed (`channels.email.parse`) into a
kind with a handler in `EmailChannel.EVENT_HANDLERS`:

- `message`: stored as an `email` message; a reply is threaded into the
  conversation that holds the Message-ID it answers (In-Reply-To, References),
  even when it comes from another address;
- `delivery_status` (a bounce, RFC 3464): moves our message to `failed` with
  the remote server's reason, or to `delivered`;
- `read_receipt` (RFC 8098): moves our message to `read`;
- `auto_reply` (RFC 3834 "Auto-Submitted: auto-replied", out-of-office):
  acknowledged and logged as ignored, so bots never answer an autoresponder.

Attachments: every inbound attachment of up to `[media] max_inbound_bytes` is
kept in the hub's file storage as the mail is received (`ctx.keep_media`; the
hub's media fetcher then files it under its message); a larger one is recorded
by name, type and size only (`url` empty) and shown as failed, too large.
Outbound attachments are fetched from their URL (http, https or data) with
`max_message_bytes` as the cap; one that cannot be fetched fails the send with a
reason that names it (the customer never gets a mail silently missing its
attachment).

The package: `inbound` holds the SMTP receiver and reads the inbound-parse form,
`parse` makes a `ParsedEmail` of either, `outbound` builds and sends mail over
SMTP, `simulator` is an SMTP relay on loopback for the tests and the sandbox; this
module is the adapter and the handlers of each kind of mail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

from aiohttp import web
from pydantic import Field, field_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    FileRefusal,
    IgnoredEvent,
    MalformedPayload,
    RateLimit,
)
from channels.email.inbound import Rejected, SmtpReceiver, authorised, read_form
from channels.email.outbound import MAX_REFERENCES, SmtpSender
from channels.email.outbound import refuse_file as email_refuse_file
from channels.email.parse import (
    EmailKind,
    MalformedEmail,
    ParsedEmail,
    RawAttachment,
    parse_sendgrid,
    split_quoted,
    text_from_html,
)
from hub.addresses import InvalidIdentity, email_ref, normalize_email
from hub.model import (
    Attachment,
    EmailInfo,
    InboundEmail,
    OutboundMessage,
    SendResult,
    StatusUpdate,
)

log = logging.getLogger("hub.channels.email")

MB = 1024 * 1024


class EmailSettings(ChannelSettings):
    address: str
    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str = ""
    smtp_password: str = Field("", json_schema_extra={"secret": True})
    inbound_smtp_port: int = Field(0, ge=0, le=65535)
    inbound_smtp_host: str = "127.0.0.1"
    webhook_secret: str = Field("", json_schema_extra={"secret": True})
    max_message_bytes: int = Field(25 * MB, ge=1024)
    display_name: str = ""
    rate: float = Field(5.0, gt=0)
    tls_verify: bool = True
    smtp_timeout: float = Field(30.0, gt=0)
    # No longer used: inbound attachments go to the hub's file storage up to
    # `[media] max_inbound_bytes`. Still accepted so existing configs load.
    inline_attachment_bytes: int = Field(256 * 1024, ge=0)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return normalize_email(value)

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must be one line")
        return value


MailHandler = Callable[["EmailChannel", ParsedEmail], Awaitable[str]]


class EmailChannel(ChannelAdapter):
    name = "email"
    Settings = EmailSettings
    simulator = "channels.email.simulator:SmtpSink"
    settings: EmailSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver = SmtpReceiver(self.inbox_id, self.settings, self.receive)
        # `ctx` is read at each send (a test may swap it).
        self.outbound = SmtpSender(self.settings, lambda: self.ctx.http())

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return self.settings.address.rpartition("@")[2]

    @property
    def smtp_port(self) -> int | None:
        """The port the SMTP receiver listens on (None when it is off)."""
        return self.receiver.port

    async def start(self) -> None:
        s = self.settings
        if not s.webhook_secret and not s.inbound_smtp_port:
            raise ValueError(
                f"{self.inbox_id}: webhook_secret or inbound_smtp_port is required "
                "(without either the inbox receives no mail)"
            )
        if s.webhook_secret and len(s.webhook_secret) < 16:
            raise ValueError(f"{self.inbox_id}: webhook_secret must be at least 16 characters")
        if s.smtp_user and not s.smtp_password:
            raise ValueError(f"{self.inbox_id}: smtp_password is required with smtp_user")
        if s.inbound_smtp_port:
            await self.receiver.start(hostname=self.domain)

    async def close(self) -> None:
        await self.receiver.close()

    def rate_limit(self) -> RateLimit:
        return RateLimit(per_second=self.settings.rate, burst=1)

    # -- the inbound-parse webhook ---------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.inbound_parse)]

    async def inbound_parse(self, request: web.Request) -> web.Response:
        """POST a SendGrid inbound-parse form. 200 once stored (or ignored);
        403 bad secret, 413 over `max_message_bytes`, 400 malformed; 503 when the
        store is down, so the provider retries."""
        if not authorised(request, self.settings.webhook_secret):
            raise web.HTTPForbidden(text="bad or missing Authorization (Bearer or Basic) secret")
        limit = self.settings.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        fields, files = await read_form(request, limit, self.ctx.max_media_bytes)
        try:
            parsed = await asyncio.to_thread(parse_sendgrid, fields, files)
            outcome = await self.receive(parsed, "webhook")
        except (Rejected, MalformedEmail) as error:
            raise MalformedPayload(str(error)) from None
        return web.json_response({"ok": True, "outcome": outcome})

    def ignored_response(self, ignored: IgnoredEvent) -> web.StreamResponse:
        """The webhook names what became of every mail, an ignored one too."""
        return web.json_response({"ok": True, "outcome": "ignored"})

    # -- normalising ----------------------------------------------------------------------

    async def receive(self, parsed: ParsedEmail, via: str) -> str:
        """Hand one parsed mail to the handler of its kind; returns what became of
        it ("stored", "duplicate", "status"), or raises IgnoredEvent."""
        handler = self.EVENT_HANDLERS[parsed.kind]
        try:
            outcome = await handler(self, parsed)
        except IgnoredEvent:
            self._log_inbound(parsed, via, "ignored")
            raise
        self._log_inbound(parsed, via, outcome)
        return outcome

    def _log_inbound(self, parsed: ParsedEmail, via: str, outcome: str) -> None:
        log.info(
            "inbound mail",
            extra={"inbox": self.inbox_id, "via": via, "kind": parsed.kind, "outcome": outcome},
        )

    async def _on_message(self, parsed: ParsedEmail) -> str:
        if not parsed.sender:
            raise Rejected("the message has no sender address")
        try:
            sender = email_ref(parsed.sender, parsed.sender_name)
        except InvalidIdentity:
            raise Rejected("the sender address is not valid") from None
        body = parsed.text
        if body is None and parsed.html:
            body = text_from_html(parsed.html)
        text, quoted = split_quoted(body) if body else ("", None)
        thread = [i for i in (parsed.in_reply_to, *parsed.references) if i]
        conversation_id = await self.ctx.find_thread(self.inbox_id, thread) if thread else None
        provider_id = parsed.message_id
        if not provider_id or len(provider_id) > 500:
            provider_id = f"sha256:{parsed.digest}"
        extra = dict(parsed.extra)
        if parsed.to:
            extra["to"] = ", ".join(parsed.to)[:500]
        if parsed.cc:
            extra["cc"] = ", ".join(parsed.cc)[:500]
        if parsed.reply_to and parsed.reply_to.lower() != sender.value:
            extra["reply_to"] = parsed.reply_to[:320]
        event = InboundEmail(
            inbox=self.inbox_id,
            medium="email",
            provider_id=provider_id,
            sender=sender,
            text=text or None,
            conversation_id=conversation_id,
            email=EmailInfo(
                subject=parsed.subject,
                message_id=parsed.message_id,
                in_reply_to=parsed.in_reply_to,
                references=parsed.references[-MAX_REFERENCES * 5 :],
                html=parsed.html,
                quoted=quoted,
            ),
            attachments=await self._stored_attachments(parsed.attachments),
            extra=extra,
        )
        (result,) = await self.ctx.ingest([event])
        return "duplicate" if result.duplicate else "stored"

    async def _stored_attachments(
        self, attachments: tuple[RawAttachment, ...]
    ) -> tuple[Attachment, ...]:
        """Each attachment kept in the hub's file storage until its message is stored
        (`ChannelContext.keep_media`); one over `[media] max_inbound_bytes` keeps
        only its name, type and size (`url` empty: the hub shows it failed)."""
        stored = []
        for item in attachments:
            url = ""
            name = (item.name or "")[:255] or None
            if item.data is not None and len(item.data) <= self.ctx.max_media_bytes:
                url = await self.ctx.keep_media(
                    item.data, name=name, content_type=item.content_type
                )
            stored.append(
                Attachment(url=url, content_type=item.content_type, name=name, size=item.size)
            )
        return tuple(stored)

    async def _on_delivery_status(self, parsed: ParsedEmail) -> str:
        report = parsed.report
        if report is None or report.original_message_id is None:
            log.info("bounce ignored: it names no message", extra={"inbox": self.inbox_id})
            raise IgnoredEvent(parsed.kind, "the report names no message")
        if report.action == "failed":
            reason = report.diagnostic or f"delivery failed (status {report.status})"
            if report.recipient:
                reason = f"{report.recipient}: {reason}"
            update = StatusUpdate(
                inbox=self.inbox_id,
                provider_id=report.original_message_id,
                status="failed",
                error_code=report.status,
                error=reason[:1000],
            )
        elif report.action in ("delivered", "relayed", "expanded"):
            update = StatusUpdate(
                inbox=self.inbox_id, provider_id=report.original_message_id, status="delivered"
            )
        else:  # "delayed": the remote server still tries; nothing to record yet
            log.info(
                "bounce ignored",
                extra={"inbox": self.inbox_id, "action": report.action},
            )
            raise IgnoredEvent(parsed.kind, f"action {report.action}")
        return await self._status(parsed, update)

    async def _on_read_receipt(self, parsed: ParsedEmail) -> str:
        report = parsed.report
        if report is None or report.original_message_id is None or report.action != "displayed":
            log.info("read receipt ignored", extra={"inbox": self.inbox_id})
            raise IgnoredEvent(parsed.kind, "the receipt names no message it displayed")
        read = StatusUpdate(
            inbox=self.inbox_id, provider_id=report.original_message_id, status="read"
        )
        return await self._status(parsed, read)

    async def _status(self, parsed: ParsedEmail, update: StatusUpdate) -> str:
        """Record a report's status; one about no message of ours is ignored."""
        if not await self.ctx.record_status([update]):
            raise IgnoredEvent(parsed.kind, "no message of this inbox changed")
        return "status"

    async def _on_auto_reply(self, parsed: ParsedEmail) -> str:
        log.info("auto-reply ignored", extra={"inbox": self.inbox_id})
        raise IgnoredEvent(parsed.kind, "an auto-reply")

    # -- sending ----------------------------------------------------------------------------

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        return email_refuse_file(self.settings.max_message_bytes, size)

    async def send(self, message: OutboundMessage) -> SendResult:
        uploads = {a.id: await self.ctx.outbound_file(a) for a in message.attachments if a.id}
        return await self.outbound.send(message, uploads)

    # Every kind of inbound mail and the function that handles it; `classify` in
    # `channels.email.parse` returns only these (a test holds it to that).
    EVENT_HANDLERS: ClassVar[dict[EmailKind, MailHandler]] = {
        "message": _on_message,
        "delivery_status": _on_delivery_status,
        "read_receipt": _on_read_receipt,
        "auto_reply": _on_auto_reply,
    }


# Every kind of inbound mail the channel handles, built from the handler map.
SUPPORTED_EVENTS: tuple[EmailKind, ...] = tuple(EmailChannel.EVENT_HANDLERS)
