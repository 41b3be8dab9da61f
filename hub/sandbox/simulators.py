"""The sandbox's own simulators of the providers whose channel package has none yet
(`ChannelAdapter.simulator`): an SMTP server and a PBX.
Each `Legacy` is a `channels.simulation.Simulator` for one of those channels, driven
by the sandbox like the channels' own; they move to their channel packages one by
one.

- E-mail: an aiosmtpd server; every mail accepted is followed by a delivery
  status notification (RFC 3464, `Action: delivered`) sent back to the inbox
  (its SMTP receiver, or its inbound-parse webhook).
- PBX: signed call events posted to the inbox's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any

import aiohttp
import aiosmtplib
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope, Session

from channels.base import ChannelSettings
from channels.email import EmailSettings
from channels.pbx import PbxSettings
from channels.signing import sign as hub_sign
from channels.simulation import (
    Customer,
    Handed,
    LineOffer,
    Medium,
    PhoneCall,
    Place,
    Simulator,
    Writing,
)

if TYPE_CHECKING:
    from hub.sandbox.core import Sandbox

LEGACY_CHANNELS = ("email", "pbx")
PBX_NUMBER = "+15550100001"


class _SinkHandler:
    """aiosmtpd hooks of the sandbox's SMTP server: take every mail from an inbox."""

    def __init__(self, simulators: Legacy) -> None:
        self.simulators = simulators

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        return await self.simulators.mail_received(
            envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""
        )


class Legacy(Simulator):
    """The sandbox's own simulator of one channel (one of `LEGACY_CHANNELS`)."""

    def __init__(self, sandbox: Sandbox, channel: str) -> None:
        self.sandbox = sandbox
        self.channel = channel
        self.smtp: asyncio.Server | None = None
        self.settings: dict[str, ChannelSettings] = {}  # by inbox

    # -- the sandbox's side --------------------------------------------------------------

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        self.settings[inbox] = settings
        if isinstance(settings, EmailSettings):
            return settings.model_copy(
                update={
                    "smtp_host": place.smtp_host,
                    "smtp_port": place.smtp_port,
                    "smtp_tls": "none",
                    "smtp_user": "",
                    "smtp_password": "",
                }
            )
        return settings

    def lines(self, inbox: str) -> list[LineOffer]:
        s = self.settings[inbox]
        if isinstance(s, EmailSettings):
            return [LineOffer("email", f"E-mail to {s.address}", s.address)]
        if isinstance(s, PbxSettings):
            return [LineOffer("voice", f"Call {PBX_NUMBER} (PBX)", PBX_NUMBER)]
        return []

    async def serve(self, place: Place) -> None:
        if self.channel != "email" or place.smtp_socket is None:
            return
        loop = asyncio.get_running_loop()
        handler = _SinkHandler(self)
        self.smtp = await loop.create_server(
            lambda: SMTPProtocol(
                handler,
                hostname="smtp.sandbox.invalid",
                ident="hub sandbox",
                enable_SMTPUTF8=True,
                data_size_limit=32 * 1024 * 1024,
                loop=loop,
            ),
            sock=place.smtp_socket,
        )

    async def stop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.smtp.wait_closed(), timeout=2)

    # -- the customer's side ------------------------------------------------------------

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        if self.channel == "email":
            return await self._email_message(inbox, writing)
        return Handed(0, f"{self.channel} carries no messages")

    async def _email_message(self, inbox: str, writing: Writing) -> Handed:
        settings = self.settings[inbox]
        assert isinstance(settings, EmailSettings)
        customer = writing.customer
        mail = EmailMessage()
        mail["From"] = (
            formataddr((customer.name, customer.address)) if customer.name else (customer.address)
        )
        mail["To"] = settings.address
        subject = writing.subject or "Question from the sandbox"
        if writing.reply_to and not writing.subject:
            last = writing.last_subject.removeprefix("Re: ") if writing.last_subject else ""
            subject = "Re: " + (last or "your message")
        mail["Subject"] = subject
        mail["Date"] = formatdate(usegmt=True)
        message_id = make_msgid(domain="customer.sandbox.invalid")
        mail["Message-ID"] = message_id
        if writing.reply_to:
            mail["In-Reply-To"] = f"<{writing.reply_to}>"
            mail["References"] = f"<{writing.reply_to}>"
        mail.set_content(writing.text)
        status, answer = await self.mail_to_hub(inbox, mail.as_bytes(), customer.address)
        return Handed(status, answer, provider_id=message_id.strip("<>"), subject=subject)

    async def mail_to_hub(self, inbox: str, raw: bytes, sender: str) -> tuple[int, str]:
        """Hand a mail to the hub: to its SMTP receiver when the inbox has one, else
        to its inbound-parse webhook (SendGrid's "raw" form)."""
        settings = self.settings[inbox]
        assert isinstance(settings, EmailSettings)
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
            return 0, f"inbox {inbox} takes no mail (no receiver, no webhook)"
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("from", sender)
        form.add_field("to", settings.address)
        form.add_field("envelope", json.dumps({"to": [settings.address], "from": sender}))
        form.add_field("charsets", json.dumps({"from": "UTF-8", "to": "UTF-8"}))
        form.add_field("email", raw.decode("utf-8", errors="replace"))
        return await self.sandbox.post(
            self.sandbox.webhook_url(inbox),
            form,
            {"Authorization": f"Bearer {settings.webhook_secret}"},
        )

    async def _post_pbx(self, inbox: str, event: dict[str, Any]) -> tuple[int, str]:
        settings = self.settings[inbox]
        assert isinstance(settings, PbxSettings)
        body = json.dumps(event).encode()
        return await self.sandbox.post(
            self.sandbox.webhook_url(inbox),
            body,
            {"Content-Type": "application/json", "X-Signature": hub_sign(settings.secret, body)},
        )

    def _pbx_event(self, call: PhoneCall, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "call_id": call.id,
            "from": call.caller.address,
            "to": PBX_NUMBER,
            "direction": "in",
            "at": _now(),
        }

    async def call(self, inbox: str, caller: Customer) -> PhoneCall:
        call = PhoneCall(
            id="sbx-" + secrets.token_hex(8),
            inbox=inbox,
            caller=caller,
            handed=Handed(0, ""),
            heard=["(the PBX rings the agents)"],
            voicemail=True,
        )
        status, answer = await self._post_pbx(inbox, self._pbx_event(call, "call.started"))
        call.handed = Handed(status, answer, provider_id=call.id)
        return call

    async def hang_up(
        self, call: PhoneCall, *, voicemail: bool, duration: int, recording_url: str
    ) -> bool:
        if voicemail:
            event = self._pbx_event(call, "recording.ready")
            event["recording_url"] = recording_url
            event["duration"] = duration
            await self._post_pbx(call.inbox, event)
        await self._post_pbx(call.inbox, self._pbx_event(call, "call.missed"))
        return voicemail

    # -- the providers' side ---------------------------------------------------------------

    # -- e-mail --------------------------------------------------------------------------

    async def mail_received(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        inbox = next(
            (
                i
                for i in self.sandbox.inboxes.values()
                if isinstance(i.settings, EmailSettings)
                and i.settings.address == mail_from.strip().lower()
            ),
            None,
        )
        if inbox is None:
            return "550 5.7.1 Sender not allowed: not an address of a sandbox inbox"
        line = self.sandbox.line_for(inbox.id, "email")
        assert line is not None
        message = BytesParser(policy=policy.default).parsebytes(raw)
        message_id = str(message.get("Message-ID", "")).strip().strip("<>")
        subject = str(message.get("Subject", "")) or None
        body = message.get_body(("plain",))
        text = ""
        if body is not None:
            with contextlib.suppress(LookupError, ValueError):
                text = str(body.get_content())  # type: ignore[attr-defined]
        for part in message.iter_attachments():
            text += f"\n[attachment] {part.get_filename() or 'file'}"
        for rcpt in rcpt_tos:
            address = parseaddr(rcpt)[1].lower()
            entry = self.sandbox.outbound(
                line,
                address,
                text.strip(),
                provider_id=message_id or make_msgid().strip("<>"),
                kind="email",
                subject=subject,
            )
            thread = self.sandbox.thread(line, address)
            if message_id:
                thread.last_message_id = message_id
            self.sandbox.spawn(self._dsn(inbox.id, entry, address, message))
        return "250 2.0.0 OK: queued by the sandbox"

    async def _dsn(self, inbox: str, entry: Any, recipient: str, original: Any) -> None:
        settings = self.sandbox.inboxes[inbox].settings
        assert isinstance(settings, EmailSettings)
        await asyncio.sleep(self.sandbox.config.delivery_delay)
        boundary = "sandbox-" + secrets.token_hex(8)
        headers = "".join(
            f"{name}: {original[name]}\r\n"
            for name in ("Date", "From", "To", "Subject", "Message-ID")
            if original[name] is not None
        )
        dsn = (
            f"From: Mail Delivery System <mailer-daemon@sandbox.invalid>\r\n"
            f"To: {settings.address}\r\n"
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
        status, answer = await self.mail_to_hub(inbox, dsn, "")
        if 200 <= status < 300:
            entry.status = "delivered"
        else:
            entry.error = f"delivery report: the hub answered {status}: {answer}"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
