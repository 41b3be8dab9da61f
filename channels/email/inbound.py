"""Mail coming in: the hub's own SMTP receiver (aiosmtpd on the hub's loop) and the
inbound-parse webhook's form (SendGrid field names), each read into a `ParsedEmail`
and handed to the adapter's `receive`.

The receiver takes mail only for the inbox's address and acknowledges a message
(250) only once it is stored; 451 when the store cannot take it, so the sender
keeps it and retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import Envelope, Session
from pydantic import ValidationError

from channels.base import (
    IgnoredEvent,
    MalformedPayload,
    StoreUnavailable,
    UnstorableEvent,
    validation_message,
)
from channels.email.parse import MalformedEmail, ParsedEmail, RawAttachment, one_line, parse_raw
from hub.addresses import InvalidIdentity, normalize_email

if TYPE_CHECKING:
    from channels.email import EmailSettings

log = logging.getLogger("hub.channels.email")

# (the parsed mail, the way it came: "smtp" or "webhook") -> what became of it
Receive = Callable[[ParsedEmail, str], Awaitable[str]]


class Rejected(Exception):
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


class SmtpReceiver:
    """The inbox's SMTP server. Its aiosmtpd hooks: only the inbox's address is a
    recipient; a message is acknowledged (250) only once it is stored, 451 when the
    store cannot take it."""

    def __init__(self, inbox_id: str, settings: EmailSettings, receive: Receive) -> None:
        self.inbox_id = inbox_id
        self.settings = settings
        self.receive = receive
        self._server: asyncio.Server | None = None
        self._connections: set[_ReceiverProtocol] = set()

    @property
    def port(self) -> int | None:
        """The port it listens on (None when it is not listening)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, hostname: str) -> None:
        loop = asyncio.get_running_loop()
        live = self._connections
        settings = self.settings

        def session() -> _ReceiverProtocol:
            return _ReceiverProtocol(
                live,
                self,
                data_size_limit=settings.max_message_bytes,
                enable_SMTPUTF8=True,
                # Given, so aiosmtpd does not ask the resolver (a blocking call).
                hostname=hostname,
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
            extra={"inbox": self.inbox_id, "host": settings.inbound_smtp_host, "port": self.port},
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

    async def handle_RCPT(
        self,
        server: SMTPServerProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            ours = normalize_email(address) == self.settings.address
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
        if len(raw) > self.settings.max_message_bytes:
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        try:
            parsed = await asyncio.to_thread(parse_raw, raw)
            if parsed.sender is None and envelope.mail_from:
                parsed = replace(parsed, sender=envelope.mail_from)
            outcome = await self.receive(parsed, "smtp")
        except IgnoredEvent:
            return "250 2.0.0 OK ignored"
        except (Rejected, MalformedEmail, UnstorableEvent, ValidationError) as error:
            # Permanent: this mail as it is can never be stored; others can.
            why = validation_message(error) if isinstance(error, ValidationError) else str(error)
            log.info("inbound mail refused", extra={"inbox": self.inbox_id, "why": why})
            return f"550 5.6.0 {one_line(why)}"
        except StoreUnavailable as error:
            # The sender keeps the message and retries: nothing acknowledged is lost.
            log.warning(
                "inbound mail not stored, asking the sender to retry",
                extra={"inbox": self.inbox_id, "error": str(error)},
            )
            return "451 4.3.0 Temporary failure, please try again later"
        except Exception:
            # Whatever failed (a store error the hub did not wrap, a bug), the mail
            # was not stored: 451 keeps it at the sender, who retries.
            log.exception("inbound mail failed", extra={"inbox": self.inbox_id})
            return "451 4.3.0 Temporary failure, please try again later"
        return f"250 2.0.0 OK {outcome}"


# -- the inbound-parse webhook's form ------------------------------------------------------


def authorised(request: web.Request, secret: str) -> bool:
    """Whether the request carries the webhook secret (Bearer, or Basic's password)."""
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


async def read_form(
    request: web.Request, limit: int, inline_bytes: int
) -> tuple[dict[str, bytes], dict[str, RawAttachment]]:
    """The form's text fields and attachment files, never holding more than
    `limit` bytes; attachments over `inline_bytes` keep only their size."""
    if request.content_type != "multipart/form-data":
        raise MalformedPayload("expected multipart/form-data (SendGrid inbound parse)")
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
                raise MalformedPayload("nested multipart is not an inbound-parse form")
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
                if is_file and size > inline_bytes:
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
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as error:
        # aiohttp refuses part headers it cannot read (InvalidHeader, BadHttpMessage).
        raise MalformedPayload(f"malformed multipart body: {error}") from None
    return fields, files
