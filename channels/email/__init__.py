"""E-mail: SMTP out (aiosmtplib), in through the hub's own SMTP receiver (aiosmtpd on
the hub's loop) and through an inbound-parse webhook (SendGrid field names).

Inbound, whichever way it came, a mail is parsed (`channels.email.parse`) into a
kind with a handler in `EmailChannel.EVENTS`:

- `message`: stored as an `email` message; a reply is threaded into the
  conversation that holds the Message-ID it answers (In-Reply-To, References),
  even when it comes from another address;
- `delivery_status` (a bounce, RFC 3464): moves our message to `failed` with
  the remote server's reason, or to `delivered`;
- `read_receipt` (RFC 8098): moves our message to `read`;
- `auto_reply` (RFC 3834 "Auto-Submitted: auto-replied", out-of-office):
  acknowledged and logged as ignored, so bots never answer an autoresponder.

Attachments: the hub has no file store an adapter can write to, so an inbound
attachment of up to `inline_attachment_bytes` (and while the message's total stays
under `INLINE_TOTAL_BYTES`) is kept as a `data:` URL; a larger one is recorded by
name, type and size only (`url` empty). Outbound attachments are fetched from their
URL (http, https or data) with `max_message_bytes` as the cap; one that cannot be
fetched fails the send with a reason that names it (the customer never gets a mail
silently missing its attachment).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import mimetypes
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, ClassVar, Literal

import aiohttp
import aiosmtplib
from aiohttp import web
from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import Envelope, Session
from pydantic import Field, field_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    StoreUnavailable,
    TransientSendError,
)
from channels.email.parse import (
    EmailKind,
    MalformedEmail,
    ParsedEmail,
    RawAttachment,
    html_from_text,
    parse_raw,
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
# Inline (data: URL) attachments of one inbound message, all together.
INLINE_TOTAL_BYTES = 1 * MB
MAX_REFERENCES = 20
_RE_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|réf|rif)\s*:", re.IGNORECASE)


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


class _Rejected(Exception):
    """An inbound mail refused for good: SMTP 5xx, HTTP 400."""


# -- the SMTP receiver ---------------------------------------------------------------------


class _ReceiverProtocol(SMTPServerProtocol):
    """aiosmtpd's SMTP session, remembered while connected so `close` can end it."""

    def __init__(self, live: set[_ReceiverProtocol], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        super().connection_lost(error)


class _ReceiverHandler:
    """aiosmtpd hooks: only the inbox's address is a recipient; a message is
    acknowledged (250) only once it is stored, 451 when the store cannot take it."""

    def __init__(self, channel: EmailChannel) -> None:
        self.channel = channel

    async def handle_RCPT(
        self,
        server: SMTPServerProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            ours = normalize_email(address) == self.channel.settings.address
        except InvalidIdentity:
            ours = False
        if not ours:
            return "550 5.1.1 Recipient address rejected: not an address of this inbox"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTPServerProtocol, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self.channel.settings.max_message_bytes:
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        try:
            parsed = await asyncio.to_thread(parse_raw, raw)
            if parsed.sender is None and envelope.mail_from:
                parsed = _with_sender(parsed, envelope.mail_from)
            outcome = await self.channel.receive(parsed, via="smtp")
        except (_Rejected, MalformedEmail) as error:
            log.info(
                "inbound mail refused", extra={"inbox": self.channel.inbox_id, "why": str(error)}
            )
            return f"550 5.6.0 {_one_line(str(error))}"
        except StoreUnavailable as error:
            # The sender keeps the message and retries: nothing acknowledged is lost.
            log.warning(
                "inbound mail not stored, asking the sender to retry",
                extra={"inbox": self.channel.inbox_id, "error": str(error)},
            )
            return "451 4.3.0 Temporary failure, please try again later"
        except Exception:
            # Whatever failed (a store error the hub did not wrap, a bug), the mail
            # was not stored: 451 keeps it at the sender, who retries.
            log.exception("inbound mail failed", extra={"inbox": self.channel.inbox_id})
            return "451 4.3.0 Temporary failure, please try again later"
        return f"250 2.0.0 OK {outcome}"


def _with_sender(parsed: ParsedEmail, mail_from: str) -> ParsedEmail:
    return replace(parsed, sender=mail_from)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# -- the channel ------------------------------------------------------------------------------


class EmailChannel(ChannelAdapter):
    name = "email"
    Settings = EmailSettings
    settings: EmailSettings

    # Every kind of inbound mail and the method that handles it; `classify` in
    # `email_parse` returns only these (a test holds it to that).
    EVENTS: ClassVar[dict[EmailKind, str]] = {
        "message": "_on_message",
        "delivery_status": "_on_delivery_status",
        "read_receipt": "_on_read_receipt",
        "auto_reply": "_on_auto_reply",
    }

    _server: asyncio.Server | None = None
    _connections: set[_ReceiverProtocol]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = set()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return self.settings.address.rpartition("@")[2]

    @property
    def smtp_port(self) -> int | None:
        """The port the SMTP receiver listens on (None when it is off)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

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
            await self._start_receiver()

    async def _start_receiver(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _ReceiverHandler(self)
        live = self._connections
        settings = self.settings

        def session() -> _ReceiverProtocol:
            return _ReceiverProtocol(
                live,
                handler,
                data_size_limit=settings.max_message_bytes,
                enable_SMTPUTF8=True,
                # Given, so aiosmtpd does not ask the resolver (a blocking call).
                hostname=self.domain,
                ident="hub",
                timeout=120,
                loop=loop,
            )

        try:
            self._server = await loop.create_server(
                session, settings.inbound_smtp_host, settings.inbound_smtp_port
            )
        except OSError as error:
            raise OSError(
                f"{self.inbox_id}: cannot receive mail on "
                f"{settings.inbound_smtp_host}:{settings.inbound_smtp_port}: {error.strerror}"
            ) from error
        log.info(
            "smtp receiver listening",
            extra={
                "inbox": self.inbox_id,
                "host": settings.inbound_smtp_host,
                "port": self.smtp_port,
            },
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # A session cut mid-DATA was never acknowledged: its sender will retry.
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    def rate_limit(self) -> RateLimit:
        return RateLimit(per_second=self.settings.rate, burst=1)

    # -- the inbound-parse webhook ---------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.inbound_parse)]

    def _authorised(self, request: web.Request) -> bool:
        secret = self.settings.webhook_secret
        if not secret:
            return False  # the webhook is off: nothing may come in this way
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            # SendGrid cannot add a header, but it sends the credentials of a
            # destination URL written https://hub:<secret>@host/...: the password
            # part is the secret.
            try:
                decoded = base64.b64decode(token.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            token = decoded.partition(":")[2]
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), secret.encode())

    async def inbound_parse(self, request: web.Request) -> web.Response:
        """POST a SendGrid inbound-parse form. 200 once stored (or ignored);
        403 bad secret, 413 over `max_message_bytes`, 400 malformed; 503 when the
        store is down, so the provider retries."""
        if not self._authorised(request):
            raise web.HTTPForbidden(text="bad or missing Authorization (Bearer or Basic) secret")
        limit = self.settings.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        if request.content_type != "multipart/form-data":
            raise web.HTTPBadRequest(text="expected multipart/form-data (SendGrid inbound parse)")
        fields, files = await self._read_form(request, limit)
        try:
            parsed = await asyncio.to_thread(parse_sendgrid, fields, files)
        except MalformedEmail as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        try:
            outcome = await self.receive(parsed, via="webhook")
        except (_Rejected, MalformedEmail) as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return web.json_response({"ok": True, "outcome": outcome})

    async def _read_form(
        self, request: web.Request, limit: int
    ) -> tuple[dict[str, bytes], dict[str, RawAttachment]]:
        """The form's text fields and attachment files, never holding more than
        `limit` bytes; attachments over the inline size keep only their size."""
        fields: dict[str, bytes] = {}
        files: dict[str, RawAttachment] = {}
        total = 0
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise web.HTTPBadRequest(text="nested multipart is not an inbound-parse form")
                name = part.name or ""
                is_file = part.filename is not None
                chunks: list[bytes] = []
                size = 0
                keep = True
                while chunk := await part.read_chunk(64 * 1024):
                    size += len(chunk)
                    total += len(chunk)
                    if total > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
                    if is_file and size > self.settings.inline_attachment_bytes:
                        chunks, keep = [], False  # too big to keep: its size only
                    if keep:
                        chunks.append(chunk)
                data = bytes(part.decode(b"".join(chunks))) if keep else None
                if is_file and re.fullmatch(r"attachment\d+", name):
                    files[name] = RawAttachment(
                        name=part.filename or None,
                        content_type=part.headers.get("Content-Type", "application/octet-stream")
                        .split(";")[0]
                        .strip()
                        .lower(),
                        size=len(data) if data is not None else size,
                        data=data,
                    )
                elif data is not None:
                    fields[name] = data
        except (ValueError, AssertionError, RuntimeError) as error:
            raise web.HTTPBadRequest(text=f"malformed multipart body: {error}") from None
        return fields, files

    # -- normalising ----------------------------------------------------------------------

    async def receive(self, parsed: ParsedEmail, *, via: str) -> str:
        """Hand one parsed mail to the handler of its kind; returns what became of
        it ("stored", "duplicate", "status", "ignored")."""
        handler: Callable[[ParsedEmail], Awaitable[str]] = getattr(self, self.EVENTS[parsed.kind])
        outcome = await handler(parsed)
        log.info(
            "inbound mail",
            extra={"inbox": self.inbox_id, "via": via, "kind": parsed.kind, "outcome": outcome},
        )
        return outcome

    async def _on_message(self, parsed: ParsedEmail) -> str:
        if not parsed.sender:
            raise _Rejected("the message has no sender address")
        try:
            sender = email_ref(parsed.sender, parsed.sender_name)
        except InvalidIdentity:
            raise _Rejected("the sender address is not valid") from None
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
            attachments=self._stored_attachments(parsed.attachments),
            extra=extra,
        )
        (result,) = await self.ctx.ingest([event])
        return "duplicate" if getattr(result, "duplicate", False) else "stored"

    def _stored_attachments(self, attachments: tuple[RawAttachment, ...]) -> tuple[Attachment, ...]:
        budget = INLINE_TOTAL_BYTES
        stored = []
        for item in attachments:
            url = ""
            if (
                item.data is not None
                and len(item.data) <= self.settings.inline_attachment_bytes
                and len(item.data) <= budget
            ):
                budget -= len(item.data)
                encoded = base64.b64encode(item.data).decode("ascii")
                url = f"data:{item.content_type};base64,{encoded}"
            stored.append(
                Attachment(
                    url=url,
                    content_type=item.content_type,
                    name=(item.name or "")[:255] or None,
                    size=item.size,
                )
            )
        return tuple(stored)

    async def _on_delivery_status(self, parsed: ParsedEmail) -> str:
        report = parsed.report
        if report is None or report.original_message_id is None:
            log.info("bounce ignored: it names no message", extra={"inbox": self.inbox_id})
            return "ignored"
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
            return "ignored"
        moved = await self.ctx.record_status([update])
        return "status" if moved else "ignored"

    async def _on_read_receipt(self, parsed: ParsedEmail) -> str:
        report = parsed.report
        if report is None or report.original_message_id is None or report.action != "displayed":
            log.info("read receipt ignored", extra={"inbox": self.inbox_id})
            return "ignored"
        moved = await self.ctx.record_status(
            [
                StatusUpdate(
                    inbox=self.inbox_id, provider_id=report.original_message_id, status="read"
                )
            ]
        )
        return "status" if moved else "ignored"

    async def _on_auto_reply(self, parsed: ParsedEmail) -> str:
        log.info("auto-reply ignored", extra={"inbox": self.inbox_id})
        return "ignored"

    # -- sending ----------------------------------------------------------------------------

    def message_id_for(self, message: OutboundMessage) -> str:
        """The Message-ID of an outbound message (no brackets).

        Derived from the hub's message id, not random (`make_msgid`): a retry after
        a timeout that did deliver carries the same id, so the customer's client
        shows one message and a reply to either threads the same way.
        """
        local = re.sub(r"[^A-Za-z0-9.\-_]", "", message.id) or "message"
        return f"hub.{local}@{self.domain}"

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            recipient = normalize_email(message.to)
        except InvalidIdentity:
            raise PermanentSendError(f"not an e-mail address: {message.to!r}") from None
        files = await self._fetch_attachments(message)
        message_id = self.message_id_for(message)
        mime = self.build_mime(message, recipient, message_id, files)
        data = mime.as_bytes(policy=policy.SMTP)
        if len(data) > self.settings.max_message_bytes:
            raise PermanentSendError(
                f"the message is {len(data)} bytes, over the {self.settings.max_message_bytes} "
                "bytes allowed (max_message_bytes)"
            )
        await self._deliver(recipient, data)
        return SendResult(provider_id=message_id)

    def subject_for(self, message: OutboundMessage) -> str:
        subject = " ".join((message.subject or "").split())
        if not subject:
            subject = f"Message from {self.settings.display_name or self.domain}"
        if message.in_reply_to and not _RE_PREFIX.match(subject):
            subject = f"Re: {subject}"
        return subject

    def build_mime(
        self,
        message: OutboundMessage,
        recipient: str,
        message_id: str,
        files: list[tuple[str, str, bytes]],
    ) -> EmailMessage:
        """The MIME message: text and HTML alternatives, attachments, threading."""
        mime = EmailMessage()
        s = self.settings
        mime["From"] = formataddr((s.display_name, s.address)) if s.display_name else s.address
        mime["To"] = recipient
        mime["Subject"] = self.subject_for(message)
        mime["Date"] = formatdate(usegmt=True)
        mime["Message-ID"] = f"<{message_id}>"
        clean = [r for r in (message.references or ()) if _usable_id(r)]
        if message.in_reply_to and _usable_id(message.in_reply_to):
            mime["In-Reply-To"] = f"<{message.in_reply_to}>"
            if message.in_reply_to not in clean:
                clean.append(message.in_reply_to)
        if clean:
            mime["References"] = " ".join(f"<{r}>" for r in clean[-MAX_REFERENCES:])
        text = (message.text or "").replace("\r\n", "\n")
        mime.set_content(text, subtype="plain", charset="utf-8")
        mime.add_alternative(html_from_text(text), subtype="html", charset="utf-8")
        for name, content_type, data in files:
            maintype, _, subtype = content_type.partition("/")
            mime.add_attachment(
                data,
                maintype=maintype or "application",
                subtype=subtype or "octet-stream",
                filename=name,
            )
        return mime

    async def _fetch_attachments(self, message: OutboundMessage) -> list[tuple[str, str, bytes]]:
        files = []
        budget = self.settings.max_message_bytes
        for attachment in message.attachments:
            name = attachment.name or _name_from_url(attachment.url)
            data = await self._fetch(attachment.url, name, budget)
            budget -= len(data)
            content_type = (
                attachment.content_type
                or mimetypes.guess_type(name)[0]
                or "application/octet-stream"
            )
            files.append((name, content_type, data))
        return files

    async def _fetch(self, url: str, name: str, cap: int) -> bytes:
        too_big = PermanentSendError(
            f"attachment {name} is over the {cap} bytes left in the message (max_message_bytes)"
        )
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "data":
            data = _decode_data_url(url)
            if data is None:
                raise PermanentSendError(f"attachment {name}: not a valid data: URL")
            if len(data) > cap:
                raise too_big
            return data
        if scheme not in ("http", "https"):
            raise PermanentSendError(
                f"attachment {name} has no content the hub can send"
                + (f" (URL scheme {scheme!r})" if scheme else "")
            )
        try:
            async with self.ctx.http().get(url) as response:
                if response.status >= 500 or response.status in (408, 429):
                    raise TransientSendError(
                        f"attachment {name}: HTTP {response.status} fetching it",
                        maybe_sent=False,
                    )
                if response.status != 200:
                    raise PermanentSendError(
                        f"attachment {name}: HTTP {response.status} fetching it"
                    )
                if response.content_length is not None and response.content_length > cap:
                    raise too_big
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > cap:
                        raise too_big
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientSendError(
                f"attachment {name}: cannot fetch it ({type(error).__name__})", maybe_sent=False
            ) from error

    def _smtp_client(self) -> aiosmtplib.SMTP:
        s = self.settings
        tls_context: ssl.SSLContext | None = None
        if s.smtp_tls != "none":
            tls_context = ssl.create_default_context()
            if not s.tls_verify:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
            tls_context=tls_context,
            # Given, so aiosmtplib does not ask the resolver for our name.
            local_hostname=self.domain,
            timeout=s.smtp_timeout,
        )

    async def _deliver(self, recipient: str, data: bytes) -> None:
        """One SMTP transaction; errors classified by how far it got.

        Refusals before the message content (connect, login, MAIL, RCPT) and a
        4xx/5xx answer to it are certainly not delivered (`maybe_sent=False`);
        only a connection lost or a timeout while the content was on its way
        leaves the outcome unknown.
        """
        s = self.settings
        client = self._smtp_client()
        phase = "connect"
        started = time.monotonic()
        try:
            await client.connect()
            if s.smtp_user:
                phase = "login"
                await client.login(s.smtp_user, s.smtp_password)
            phase = "envelope"
            options = [f"SIZE={len(data)}"] if client.supports_extension("size") else []
            await client.mail(s.address, options=options)
            await client.rcpt(recipient)
            phase = "data"
            await client.data(data)
            phase = "done"
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
        except aiosmtplib.SMTPRecipientsRefused as error:
            first = error.recipients[0] if error.recipients else None
            raise _classified(
                first.code if first else 550, first.message if first else ""
            ) from error
        except aiosmtplib.SMTPAuthenticationError as error:
            raise PermanentSendError(
                f"SMTP login refused: {error.code} {_one_line(error.message)}", code=str(error.code)
            ) from error
        except aiosmtplib.SMTPResponseException as error:
            raise _classified(error.code, error.message) from error
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as error:
            raise TransientSendError(
                f"SMTP timeout during {phase} after {time.monotonic() - started:.0f} s",
                maybe_sent=phase in ("data", "done"),
            ) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            if isinstance(error.__cause__, ssl.SSLCertVerificationError) or isinstance(
                error, ssl.SSLCertVerificationError
            ):
                reason = f"TLS certificate of {s.smtp_host} not trusted (tls_verify)"
            else:
                reason = f"SMTP {phase} failed: {type(error).__name__}: {_one_line(str(error))}"
            raise TransientSendError(reason, maybe_sent=phase in ("data", "done")) from error
        finally:
            client.close()


def _classified(code: int, message: str) -> Exception:
    """A server's refusal: 5xx permanent, 4xx transient (and not sent)."""
    reason = f"{code} {_one_line(message)}".strip()
    if 500 <= code < 600:
        return PermanentSendError(reason, code=str(code))
    return TransientSendError(reason, code=str(code), maybe_sent=False)


def _usable_id(value: str) -> bool:
    return bool(value) and "@" in value and not re.search(r"[\s<>]", value)


def _name_from_url(url: str) -> str:
    if url.lower().startswith("data:"):
        return "attachment"
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path.rsplit("/", 1)[-1]) or "attachment"


def _decode_data_url(url: str) -> bytes | None:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            return None
    return urllib.parse.unquote_to_bytes(payload)


# Every kind of inbound mail the channel handles, built from the handler map.
SUPPORTED_EVENTS: tuple[EmailKind, ...] = tuple(EmailChannel.EVENTS)
