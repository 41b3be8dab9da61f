"""Mail going out: one hub message as a MIME message (text and HTML alternatives,
attachments fetched from their URLs, threading headers), sent in one SMTP
transaction with aiosmtplib and its failure classified by how far it got.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mimetypes
import re
import ssl
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import TYPE_CHECKING

import aiohttp
import aiosmtplib

from channels.base import PermanentSendError, TransientSendError
from channels.email.parse import html_from_text, one_line
from hub.addresses import InvalidIdentity, normalize_email
from hub.model import OutboundMessage, SendResult
from hub.ports import FileRefusal, OutboundFile

if TYPE_CHECKING:
    from channels.email import EmailSettings

MAX_REFERENCES = 20
_RE_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|réf|rif)\s*:", re.IGNORECASE)


def refuse_file(max_message_bytes: int, size: int) -> FileRefusal | None:
    """Any type goes; base64 makes a file about 4/3 of its size in the message,
    which must stay within the inbox's `max_message_bytes`."""
    room = max_message_bytes * 3 // 4
    if size > room:
        return FileRefusal(
            413,
            f"{size} bytes is over this inbox's e-mail limit: {room} bytes of files "
            f"(max_message_bytes {max_message_bytes}, files are base64-encoded)",
        )
    return None


class SmtpSender:
    """Sends the inbox's messages through its SMTP relay (`smtp_host`)."""

    def __init__(self, settings: EmailSettings, http: Callable[[], aiohttp.ClientSession]) -> None:
        self.settings = settings
        # The hub's HTTP session, asked for when an attachment is fetched.
        self.http = http

    @property
    def domain(self) -> str:
        return self.settings.address.rpartition("@")[2]

    def message_id_for(self, message: OutboundMessage) -> str:
        """The Message-ID of an outbound message (no brackets).

        Derived from the hub's message id, not random (`make_msgid`): a retry after
        a timeout that did deliver carries the same id, so the customer's client
        shows one message and a reply to either threads the same way.
        """
        local = re.sub(r"[^A-Za-z0-9.\-_]", "", message.id) or "message"
        return f"hub.{local}@{self.domain}"

    async def send(
        self, message: OutboundMessage, uploads: Mapping[str, OutboundFile] | None = None
    ) -> SendResult:
        """Send `message`; `uploads` holds the bytes of the hub's own files (by
        attachment id), attached as they are instead of fetched by URL."""
        try:
            recipient = normalize_email(message.to)
        except InvalidIdentity:
            raise PermanentSendError(f"not an e-mail address: {message.to!r}") from None
        files = await self._fetch_attachments(message, uploads or {})
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
        subject = " ".join(header_text(message.subject or "").split())
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
        name = header_text(s.display_name)
        mime["From"] = formataddr((name, s.address)) if name else s.address
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
                filename=header_text(name),
            )
        return mime

    async def _fetch_attachments(
        self, message: OutboundMessage, uploads: Mapping[str, OutboundFile]
    ) -> list[tuple[str, str, bytes]]:
        files = []
        budget = self.settings.max_message_bytes
        for attachment in message.attachments:
            upload = uploads.get(attachment.id or "")
            if upload is not None:
                name = upload.name or attachment.name or "attachment"
                files.append((name, upload.content_type, upload.data))
                budget -= len(upload.data)
                continue
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
            async with self.http().get(url) as response:
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
                f"SMTP login refused: {error.code} {one_line(error.message)}", code=str(error.code)
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
                reason = f"SMTP {phase} failed: {type(error).__name__}: {one_line(str(error))}"
            raise TransientSendError(reason, maybe_sent=phase in ("data", "done")) from error
        finally:
            client.close()


def _classified(code: int, message: str) -> Exception:
    """A server's refusal: 5xx permanent, 4xx transient (and not sent)."""
    reason = f"{code} {one_line(message)}".strip()
    if 500 <= code < 600:
        return PermanentSendError(reason, code=str(code))
    return TransientSendError(reason, code=str(code), maybe_sent=False)


def _usable_id(value: str) -> bool:
    return bool(value) and "@" in value and not re.search(r"[\s<>\x00-\x1f\x7f-\x9f]", value)


def header_text(value: str) -> str:
    """`value` without control characters (NUL, escape, C1...), which must never
    reach a mail header: some servers cut the header there, others refuse it."""
    if value.isprintable():
        return value
    return "".join(c for c in value if unicodedata.category(c) != "Cc")


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
