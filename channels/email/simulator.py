"""A simulated SMTP relay: a real aiosmtpd server on 127.0.0.1, on the running loop.

It stands in for the provider's SMTP host (the hub reaches it through the inbox's
`smtp_host`/`smtp_port`). It records every message it accepts and every command
it answered (with its monotonic time and code), can enforce a rate (answering
`451 4.7.1` to MAIL FROM over it, counted in `rejected_429` like the HTTP fakes so
a pacing benchmark reads both the same way), can speak STARTTLS or implicit TLS,
can require a login, and can be told to refuse, stall or hang up at a given step.
The tests send through it; it reads no files and imports nothing of the hub but
the inbox settings.

The sandbox (`channels.simulation`) attaches its e-mail inboxes and listens on its
own SMTP socket: the relay then takes mail only from those inboxes' addresses
(`550 5.7.1` otherwise), shows each recipient its copy (`Customers.received`), and
after the delivery delay sends the inbox a delivery status notification (RFC 3464,
`Action: delivered`), the way a relay reports one. A customer's mail (`write`) and
that report reach the inbox the way it takes mail: its own SMTP receiver, or its
inbound-parse webhook (SendGrid's "raw" form).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import ssl
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Any

import aiohttp
import aiosmtplib
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from channels.base import ChannelSettings
from channels.email import EmailSettings
from channels.simulation import (
    Customers,
    Delivered,
    Handed,
    LineOffer,
    Medium,
    Place,
    Receipt,
    Simulator,
    Writing,
    keep_last,
    report_delivery,
)

DEFAULT_SUBJECT = "Question from the sandbox"


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    at: float

    @property
    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=policy.default).parsebytes(self.raw)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class _Failure:
    code_and_text: str | None  # "550 5.1.1 no such user"; None: act, do not answer
    action: str = "answer"  # answer | hang | drop


@dataclass
class Mailbox:
    """An attached inbox: the address it sends from, and how it takes mail."""

    inbox: str
    settings: EmailSettings


@dataclass
class SmtpSink(Simulator):
    rate: float | None = None  # messages per second over a 1 s window
    starttls: ssl.SSLContext | None = None
    implicit_tls: ssl.SSLContext | None = None
    users: dict[str, str] | None = None  # login -> password; AUTH required when set
    data_size_limit: int = 32 * 1024 * 1024
    messages: list[SinkMessage] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "sink.test"  # the name it greets with
    ident: str | None = None  # the software it names in the greeting (None: aiosmtpd's)
    history: int | None = None  # messages and requests kept (None: all)
    customers: Customers | None = None  # the sandbox's customer side
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)  # by address
    _failures: dict[str, deque[_Failure]] = field(default_factory=dict)
    _window: deque[float] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _live: set[SMTP] = field(default_factory=set)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    # -- control ---------------------------------------------------------------------

    def fail_next(self, command: str, reply: str, times: int = 1) -> None:
        """Answer the next `times` MAIL, RCPT or DATA with `reply` ("550 5.1.1 ...")."""
        queue = self._failures.setdefault(command.upper(), deque())
        for _ in range(times):
            queue.append(_Failure(reply))

    def hang_next(self, command: str) -> None:
        """Never answer the next `command` (the client times out)."""
        self._failures.setdefault(command.upper(), deque()).append(_Failure(None, "hang"))

    def drop_next(self, command: str) -> None:
        """Close the connection instead of answering the next `command`."""
        self._failures.setdefault(command.upper(), deque()).append(_Failure(None, "drop"))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """The messages, once at least `count` have arrived."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.messages) < count:
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"{len(self.messages)} of {count} messages arrived")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except TimeoutError:
                continue
        return self.messages

    # -- the sandbox -------------------------------------------------------------------

    @classmethod
    def for_sandbox(cls, customers: Customers) -> SmtpSink:
        return cls(
            hostname="smtp.sandbox.invalid",
            ident="hub sandbox",
            history=1000,
            customers=customers,
        )

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        assert isinstance(settings, EmailSettings)
        self.mailboxes[settings.address] = Mailbox(inbox, settings)
        return settings.model_copy(
            update={
                "smtp_host": place.smtp_host,
                "smtp_port": place.smtp_port,
                "smtp_tls": "none",
                "smtp_user": "",
                "smtp_password": "",
            }
        )

    def _attached(self, inbox: str) -> Mailbox:
        for mailbox in self.mailboxes.values():
            if mailbox.inbox == inbox:
                return mailbox
        raise LookupError(f"no e-mail inbox {inbox!r} attached")

    def lines(self, inbox: str) -> list[LineOffer]:
        address = self._attached(inbox).settings.address
        return [LineOffer("email", f"E-mail to {address}", address)]

    async def serve(self, place: Place) -> None:
        await self.start(place.smtp_socket)

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        """Send the inbox a customer's mail (an answer to the business's last one,
        when the thread has one)."""
        mailbox = self._attached(inbox)
        customer = writing.customer
        subject = writing.subject or DEFAULT_SUBJECT
        if writing.reply_to and not writing.subject:
            last = writing.last_subject.removeprefix("Re: ") if writing.last_subject else ""
            subject = "Re: " + (last or "your message")
        mail = EmailMessage()
        mail["From"] = (
            formataddr((customer.name, customer.address)) if customer.name else (customer.address)
        )
        mail["To"] = mailbox.settings.address
        mail["Subject"] = subject
        mail["Date"] = formatdate(usegmt=True)
        message_id = make_msgid(domain="customer.sandbox.invalid")
        mail["Message-ID"] = message_id
        if writing.reply_to:
            mail["In-Reply-To"] = f"<{writing.reply_to}>"
            mail["References"] = f"<{writing.reply_to}>"
        mail.set_content(writing.text)
        status, answer = await self._to_hub(mailbox, mail.as_bytes(), customer.address)
        return Handed(status, answer, provider_id=message_id.strip("<>"), subject=subject)

    async def _to_hub(self, mailbox: Mailbox, raw: bytes, sender: str) -> tuple[int, str]:
        """Hand a mail to an attached inbox: to its SMTP receiver when it has one,
        else to its inbound-parse webhook (SendGrid's "raw" form)."""
        settings = mailbox.settings
        if settings.inbound_smtp_port:
            host = settings.inbound_smtp_host
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
            client = aiosmtplib.SMTP(
                hostname=host,
                port=settings.inbound_smtp_port,
                start_tls=False,
                use_tls=False,
                local_hostname="sandbox.invalid",
                timeout=15,
            )
            try:
                async with client:
                    await client.sendmail(sender, [settings.address], raw)  # "": a bounce
            except aiosmtplib.SMTPResponseException as error:
                return error.code, error.message
            except (aiosmtplib.SMTPException, OSError) as error:
                return 0, f"cannot reach the hub's SMTP receiver: {type(error).__name__}"
            return 250, "OK"
        if not settings.webhook_secret:
            return 0, f"inbox {mailbox.inbox} takes no mail (no receiver, no webhook)"
        assert self.customers is not None
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("from", sender)
        form.add_field("to", settings.address)
        form.add_field("envelope", json.dumps({"to": [settings.address], "from": sender}))
        form.add_field("charsets", json.dumps({"from": "UTF-8", "to": "UTF-8"}))
        form.add_field("email", raw.decode("utf-8", errors="replace"))
        return await self.customers.post(
            self.customers.webhook_url(mailbox.inbox),
            form,
            {"Authorization": f"Bearer {settings.webhook_secret}"},
        )

    def _show(self, mailbox: Mailbox, rcpt_tos: list[str], raw: bytes) -> None:
        """Show each recipient an attached inbox's mail; then report its delivery."""
        customers = self.customers
        assert customers is not None
        message = BytesParser(policy=policy.default).parsebytes(raw)
        message_id = str(message.get("Message-ID", "")).strip().strip("<>")
        for rcpt in rcpt_tos:
            recipient = parseaddr(rcpt)[1].lower()
            receipt: Receipt = customers.received(
                Delivered(
                    inbox=mailbox.inbox,
                    medium="email",
                    address=recipient,
                    text=shown_text(message),
                    provider_id=message_id or make_msgid().strip("<>"),
                    subject=str(message.get("Subject", "")) or None,
                    thread_ref=message_id or None,
                )
            )
            dsn = delivery_report(mailbox.settings.address, recipient, message)

            async def report(dsn: bytes = dsn) -> tuple[int, str]:
                return await self._to_hub(mailbox, dsn, "")

            customers.spawn(report_delivery(customers, receipt, [report], "delivery report"))

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `host`:`port`, or on `sock` (a bound socket) when given."""
        loop = asyncio.get_running_loop()
        sink = self

        class Session_(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sink._live.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sink._live.discard(self)
                super().connection_lost(error)

        def factory() -> SMTP:
            with warnings.catch_warnings():
                # AUTH without TLS is what a test relay on loopback is for.
                warnings.simplefilter("ignore", UserWarning)
                return Session_(
                    self,
                    data_size_limit=self.data_size_limit,
                    hostname=self.hostname,
                    ident=self.ident,
                    tls_context=self.starttls,
                    require_starttls=self.starttls is not None,
                    authenticator=self._authenticate if self.users is not None else None,
                    auth_required=self.users is not None,
                    auth_require_tls=False,
                    enable_SMTPUTF8=True,
                    loop=loop,
                )

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, ssl=self.implicit_tls)
        else:
            self._server = await loop.create_server(
                factory, self.host, self.port, ssl=self.implicit_tls
            )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._release.set()
        if self._server is None:
            return
        self._server.close()
        for session in list(self._live):
            if session.transport is not None:
                session.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        self._server = None

    # -- aiosmtpd hooks --------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users is not None
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        self.requests.append({"command": "AUTH", "at": time.monotonic(), "ok": ok})
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False)

    async def _scripted(self, server: SMTP, command: str) -> str | None:
        queue = self._failures.get(command)
        if not queue:
            return None
        failure = queue.popleft()
        if failure.action == "hang":
            await self._release.wait()
            return "421 4.3.2 shutting down"
        if failure.action == "drop":
            if server.transport is not None:
                server.transport.close()
            await asyncio.sleep(3600)
        return failure.code_and_text

    def _record(self, command: str, reply: str, **extra: Any) -> str:
        self.requests.append(
            {"command": command, "at": time.monotonic(), "status": int(reply[:3]), **extra}
        )
        keep_last(self.requests, self.history)
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._scripted(server, "MAIL")
        if scripted is not None:
            return self._record("MAIL", scripted)
        if self.rate is not None:
            now = time.monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                self.rejected_429 += 1
                return self._record("MAIL", "451 4.7.1 Rate limit exceeded, try again later")
            self._window.append(now)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return self._record("MAIL", "250 2.1.0 OK")

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._scripted(server, "RCPT")
        if scripted is not None:
            return self._record("RCPT", scripted, to=address)
        envelope.rcpt_tos.append(address)
        return self._record("RCPT", "250 2.1.5 OK", to=address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = await self._scripted(server, "DATA")
        if scripted is not None:
            return self._record("DATA", scripted)
        mailbox = None
        if self.mailboxes:
            mailbox = self.mailboxes.get(str(envelope.mail_from or "").strip().lower())
            if mailbox is None:
                return self._record(
                    "DATA", "550 5.7.1 Sender not allowed: not an address of a sandbox inbox"
                )
        message = SinkMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            raw=bytes(envelope.original_content or b""),
            at=time.monotonic(),
        )
        self.messages.append(message)
        keep_last(self.messages, self.history)
        self._arrived.set()
        if mailbox is not None:
            self._show(mailbox, message.rcpt_tos, message.raw)
        return self._record("DATA", f"250 2.0.0 OK queued as {len(self.messages)}")


def shown_text(message: EmailMessage) -> str:
    """What the customer's mailbox shows of a mail: its plain body and its attachments."""
    body = message.get_body(("plain",))
    text = ""
    if body is not None:
        with contextlib.suppress(LookupError, ValueError):
            text = str(body.get_content())  # type: ignore[attr-defined]
    for part in message.iter_attachments():
        text += f"\n[attachment] {part.get_filename() or 'file'}"
    return text.strip()


def delivery_report(sender: str, recipient: str, original: EmailMessage) -> bytes:
    """The delivery status notification (RFC 3464, `Action: delivered`) a relay sends
    `sender` once `original` reached `recipient`."""
    boundary = "sandbox-" + secrets.token_hex(8)
    headers = "".join(
        f"{name}: {original[name]}\r\n"
        for name in ("Date", "From", "To", "Subject", "Message-ID")
        if original[name] is not None
    )
    return (
        f"From: Mail Delivery System <mailer-daemon@sandbox.invalid>\r\n"
        f"To: {sender}\r\n"
        f"Subject: Delivery Status Notification (Success)\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: {make_msgid(domain='sandbox.invalid')}\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f' boundary="{boundary}"\r\n'
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
        f"Your message was delivered to {recipient}.\r\n"
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: message/delivery-status\r\n"
        f"\r\n"
        f"Reporting-MTA: dns; smtp.sandbox.invalid\r\n"
        f"\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: delivered\r\n"
        f"Status: 2.0.0\r\n"
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/rfc822-headers\r\n"
        f"\r\n"
        f"{headers}"
        f"\r\n"
        f"--{boundary}--\r\n"
    ).encode()
