"""The sandbox's state and its customer side: which lines a customer can use, the
threads the page shows, and the webhooks posted to the hub in the providers' names.

A *line* is one way a customer can reach the business: an inbox and a medium (the
Twilio inbox gives an SMS line, a WhatsApp line and a voice line). A *thread* is
what one customer sees on one line: their messages and the business's replies,
with the status each reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
import socket
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import aiosmtplib
import phonenumbers
from twilio.request_validator import RequestValidator

from channels.email import EmailSettings
from channels.pbx import PbxSettings
from channels.signing import sign as hub_sign
from channels.telegram import TelegramSettings
from channels.twilio import TwilioSettings
from channels.whatsapp import WhatsAppSettings
from hub.sandbox.wire import new_wamid, whatsapp_notification
from hub.settings import InboxConfig, Settings

if TYPE_CHECKING:
    from hub.sandbox.simulators import Simulators
    from hub.services.runtime import Hub

log = logging.getLogger("hub.sandbox")

SANDBOX_CHANNELS = ("twilio", "telegram", "whatsapp", "email", "pbx")
MAX_THREADS = 2000
MAX_ENTRIES = 300
WHATSAPP_VERSION = "v21.0"
WHATSAPP_DISPLAY_NUMBER = "15550100000"
PBX_NUMBER = "+15550100001"
MAX_TEXT = 4000


class SandboxError(ValueError):
    """A customer action the sandbox refuses (answered 400 with the reason)."""


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Line:
    """One way a customer reaches the business: an inbox and a medium."""

    inbox: str
    channel: str  # the provider channel: twilio, telegram, whatsapp, email, pbx
    medium: Literal["sms", "whatsapp", "telegram", "email", "voice"]
    label: str
    business: str  # the number, bot or address the customer writes to

    @property
    def key(self) -> str:
        return f"{self.inbox}:{self.medium}"

    @property
    def address_kind(self) -> Literal["phone", "email"]:
        return "email" if self.medium == "email" else "phone"

    def view(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "inbox": self.inbox,
            "channel": self.channel,
            "medium": self.medium,
            "label": self.label,
            "business": self.business,
            "address_kind": self.address_kind,
            "call": self.medium == "voice",
        }


@dataclass
class Entry:
    """One message of a thread, as the customer's phone or mailbox shows it."""

    id: str
    thread: str
    direction: Literal["in", "out"]  # in: customer -> business; out: business -> customer
    kind: Literal["text", "email", "call"]
    text: str
    status: str  # in: sending, sent, failed; out: received, delivered
    subject: str | None = None
    error: str | None = None
    provider_id: str | None = None
    at: str = field(default_factory=_now)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "kind": self.kind,
            "text": self.text,
            "subject": self.subject,
            "status": self.status,
            "error": self.error,
            "at": self.at,
        }


@dataclass
class Thread:
    key: str
    line: Line
    address: str  # E.164 phone, or a lower-case e-mail address
    name: str = ""
    entries: list[Entry] = field(default_factory=list)
    last_message_id: str | None = None  # e-mail: the business's last Message-ID

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        del self.entries[:-MAX_ENTRIES]
        return entry


@dataclass
class Call:
    id: str
    line: Line
    thread: Thread
    started: float
    record: dict[str, str] | None = None  # the TwiML <Record> attributes, when asked
    ended: bool = False
    heard: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "line": self.line.key,
            "heard": self.heard,
            "voicemail": self.record is not None or self.line.channel == "pbx",
            "ended": self.ended,
        }


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _host_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Sandbox:
    """The simulators and the customer threads of one hub process."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings.sandbox
        host = self.config.host
        self._http_socket = _bind(host, self.config.port)
        self._smtp_socket = _bind(host, self.config.smtp_port)
        self.api_url = _host_url(host, self._http_socket.getsockname()[1])
        self.smtp_port = int(self._smtp_socket.getsockname()[1])
        covered = set(self.config.inboxes) or {
            i.id for i in settings.inboxes if i.channel in SANDBOX_CHANNELS
        }
        self.inboxes: dict[str, InboxConfig] = {}
        rewired: list[InboxConfig] = []
        for inbox in settings.inboxes:
            if inbox.id in covered and inbox.channel in SANDBOX_CHANNELS:
                inbox = dataclasses.replace(inbox, settings=self._rewire(inbox))
                self.inboxes[inbox.id] = inbox
            rewired.append(inbox)
        # The settings the hub runs with: the covered inboxes talk to the simulators.
        self.settings = dataclasses.replace(settings, inboxes=tuple(rewired))
        self.lines: dict[str, Line] = {}
        for inbox in self.inboxes.values():
            for line in _lines(inbox):
                self.lines[line.key] = line
        self.threads: OrderedDict[str, Thread] = OrderedDict()
        self.calls: OrderedDict[str, Call] = OrderedDict()
        self._by_provider_id: dict[str, Entry] = {}
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(int(time.time()) % 100000 * 1000)
        self._learned_hub_url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self.hub: Hub | None = None
        self.http: aiohttp.ClientSession | None = None
        self.simulators: Simulators | None = None

    def _rewire(self, inbox: InboxConfig) -> Any:
        s = inbox.settings
        if isinstance(s, TwilioSettings):
            return s.model_copy(update={"api_base": f"{self.api_url}/twilio"})
        if isinstance(s, TelegramSettings):
            return s.model_copy(update={"api_base": f"{self.api_url}/telegram"})
        if isinstance(s, WhatsAppSettings):
            return s.model_copy(update={"api_base": f"{self.api_url}/whatsapp/{WHATSAPP_VERSION}"})
        if isinstance(s, EmailSettings):
            return s.model_copy(
                update={
                    "smtp_host": self.config.host,
                    "smtp_port": self.smtp_port,
                    "smtp_tls": "none",
                    "smtp_user": "",
                    "smtp_password": "",
                }
            )
        return s

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        """Start the simulators (before the adapters: Telegram may call setWebhook)."""
        from hub.sandbox.simulators import Simulators

        self.hub = hub
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20, connect=5))
        self.simulators = Simulators(self)
        await self.simulators.start(self._http_socket, self._smtp_socket)
        await self._demo_admin()
        log.info(
            "sandbox started",
            extra={
                "simulators": self.api_url,
                "smtp_port": self.smtp_port,
                "lines": len(self.lines),
            },
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.simulators is not None:
            await self.simulators.stop()
        else:
            self._http_socket.close()
            self._smtp_socket.close()
        if self.http is not None:
            await self.http.close()

    async def _demo_admin(self) -> None:
        email, password = self.config.demo_admin_email, self.config.demo_admin_password
        if not (email and password) or self.hub is None or self.hub.store is None:
            return
        from hub.services.accounts import AccountError, Accounts

        try:
            admin = await Accounts(self.hub.store).ensure_first_admin(email, password)
        except AccountError as error:
            log.error("sandbox demo admin refused", extra={"error": str(error)})
            return
        if admin is not None:
            log.info("sandbox demo admin created", extra={"agent_id": admin["_id"]})

    def spawn(self, coro: Any) -> None:
        async def logged() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sandbox callback failed")

        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- where the hub is ----------------------------------------------------------------

    def learn_hub_url(self, transport: asyncio.BaseTransport | None) -> None:
        """Remember the address the hub's server answered a page request on: the
        simulators post their webhooks there (loopback when the page is local)."""
        if self.config.hub_url or transport is None:
            return
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self._learned_hub_url = _host_url(str(sockname[0]), int(sockname[1]))

    @property
    def hub_url(self) -> str:
        if self.config.hub_url:
            return self.config.hub_url.rstrip("/")
        if self._learned_hub_url:
            return self._learned_hub_url
        assert self.hub is not None
        server = self.hub.settings.server
        # A wildcard listening address is reached on loopback.
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        host = wildcard.get(server.host, server.host)
        return _host_url(host, server.port)

    @property
    def public_url(self) -> str:
        assert self.hub is not None
        return self.hub.settings.public_url

    def webhook_path(self, inbox: str) -> str:
        assert self.hub is not None
        return self.hub.adapters[inbox].webhook_prefix

    def hub_target(self, url: str) -> tuple[str, str]:
        """(where to post, the URL to sign) for a callback URL the hub gave."""
        if url.startswith(self.public_url):
            return self.hub_url + url[len(self.public_url) :], url
        return url, url

    async def post(
        self, url: str, data: bytes | aiohttp.FormData, headers: Mapping[str, str]
    ) -> tuple[int, str]:
        """POST to the hub; (status, body), status 0 when it could not be reached."""
        assert self.http is not None
        try:
            async with self.http.post(url, data=data, headers=dict(headers)) as response:
                return response.status, (await response.text())[:500]
        except (aiohttp.ClientError, TimeoutError) as error:
            return 0, f"cannot reach the hub at {url}: {type(error).__name__}"

    async def post_twilio(self, inbox: str, url: str, params: Mapping[str, str]) -> tuple[int, str]:
        """POST a form as Twilio does to `url` (a public URL of the hub), signed."""
        settings = self.inboxes[inbox].settings
        assert isinstance(settings, TwilioSettings)
        target, signed_url = self.hub_target(url)
        signature = RequestValidator(settings.auth_token).compute_signature(
            signed_url, dict(params)
        )
        body = urllib.parse.urlencode(list(params.items())).encode()
        return await self.post(
            target,
            body,
            {
                "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
                "User-Agent": "TwilioProxy/1.1",
                "X-Twilio-Signature": signature,
            },
        )

    async def post_whatsapp(self, inbox: str, payload: dict[str, Any]) -> tuple[int, str]:
        settings = self.inboxes[inbox].settings
        assert isinstance(settings, WhatsAppSettings)
        body = json.dumps(payload).encode()
        return await self.post(
            self.hub_url + self.webhook_path(inbox),
            body,
            {
                "Content-Type": "application/json",
                "User-Agent": "facebookexternalua",
                "X-Hub-Signature-256": "sha256=" + _hmac_sha256(settings.app_secret.encode(), body),
            },
        )

    async def post_pbx(self, inbox: str, event: dict[str, Any]) -> tuple[int, str]:
        settings = self.inboxes[inbox].settings
        assert isinstance(settings, PbxSettings)
        body = json.dumps(event).encode()
        return await self.post(
            self.hub_url + self.webhook_path(inbox),
            body,
            {"Content-Type": "application/json", "X-Signature": hub_sign(settings.secret, body)},
        )

    # -- threads -----------------------------------------------------------------------

    def new_id(self, prefix: str = "sbx") -> str:
        return f"{prefix}{next(self._ids)}"

    def thread(self, line: Line, address: str, name: str = "") -> Thread:
        key = f"{line.key}|{address}"
        thread = self.threads.get(key)
        if thread is None:
            thread = self.threads[key] = Thread(key=key, line=line, address=address, name=name)
            while len(self.threads) > MAX_THREADS:
                self.threads.popitem(last=False)
        else:
            self.threads.move_to_end(key)
            if name:
                thread.name = name
        return thread

    def find_thread(self, line_key: str, address: str) -> Thread | None:
        return self.threads.get(f"{line_key}|{address}")

    def remember(self, entry: Entry) -> None:
        if entry.provider_id:
            self._by_provider_id[entry.provider_id] = entry
            if len(self._by_provider_id) > MAX_THREADS * 10:
                self._by_provider_id.pop(next(iter(self._by_provider_id)))

    def outbound(
        self,
        line: Line,
        address: str,
        text: str,
        *,
        provider_id: str,
        kind: Literal["text", "email"] = "text",
        subject: str | None = None,
    ) -> Entry:
        """Record what the business sent to a customer (the provider accepted it)."""
        thread = self.thread(line, address)
        entry = thread.add(
            Entry(
                id=self.new_id(),
                thread=thread.key,
                direction="out",
                kind=kind,
                text=text,
                subject=subject,
                status="received",
                provider_id=provider_id,
            )
        )
        self.remember(entry)
        return entry

    def line_for(self, inbox: str, medium: str) -> Line | None:
        return self.lines.get(f"{inbox}:{medium}")

    # -- the customer's side -----------------------------------------------------------

    def _line(self, key: str) -> Line:
        line = self.lines.get(key)
        if line is None:
            raise SandboxError(f"no sandbox line {key!r}")
        return line

    def customer_address(self, line: Line, raw: str) -> str:
        raw = raw.strip()
        if line.address_kind == "email":
            from hub.addresses import InvalidIdentity, normalize_email

            try:
                return normalize_email(raw)
            except InvalidIdentity:
                raise SandboxError("that is not an e-mail address") from None
        assert self.hub is not None
        try:
            number = phonenumbers.parse(raw, self.hub.settings.identity.default_region)
        except phonenumbers.NumberParseException:
            raise SandboxError("that is not a phone number") from None
        if not phonenumbers.is_possible_number(number):
            raise SandboxError("that is not a possible phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    async def customer_message(
        self, line_key: str, name: str, raw_address: str, text: str, subject: str | None = None
    ) -> tuple[Thread, Entry]:
        """Write as a customer: deliver `text` to the hub the way the provider would."""
        line = self._line(line_key)
        if line.medium == "voice":
            raise SandboxError("a phone line carries calls: place a call instead")
        text = text.strip()
        if not text:
            raise SandboxError("write something first")
        if len(text) > MAX_TEXT:
            raise SandboxError(f"at most {MAX_TEXT} characters")
        name = " ".join(name.split())[:80]
        address = self.customer_address(line, raw_address)
        thread = self.thread(line, address, name)
        entry = thread.add(
            Entry(
                id=self.new_id(),
                thread=thread.key,
                direction="in",
                kind="email" if line.medium == "email" else "text",
                text=text,
                subject=(subject or "").strip()[:200] or None if line.medium == "email" else None,
                status="sending",
            )
        )
        try:
            status, answer = await self._deliver(line, thread, entry)
        except SandboxError as error:
            status, answer = 0, str(error)
        if 200 <= status < 300:
            entry.status = "sent"
        else:
            entry.status = "failed"
            entry.error = f"the hub answered {status}: {answer}" if status else answer
        return thread, entry

    async def _deliver(self, line: Line, thread: Thread, entry: Entry) -> tuple[int, str]:
        if line.channel == "twilio":
            return await self._twilio_message(line, thread, entry)
        if line.channel == "telegram":
            return await self._telegram_message(line, thread, entry)
        if line.channel == "whatsapp":
            return await self._whatsapp_message(line, thread, entry)
        if line.channel == "email":
            return await self._email_message(line, thread, entry)
        raise SandboxError(f"{line.channel} carries no messages")

    async def _twilio_message(self, line: Line, thread: Thread, entry: Entry) -> tuple[int, str]:
        settings = self.inboxes[line.inbox].settings
        assert isinstance(settings, TwilioSettings)
        sid = "SM" + secrets.token_hex(16)
        entry.provider_id = sid
        whatsapp = line.medium == "whatsapp"
        params = {
            "ToCountry": "US",
            "SmsMessageSid": sid,
            "NumMedia": "0",
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": entry.text,
            "To": f"whatsapp:{line.business}" if whatsapp else line.business,
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": settings.account_sid,
            "From": f"whatsapp:{thread.address}" if whatsapp else thread.address,
            "ApiVersion": "2010-04-01",
        }
        if whatsapp:
            params["WaId"] = thread.address.lstrip("+")
            params["MessageType"] = "text"
            if thread.name:
                params["ProfileName"] = thread.name
        url = f"{self.public_url}{self.webhook_path(line.inbox)}/messages"
        return await self.post_twilio(line.inbox, url, params)

    async def _telegram_message(self, line: Line, thread: Thread, entry: Entry) -> tuple[int, str]:
        settings = self.inboxes[line.inbox].settings
        assert isinstance(settings, TelegramSettings)
        user_id = int(thread.address.lstrip("+"))
        first, _, last = (thread.name or "Customer").partition(" ")
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first}
        if last:
            user["last_name"] = last
        chat: dict[str, Any] = {"id": user_id, "type": "private", "first_name": first}
        if last:
            chat["last_name"] = last
        message_id = next(self._ids)
        entry.provider_id = f"{user_id}:{message_id}"
        update = {
            "update_id": next(self._update_ids),
            "message": {
                "message_id": message_id,
                "from": user,
                "chat": chat,
                "date": int(time.time()),
                "text": entry.text,
            },
        }
        return await self.post(
            self.hub_url + self.webhook_path(line.inbox),
            json.dumps(update).encode(),
            {
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": settings.secret_token,
            },
        )

    async def _whatsapp_message(self, line: Line, thread: Thread, entry: Entry) -> tuple[int, str]:
        settings = self.inboxes[line.inbox].settings
        assert isinstance(settings, WhatsAppSettings)
        digits = thread.address.lstrip("+")
        wamid = new_wamid(digits)
        entry.provider_id = wamid
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": WHATSAPP_DISPLAY_NUMBER,
                "phone_number_id": settings.phone_number_id,
            },
            "contacts": [{"profile": {"name": thread.name or digits}, "wa_id": digits}],
            "messages": [
                {
                    "from": digits,
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": entry.text},
                }
            ],
        }
        return await self.post_whatsapp(line.inbox, whatsapp_notification(value))

    async def _email_message(self, line: Line, thread: Thread, entry: Entry) -> tuple[int, str]:
        settings = self.inboxes[line.inbox].settings
        assert isinstance(settings, EmailSettings)
        mail = EmailMessage()
        mail["From"] = formataddr((thread.name, thread.address)) if thread.name else thread.address
        mail["To"] = settings.address
        subject = entry.subject or "Question from the sandbox"
        if thread.last_message_id and not entry.subject:
            subject = "Re: " + _last_subject(thread)
        mail["Subject"] = subject
        entry.subject = subject
        mail["Date"] = formatdate(usegmt=True)
        message_id = make_msgid(domain="customer.sandbox.invalid")
        mail["Message-ID"] = message_id
        entry.provider_id = message_id.strip("<>")
        if thread.last_message_id:
            mail["In-Reply-To"] = f"<{thread.last_message_id}>"
            mail["References"] = f"<{thread.last_message_id}>"
        mail.set_content(entry.text)
        return await self.mail_to_hub(line.inbox, mail.as_bytes(), thread.address)

    async def mail_to_hub(self, inbox: str, raw: bytes, sender: str) -> tuple[int, str]:
        """Hand a mail to the hub: to its SMTP receiver when the inbox has one, else
        to its inbound-parse webhook (SendGrid's "raw" form)."""
        settings = self.inboxes[inbox].settings
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
            raise SandboxError(f"inbox {inbox} takes no mail (no receiver, no webhook)")
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("from", sender)
        form.add_field("to", settings.address)
        form.add_field("envelope", json.dumps({"to": [settings.address], "from": sender}))
        form.add_field("charsets", json.dumps({"from": "UTF-8", "to": "UTF-8"}))
        form.add_field("email", raw.decode("utf-8", errors="replace"))
        return await self.post(
            self.hub_url + self.webhook_path(inbox),
            form,  # type: ignore[arg-type]
            {"Authorization": f"Bearer {settings.webhook_secret}"},
        )

    # -- calls ---------------------------------------------------------------------------

    async def place_call(self, line_key: str, name: str, raw_address: str) -> Call:
        line = self._line(line_key)
        if line.medium != "voice":
            raise SandboxError("this line takes messages, not calls")
        address = self.customer_address(line, raw_address)
        thread = self.thread(line, address, " ".join(name.split())[:80])
        entry = thread.add(
            Entry(
                id=self.new_id(),
                thread=thread.key,
                direction="in",
                kind="call",
                text="Calling…",
                status="sending",
            )
        )
        if line.channel == "twilio":
            call = Call(
                id="CA" + secrets.token_hex(16), line=line, thread=thread, started=time.monotonic()
            )
            status, answer = await self.post_twilio(
                line.inbox,
                f"{self.public_url}{self.webhook_path(line.inbox)}/voice",
                self._call_params(call, CallStatus="ringing"),
            )
            if 200 <= status < 300:
                call.heard, call.record = _read_twiml(answer)
        else:
            call = Call(
                id="sbx-" + secrets.token_hex(8), line=line, thread=thread, started=time.monotonic()
            )
            status, answer = await self.post_pbx(line.inbox, self._pbx_event(call, "call.started"))
            call.heard = ["(the PBX rings the agents)"]
        entry.provider_id = call.id
        if 200 <= status < 300:
            entry.status = "sent"
            entry.text = "Call placed. " + (
                " ".join(f"“{said}”" for said in call.heard) if call.heard else ""
            )
        else:
            entry.status = "failed"
            entry.error = f"the hub answered {status}: {answer}" if status else answer
            call.ended = True
        self.calls[call.id] = call
        while len(self.calls) > MAX_THREADS:
            self.calls.popitem(last=False)
        return call

    async def hang_up(self, call_id: str, voicemail: bool = False) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise SandboxError("no such call")
        if call.ended:
            return call
        call.ended = True
        duration = max(1, round(time.monotonic() - call.started))
        recording = f"{self.api_url}/recordings/{call.id}.wav"
        left_voicemail = False
        if call.line.channel == "twilio":
            inbox = call.line.inbox
            if voicemail and call.record is not None:
                record = call.record
                if record.get("action"):
                    await self.post_twilio(
                        inbox,
                        record["action"],
                        self._call_params(
                            call,
                            CallStatus="completed",
                            RecordingUrl=recording.removesuffix(".wav"),
                            RecordingDuration=str(duration),
                            Digits="hangup",
                        ),
                    )
                if record.get("recordingStatusCallback"):
                    await self.post_twilio(
                        inbox,
                        record["recordingStatusCallback"],
                        {
                            "AccountSid": self._twilio(inbox).account_sid,
                            "CallSid": call.id,
                            "RecordingSid": "RE" + secrets.token_hex(16),
                            "RecordingUrl": recording.removesuffix(".wav"),
                            "RecordingStatus": "completed",
                            "RecordingDuration": str(duration),
                            "RecordingChannels": "1",
                            "RecordingSource": "RecordVerb",
                            "RecordingStartTime": formatdate(usegmt=True),
                            "ErrorCode": "0",
                        },
                    )
                left_voicemail = True
            await self.post_twilio(
                inbox,
                f"{self.public_url}{self.webhook_path(inbox)}/voice/status",
                self._call_params(call, CallStatus="completed", CallDuration=str(duration)),
            )
        else:
            if voicemail:
                event = self._pbx_event(call, "recording.ready")
                event["recording_url"] = recording
                event["duration"] = duration
                await self.post_pbx(call.line.inbox, event)
                left_voicemail = True
            await self.post_pbx(call.line.inbox, self._pbx_event(call, "call.missed"))
        call.thread.add(
            Entry(
                id=self.new_id(),
                thread=call.thread.key,
                direction="in",
                kind="call",
                text=f"Hung up after {duration} s"
                + (", leaving a voicemail." if left_voicemail else "."),
                status="sent",
            )
        )
        return call

    def _twilio(self, inbox: str) -> TwilioSettings:
        settings = self.inboxes[inbox].settings
        assert isinstance(settings, TwilioSettings)
        return settings

    def _call_params(self, call: Call, **extra: str) -> dict[str, str]:
        settings = self._twilio(call.line.inbox)
        params = {
            "AccountSid": settings.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.id,
            "Called": call.line.business,
            "Caller": call.thread.address,
            "Direction": "inbound",
            "From": call.thread.address,
            "To": call.line.business,
            "CallerCountry": "US",
        }
        if call.thread.name:
            params["CallerName"] = call.thread.name
        params.update(extra)
        return params

    def _pbx_event(self, call: Call, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "call_id": call.id,
            "from": call.thread.address,
            "to": call.line.business,
            "direction": "in",
            "at": _now(),
        }


def _hmac_sha256(key: bytes, body: bytes) -> str:
    import hashlib
    import hmac

    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _last_subject(thread: Thread) -> str:
    for entry in reversed(thread.entries):
        if entry.subject:
            return entry.subject.removeprefix("Re: ")
    return "your message"


def _read_twiml(answer: str) -> tuple[list[str], dict[str, str] | None]:
    """What a caller hears from TwiML, and the <Record> verb's attributes."""
    heard: list[str] = []
    record: dict[str, str] | None = None
    try:
        root = ElementTree.fromstring(answer)  # noqa: S314  (the hub's own TwiML, 500 chars)
    except ElementTree.ParseError:
        return ["(the hub answered with something that is not TwiML)"], None
    for verb in root:
        if verb.tag == "Say" and verb.text:
            heard.append(verb.text.strip())
        elif verb.tag == "Dial":
            heard.append("(ringing the agents' phones)")
        elif verb.tag == "Record":
            heard.append("(beep: recording a voicemail)")
            record = dict(verb.attrib)
        elif verb.tag == "Hangup":
            heard.append("(the line hangs up)")
    return heard, record


def _lines(inbox: InboxConfig) -> list[Line]:
    s = inbox.settings
    found: list[Line] = []
    if isinstance(s, TwilioSettings):
        if s.number:
            found.append(Line(inbox.id, "twilio", "sms", f"SMS to {s.number}", s.number))
        if s.whatsapp_number:
            found.append(
                Line(
                    inbox.id,
                    "twilio",
                    "whatsapp",
                    f"WhatsApp (via Twilio) to {s.whatsapp_number}",
                    s.whatsapp_number,
                )
            )
        if s.number:
            found.append(Line(inbox.id, "twilio", "voice", f"Call {s.number}", s.number))
    elif isinstance(s, TelegramSettings):
        found.append(Line(inbox.id, "telegram", "telegram", "Telegram bot", "the bot"))
    elif isinstance(s, WhatsAppSettings):
        found.append(
            Line(
                inbox.id,
                "whatsapp",
                "whatsapp",
                f"WhatsApp to +{WHATSAPP_DISPLAY_NUMBER}",
                f"+{WHATSAPP_DISPLAY_NUMBER}",
            )
        )
    elif isinstance(s, EmailSettings):
        found.append(Line(inbox.id, "email", "email", f"E-mail to {s.address}", s.address))
    elif isinstance(s, PbxSettings):
        found.append(Line(inbox.id, "pbx", "voice", f"Call {PBX_NUMBER} (PBX)", PBX_NUMBER))
    return found
