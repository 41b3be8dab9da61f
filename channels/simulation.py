"""What the provider simulators share, and what the sandbox asks of them.

Each provider package has its simulator beside its adapter (`channels/<p>/simulator.py`):
a real server on loopback speaking the provider's API. The tests and the benchmarks
use one alone: they point an inbox at it, read what it recorded and post webhooks with
its helpers. The demo's sandbox (`hub.sandbox`) uses the same classes, built by
`for_sandbox(customers)`: it *attaches* each inbox it covers (`attach` answers the
inbox's settings pointed at the simulator), mounts the simulator's routes (`app`) on
its own loopback server, and starts what else it listens on (`serve`, the SMTP sink).
An attached inbox's account is then served with its own credentials, checked the way
the provider checks them, and the simulator

- hands every message it accepts for that inbox to `Customers.received`, as the
  customer's phone or mailbox shows it (`Delivered`), and
- after `Customers.delivery_delay` posts to the hub the delivery callbacks the
  provider would, and tells the `Receipt` it got whether the hub took them.

The sandbox's customer side calls `write`, `call` and `hang_up`: the simulator builds
and signs the provider's webhook (or mail) and posts it through `Customers.post`.

Nothing here knows a provider's wire format; that stays in each provider's package.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

import aiohttp
from aiohttp import web

from channels.base import ChannelSettings

Medium = Literal["sms", "whatsapp", "telegram", "email", "voice"]


@dataclass(frozen=True)
class Place:
    """Where the sandbox serves a simulator: the URL its routes (`app`) are mounted
    at, and the sandbox's SMTP socket."""

    api_base: str
    smtp_host: str = ""
    smtp_port: int = 0
    smtp_socket: socket.socket | None = None


@dataclass(frozen=True)
class LineOffer:
    """One way a customer reaches an attached inbox: a medium, how the page names
    it, and the number, bot or address the customer writes to."""

    medium: Medium
    label: str
    business: str


@dataclass(frozen=True)
class Customer:
    address: str  # E.164 phone, or a lower-case e-mail address
    name: str = ""


@dataclass(frozen=True)
class Writing:
    """What a customer writes on a line, and what their thread holds so far."""

    customer: Customer
    text: str
    subject: str | None = None  # as typed (e-mail)
    reply_to: str | None = None  # the last `Delivered.thread_ref` of the thread
    last_subject: str | None = None  # the subject of the thread's last e-mail


@dataclass
class Handed:
    """How the hub answered what the customer wrote (status 0: not reached)."""

    status: int
    answer: str
    provider_id: str | None = None
    subject: str | None = None  # the subject the mail went with

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Delivered:
    """A message the business sent that the simulator accepted, as the customer sees it."""

    inbox: str
    medium: Medium
    address: str  # the customer: E.164 phone, "+<chat id>", or an e-mail address
    text: str
    provider_id: str
    subject: str | None = None
    thread_ref: str | None = None  # what the customer's answer refers to (a Message-ID)


@dataclass
class PhoneCall:
    """A call the customer placed, as the provider keeps it."""

    id: str
    inbox: str
    caller: Customer
    handed: Handed  # how the hub answered the call
    heard: list[str] = field(default_factory=list)  # what the caller heard
    voicemail: bool = False  # whether the caller can leave a voicemail
    state: dict[str, str] | None = None  # the provider's own (Twilio: the <Record> verb)


class Receipt(Protocol):
    """Told when a delivered message reached the customer (the hub took the last
    delivery callback), or why not."""

    def delivered(self) -> None: ...

    def undelivered(self, error: str) -> None: ...


class Customers(Protocol):
    """The customer side a simulator serves in the sandbox."""

    @property
    def delivery_delay(self) -> float: ...

    def received(self, message: Delivered) -> Receipt: ...

    def webhook_url(self, inbox: str) -> str:
        """The public URL of the inbox's webhook prefix (what signatures cover)."""
        ...

    async def post(
        self, url: str, data: bytes | aiohttp.FormData, headers: Mapping[str, str]
    ) -> tuple[int, str]:
        """POST to the hub at `url`, a public URL of it, reaching it where it listens;
        (status, body), status 0 when it could not be reached."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class Simulator:
    """The sandbox's side of a provider simulator; each implements what its provider
    carries (a phone line no text, a messaging API no calls)."""

    @classmethod
    def for_sandbox(cls, customers: Customers) -> Self:
        raise NotImplementedError

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        """Serve `inbox`; its settings, pointed at the simulator."""
        raise NotImplementedError

    def lines(self, inbox: str) -> list[LineOffer]:
        return []

    def app(self) -> web.Application | None:
        """The HTTP routes of the provider's API, or None."""
        return None

    async def serve(self, place: Place) -> None:
        """Start listening beyond the HTTP routes (the SMTP sink)."""

    async def stop(self) -> None:
        pass

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        return Handed(0, f"{medium} carries no messages")

    async def call(self, inbox: str, caller: Customer) -> PhoneCall:
        raise NotImplementedError(f"inbox {inbox} takes no calls")

    async def hang_up(
        self, call: PhoneCall, *, voicemail: bool, duration: int, recording_url: str
    ) -> bool:
        """End `call` (after `duration` seconds, leaving a voicemail recorded at
        `recording_url` when asked and possible); whether a voicemail was left."""
        raise NotImplementedError(f"inbox {call.inbox} takes no calls")


class HttpSimulator(Simulator):
    """A simulator of a provider's HTTP API, which tests and benches also serve alone."""

    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> str:
        """Serve `app()` alone on a free loopback port; its base URL. (In the
        sandbox, the sandbox serves every simulator's routes on its own port.)"""
        app = self.app()
        assert app is not None, f"{type(self).__name__} has no HTTP routes"
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


Step = Callable[[], Awaitable[tuple[int, str]]]


async def report_delivery(
    customers: Customers, receipt: Receipt, steps: list[Step], what: str = "delivery callback"
) -> None:
    """Post each delivery callback after its share of the delivery delay; the receipt
    is delivered once the hub took the last (at once after the delay, with none)."""
    delay = customers.delivery_delay
    if not steps:
        await asyncio.sleep(delay)
    for step in steps:
        await asyncio.sleep(delay / len(steps))
        status, answer = await step()
        if not 200 <= status < 300:
            receipt.undelivered(f"{what}: the hub answered {status}: {answer}")
            return
    receipt.delivered()


def keep_last(records: list[Any], limit: int | None) -> None:
    """Drop the oldest records beyond `limit` (None: keep every one)."""
    if limit is not None and len(records) > limit:
        del records[:-limit]
