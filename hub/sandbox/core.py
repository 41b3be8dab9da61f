"""The sandbox's state and its customer side: which lines a customer can use, the
threads the page shows, and the relaying between the page and the providers'
simulators.

A *line* is one way a customer can reach the business: an inbox and a medium (the
Twilio inbox gives an SMS line, a WhatsApp line and a voice line). A *thread* is
what one customer sees on one line: their messages and the business's replies,
with the status each reached.

The simulators are the channel packages' own (`ChannelAdapter.simulator`, see
`channels.simulation`): the sandbox attaches every inbox it covers to its
channel's simulator, serves their routes on one loopback port and their SMTP sink
on another, and is their `Customers`: they show it what the business sent and
tell it when that was delivered, and it asks them to deliver what a customer
writes or to place a call, in the provider's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import logging
import math
import socket
import struct
import time
import wave
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import phonenumbers
from aiohttp import web

from channels import simulator_class
from channels.simulation import (
    Customer,
    Delivered,
    Medium,
    PhoneCall,
    Place,
    Receipt,
    Simulator,
    Writing,
)
from hub.settings import InboxConfig, Settings

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.sandbox")

MAX_THREADS = 2000
MAX_ENTRIES = 300
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
    medium: Medium
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

    # The receipt of a message the business sent (`channels.simulation.Receipt`).

    def delivered(self) -> None:
        self.status = "delivered"

    def undelivered(self, error: str) -> None:
        self.error = error


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
    line: Line
    thread: Thread
    started: float
    phone: PhoneCall  # the call as the provider's simulator keeps it
    ended: bool = False

    @property
    def id(self) -> str:
        return self.phone.id

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "line": self.line.key,
            "heard": self.phone.heard,
            "voicemail": self.phone.voicemail,
            "ended": self.ended,
        }


class _Nobody:
    """The receipt of a message no line shows."""

    def delivered(self) -> None:
        pass

    def undelivered(self, error: str) -> None:
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _host_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def tone_wav(seconds: float = 1.5, rate: int = 8000) -> bytes:
    """A 440 Hz tone, 16-bit mono PCM: the recording of every sandbox voicemail."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


class Sandbox:
    """The simulators and the customer threads of one hub process; the simulators'
    `channels.simulation.Customers`."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings.sandbox
        host = self.config.host
        self._http_socket = _bind(host, self.config.port)
        self._smtp_socket = _bind(host, self.config.smtp_port)
        self.api_url = _host_url(host, self._http_socket.getsockname()[1])
        self.smtp_port = int(self._smtp_socket.getsockname()[1])
        covered = set(self.config.inboxes) or {i.id for i in settings.inboxes}
        self.simulators: dict[str, Simulator] = {}  # by channel
        self._places: dict[str, Place] = {}  # by channel
        self._simulator_of: dict[str, Simulator] = {}  # by inbox
        self.inboxes: dict[str, InboxConfig] = {}
        rewired: list[InboxConfig] = []
        for inbox in settings.inboxes:
            cls = simulator_class(inbox.channel) if inbox.id in covered else None
            if cls is not None:
                simulator = self.simulators.get(inbox.channel)
                if simulator is None:
                    simulator = self.simulators[inbox.channel] = cls.for_sandbox(self)
                    self._places[inbox.channel] = Place(
                        api_base=f"{self.api_url}/{inbox.channel}",
                        smtp_host=host,
                        smtp_port=self.smtp_port,
                        smtp_socket=self._smtp_socket,
                    )
                place = self._places[inbox.channel]
                inbox = dataclasses.replace(
                    inbox, settings=simulator.attach(inbox.id, inbox.settings, place)
                )
                self.inboxes[inbox.id] = inbox
                self._simulator_of[inbox.id] = simulator
            rewired.append(inbox)
        # The settings the hub runs with: the covered inboxes talk to the simulators.
        self.settings = dataclasses.replace(settings, inboxes=tuple(rewired))
        self.lines: dict[str, Line] = {}
        for inbox in self.inboxes.values():
            for offer in self._simulator_of[inbox.id].lines(inbox.id):
                line = Line(inbox.id, inbox.channel, offer.medium, offer.label, offer.business)
                self.lines[line.key] = line
        self.threads: OrderedDict[str, Thread] = OrderedDict()
        self.calls: OrderedDict[str, Call] = OrderedDict()
        self._ids = itertools.count(1)
        self._learned_hub_url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._tone: bytes | None = None
        self._runner: web.AppRunner | None = None
        self.hub: Hub | None = None
        self.http: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        """Start the simulators (before the adapters: Telegram may call setWebhook)."""
        self.hub = hub
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20, connect=5))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for channel, simulator in self.simulators.items():
            routes = simulator.app()
            if routes is not None:
                app.add_subapp(f"/{channel}", routes)
        app.router.add_get("/recordings/{name}", self._recording)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._http_socket).start()
        for channel, simulator in self.simulators.items():
            await simulator.serve(self._places[channel])
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
        for simulator in self.simulators.values():
            await simulator.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self._http_socket.close()
        self._smtp_socket.close()
        if self.http is not None:
            await self.http.close()

    async def _recording(self, request: web.Request) -> web.Response:
        """`GET /recordings/{name}`: the recording of a sandbox voicemail."""
        if self._tone is None:
            self._tone = tone_wav()
        return web.Response(body=self._tone, content_type="audio/wav")

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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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

    def webhook_url(self, inbox: str) -> str:
        assert self.hub is not None
        return self.public_url + self.hub.adapters[inbox].webhook_prefix

    def hub_target(self, url: str) -> str:
        """Where to post for a public URL of the hub (a callback URL it gave)."""
        if url.startswith(self.public_url):
            return self.hub_url + url[len(self.public_url) :]
        return url

    async def post(
        self, url: str, data: bytes | aiohttp.FormData, headers: Mapping[str, str]
    ) -> tuple[int, str]:
        """POST to the hub at `url`, a public URL of it; (status, body), status 0
        when it could not be reached."""
        assert self.http is not None
        target = self.hub_target(url)
        try:
            async with self.http.post(target, data=data, headers=dict(headers)) as response:
                return response.status, (await response.text())[:500]
        except (aiohttp.ClientError, TimeoutError) as error:
            return 0, f"cannot reach the hub at {target}: {type(error).__name__}"

    # -- what the business sent ----------------------------------------------------------

    @property
    def delivery_delay(self) -> float:
        return self.config.delivery_delay

    def received(self, message: Delivered) -> Receipt:
        """A simulator accepted a message for a customer: show it in their thread."""
        line = self.line_for(message.inbox, message.medium)
        if line is None:
            return _Nobody()
        entry = self.outbound(
            line,
            message.address,
            message.text,
            provider_id=message.provider_id,
            kind="email" if message.medium == "email" else "text",
            subject=message.subject,
        )
        if message.thread_ref:
            self.thread(line, message.address).last_message_id = message.thread_ref
        return entry

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
        return thread.add(
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
        last_subject = next((e.subject for e in reversed(thread.entries) if e.subject), None)
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
        writing = Writing(
            customer=Customer(address, thread.name),
            text=text,
            subject=entry.subject,
            reply_to=thread.last_message_id,
            last_subject=last_subject,
        )
        handed = await self._simulator_of[line.inbox].write(line.inbox, line.medium, writing)
        entry.provider_id = handed.provider_id
        if handed.subject:
            entry.subject = handed.subject
        if handed.ok:
            entry.status = "sent"
        else:
            entry.status = "failed"
            entry.error = (
                f"the hub answered {handed.status}: {handed.answer}"
                if handed.status
                else handed.answer
            )
        return thread, entry

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
        phone = await self._simulator_of[line.inbox].call(
            line.inbox, Customer(address, thread.name)
        )
        call = Call(line=line, thread=thread, started=time.monotonic(), phone=phone)
        entry.provider_id = call.id
        handed = phone.handed
        if handed.ok:
            entry.status = "sent"
            entry.text = "Call placed. " + (
                " ".join(f"“{said}”" for said in phone.heard) if phone.heard else ""
            )
        else:
            entry.status = "failed"
            entry.error = (
                f"the hub answered {handed.status}: {handed.answer}"
                if handed.status
                else handed.answer
            )
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
        left_voicemail = await self._simulator_of[call.line.inbox].hang_up(
            call.phone,
            voicemail=voicemail,
            duration=duration,
            recording_url=f"{self.api_url}/recordings/{call.id}.wav",
        )
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
