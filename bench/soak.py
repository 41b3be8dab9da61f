"""Soak: mixed inbound traffic on every channel for minutes, with agents replying.

    .venv/bin/python -m bench.soak               # 10 minutes at 200 inbound messages/s
    .venv/bin/python -m bench.soak --quick       # 1 minute
    .venv/bin/python -m bench.soak --minutes 30 --rate 100

A real `hub serve` runs as a subprocess on the embedded store (its own child
process), with one inbox per channel: Twilio SMS (`sms`), Telegram (`tg`),
WhatsApp Cloud (`wa`), e-mail through the inbound-parse webhook (`mail`) and
through the hub's own SMTP receiver (`mail-smtp`), PBX call events (`pbx`) and
web-form submissions (`form`). Each provider inbox points at its channel's
simulator (`channels/<provider>/simulator.py`), run here on loopback the way the
sandbox runs them (`hub.sandbox`): this process is their `Customers`
(`channels.simulation`), so every inbound message is built, signed and posted by
the simulator's own customer side (`write`, `call`, `hang_up`), and every reply
the hub sends is taken by the simulator's provider API, shown to the customer
here and followed by the delivery callbacks the provider would post. Form
submissions, which have no simulator, are signed with `channels.signing`.

Load: an open loop at `--rate` messages/s (each posted at its scheduled time,
whatever the answers), each from a customer of a pool (one in ten new, the rest
returning at random), on a channel drawn by `MIX`. A PBX call posts
`call.started`, then 1-4 s later `call.missed` (and, one call in four,
`recording.ready` first: a voicemail). An admin (created at start-up through
HUB_ADMIN_EMAIL/HUB_ADMIN_PASSWORD) holds the agents' WebSocket; one in five
inbound messages on a channel that takes replies is answered 1-3 s after its
`message.created` through `POST /api/conversations/{id}/messages`.

Printed: the hub's and the store child's RSS (/proc/<pid>/status VmRSS) at the
start, every minute and at the end; the hub's open file descriptors and TCP
connections (from /proc/<pid>/fd and /proc/net/tcp: accepted on its HTTP and
SMTP ports, to the store, out to the simulators); the outbox depth
(`hub_outbox_depth` in /metrics, which exposes no asyncio task count); inbound
messages acknowledged against those found in the store at the end (looked up by
their provider ids through PyMongo on the embedded store's URI, from
`store.json` in its data directory), answers other than 200 (250 for SMTP) by
status; ack p50/p99 from each message's scheduled send; replies queued (201)
against those the simulators accepted, counted per reply, so a reply sent twice
shows; and the hub's log warnings and errors.

The machine is shared (two cores for the load, the simulators, the hub and its
store), so the latencies are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import cpu_seconds, free_port, percentile, wait_http  # noqa: E402
from channels import simulator_class  # noqa: E402
from channels.signing import HEADER as SIGNATURE_HEADER  # noqa: E402
from channels.signing import sign  # noqa: E402
from channels.simulation import (  # noqa: E402
    Customer,
    Delivered,
    Place,
    Simulator,
    Writing,
)
from hub.config import parse_settings  # noqa: E402
from hub.services.ingest import message_id_for  # noqa: E402
from hub.store.embedded_server import INFO_NAME  # noqa: E402

ADMIN_EMAIL = "soak-admin@example.com"
ADMIN_PASSWORD = "soak-admin-password-0001"
FORM_SECRET = "soak-form-secret-0123456789"
PBX_SECRET = "soak-pbx-secret-0123456789"

# inbox id -> (channel, medium, share of the inbound messages, takes replies)
MIX: dict[str, tuple[str, str, float, bool]] = {
    "sms": ("twilio", "sms", 0.24, True),
    "wa": ("whatsapp", "whatsapp", 0.22, True),
    "tg": ("telegram", "telegram", 0.20, True),
    "mail": ("email", "email", 0.10, True),
    "mail-smtp": ("email", "email", 0.06, True),
    "pbx": ("pbx", "voice", 0.10, False),
    "form": ("form", "form", 0.08, False),
}
LABELS = {
    "sms": "Twilio SMS",
    "wa": "WhatsApp Cloud",
    "tg": "Telegram",
    "mail": "e-mail, inbound parse",
    "mail-smtp": "e-mail, SMTP",
    "pbx": "PBX calls",
    "form": "web forms",
}
REPLY_SHARE = 0.2
TIMEOUT = 30.0  # seconds a webhook or an API call may take before it counts as unanswered
TIMED_OUT = -1  # its status then
NEW_CUSTOMER = 0.1
TEXTS = [
    "Hi, where is my order?",
    "Can I change the delivery address?",
    "The parcel arrived damaged, what now?",
    "Do you have this in a larger size?",
    "Thanks, that solved it.",
    "I would like to cancel my subscription.",
    "Is the shop open on Sunday?",
    "My invoice shows the wrong amount.",
]
MESSAGE_TOKEN = re.compile(r"\[m(\d+)\]")
REPLY_TOKEN = re.compile(r"\[r(\d+)\]")

# The customer message a webhook belongs to, while its simulator posts it.
CURRENT: contextvars.ContextVar[Item | None] = contextvars.ContextVar("soak_item", default=None)


# -- the processes, from /proc ---------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tcp_table() -> dict[int, tuple[int, int, str]]:
    """Every TCP socket of this network namespace: inode -> (local port, remote port, state)."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                table[inode] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    state,
                )
    return table


@dataclass
class Sockets:
    fds: int = 0
    listening: int = 0
    accepted: int = 0  # established, on the hub's own HTTP or SMTP port
    store: int = 0  # established, to the store's port
    out: int = 0  # established, to anything else (the simulators)
    other: int = 0  # closing TCP states, UNIX sockets, pipes...


def sockets_of(pid: int, own_ports: set[int], store_port: int) -> Sockets:
    found = Sockets()
    table = tcp_table()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        found.fds += 1
        with contextlib.suppress(OSError):
            target = os.readlink(fd_dir / fd)
            if not target.startswith("socket:["):
                continue
            entry = table.get(int(target[8:-1]))
            if entry is None:
                found.other += 1
                continue
            local, remote, state = entry
            if state == "0A":
                found.listening += 1
            elif state != "01":
                found.other += 1
            elif local in own_ports:
                found.accepted += 1
            elif remote == store_port:
                found.store += 1
            else:
                found.out += 1
    return found


def metric_sum(text: str, name: str) -> float:
    """The sum of a metric's samples (every label set) in a Prometheus text page."""
    total = 0.0
    for match in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(match.group(1))
    return total


# -- the hub's config ---------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml(sections: dict[str, dict[str, Any]], inboxes: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    for inbox in inboxes:
        lines.append("[[inboxes]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in inbox.items()]
        lines.append("")
    return "\n".join(lines)


def inbox_entries(smtp_in_port: int) -> list[dict[str, Any]]:
    # Every `rate` is above what one in five replies asks of it, so the dispatcher
    # paces nothing the soak sends (Twilio's default for a long code is 1/s,
    # e-mail's 5/s).
    return [
        {
            "id": "sms",
            "channel": "twilio",
            "account_sid": "ACsoak" + "0" * 26,
            "auth_token": "soak-twilio-auth-token-0123",
            "number": "+15005550006",
            "api_base": "https://api.twilio.com",
            "rate": 50.0,
        },
        {
            "id": "tg",
            "channel": "telegram",
            "token": "123456789:SOAK-test-token_abcdefghijklmnop",
            "secret_token": "soak-telegram-secret",
            "rate": 30.0,
        },
        {
            "id": "wa",
            "channel": "whatsapp",
            "phone_number_id": "106540352242922",
            "access_token": "soak-whatsapp-access-token",
            "app_secret": "soak-whatsapp-app-secret",
            "verify_token": "soak-whatsapp-verify-token",
        },
        {
            "id": "mail",
            "channel": "email",
            "address": "support@example.com",
            "webhook_secret": "soak-email-webhook-secret-0123",
            "rate": 50.0,
        },
        {
            "id": "mail-smtp",
            "channel": "email",
            "address": "sales@example.com",
            "inbound_smtp_port": smtp_in_port,
            "rate": 50.0,
        },
        {"id": "pbx", "channel": "pbx", "secret": PBX_SECRET},
        {"id": "form", "channel": "form", "secret": FORM_SECRET},
    ]


def webhook_prefix(inbox: str) -> str:
    channel = MIX[inbox][0]
    # `FormChannel.webhook_prefix`; every other adapter keeps the default.
    return f"/webhooks/forms/{inbox}" if channel == "form" else f"/webhooks/{channel}/{inbox}"


# -- what is measured ---------------------------------------------------------------------------


@dataclass
class Item:
    """One inbound message (a PBX call: its events) and what became of it."""

    number: int
    inbox: str
    scheduled: float  # perf_counter
    late: float = 0.0  # how late this process started it
    t0: float = 0.0  # the webhook being posted is timed from here
    webhooks: list[tuple[str, int, float]] = field(default_factory=list)  # (what, status, s)
    provider_ids: list[str] = field(default_factory=list)  # what the store holds when acked
    acked: bool = False
    reply: bool = False  # chosen for an agent's reply


@dataclass
class Reply:
    number: int
    inbox: str
    event_at: float = 0.0  # perf_counter of the message.created
    status: int | None = None  # the API's answer
    message_id: str | None = None
    seen: list[str] = field(default_factory=list)  # provider ids the simulators gave it


class Receipt:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak

    def delivered(self) -> None:
        self.soak.delivered += 1

    def undelivered(self, error: str) -> None:
        self.soak.undelivered[error.split(":", 1)[0][:60]] += 1


class Soak:
    """The simulators' customer side, the load, and the agents."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.rng = random.Random(args.seed)
        self.hub_port = free_port()
        self.smtp_in_port = free_port()
        self.hub_base = f"http://127.0.0.1:{self.hub_port}"
        self._http_socket = socket.create_server(("127.0.0.1", 0))
        self._smtp_socket = socket.create_server(("127.0.0.1", 0))
        self.sim_url = f"http://127.0.0.1:{self._http_socket.getsockname()[1]}"
        self.simulators: dict[str, Simulator] = {}  # by channel
        self.places: dict[str, Place] = {}
        self.http: aiohttp.ClientSession | None = None
        self.api: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.items: list[Item] = []
        self.replies: dict[int, Reply] = {}
        self.customers = 0
        self.email_threads: dict[str, str] = {}  # customer address -> last Message-ID we got
        self.callbacks: Counter[int] = Counter()  # delivery callbacks: status -> count
        self.delivered = 0
        self.undelivered: Counter[str] = Counter()
        self.other_outbound = 0  # sends with no reply token
        self.ws_in = 0  # inbound message.created events seen
        self.ws_events = 0
        self.ws_closed: str | None = None
        self.token = ""
        self.samples: list[dict[str, Any]] = []
        self.load_start = 0.0  # perf_counter of the first scheduled message
        self.hub: subprocess.Popen[bytes] | None = None
        self.store_pid = 0
        self.store_port = 0

    # -- channels.simulation.Customers -------------------------------------------------

    @property
    def delivery_delay(self) -> float:
        return self.args.delivery_delay

    def received(self, message: Delivered) -> Receipt:
        match = REPLY_TOKEN.search(message.text)
        reply = self.replies.get(int(match.group(1))) if match else None
        if reply is None:
            self.other_outbound += 1
        else:
            reply.seen.append(message.provider_id)
        if message.thread_ref:
            self.email_threads[message.address] = message.thread_ref
        return Receipt(self)

    def webhook_url(self, inbox: str) -> str:
        return self.hub_base + webhook_prefix(inbox)

    async def post(
        self, url: str, data: bytes | aiohttp.FormData, headers: Mapping[str, str]
    ) -> tuple[int, str]:
        assert self.http is not None
        item = CURRENT.get()
        try:
            async with self.http.post(url, data=data, headers=dict(headers)) as response:
                status, body = response.status, (await response.text())[:500]
        except TimeoutError:
            status, body = TIMED_OUT, "no answer in time"
        except aiohttp.ClientError as error:
            status, body = 0, type(error).__name__
        if item is None:
            self.callbacks[status] += 1
        else:
            # Each webhook of a message is timed from its scheduled send (a PBX
            # call's later events: from the end of the one before).
            now = time.perf_counter()
            item.webhooks.append((url.rsplit("/", 1)[-1], status, now - item.t0))
            item.t0 = now
        return status, body

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start and stop ------------------------------------------------------------------

    def config(self) -> Path:
        """Attach every provider inbox to its simulator; the hub's config, pointed at them."""
        entries = inbox_entries(self.smtp_in_port)
        data_dir = self.folder / "data"
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "host": "127.0.0.1",
                "port": self.hub_port,
                "public_url": self.hub_base,
            },
            "store": {"data_dir": str(data_dir)},
            "logging": {"level": "WARNING", "format": "json"},
        }
        settings = parse_settings(
            {**sections, "inboxes": entries}, source="soak", base_dir=self.folder
        )
        wired: list[dict[str, Any]] = []
        for inbox in settings.inboxes:
            cls = simulator_class(inbox.channel)
            channel_settings = inbox.settings
            if cls is not None:
                simulator = self.simulators.get(inbox.channel)
                if simulator is None:
                    simulator = self.simulators[inbox.channel] = cls.for_sandbox(self)
                    self.places[inbox.channel] = Place(
                        api_base=f"{self.sim_url}/{inbox.channel}",
                        smtp_host="127.0.0.1",
                        smtp_port=self._smtp_socket.getsockname()[1],
                        smtp_socket=self._smtp_socket,
                    )
                channel_settings = simulator.attach(
                    inbox.id, channel_settings, self.places[inbox.channel]
                )
            wired.append(
                {
                    "id": inbox.id,
                    "channel": inbox.channel,
                    **channel_settings.model_dump(exclude_defaults=True),
                }
            )
        path = self.folder / "hub.toml"
        path.write_text(toml(sections, wired))
        return path

    async def start(self) -> None:
        config = self.config()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for channel, simulator in self.simulators.items():
            routes = simulator.app()
            if routes is not None:
                app.add_subapp(f"/{channel}", routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._http_socket).start()
        for channel, simulator in self.simulators.items():
            await simulator.serve(self.places[channel])
        # A provider's pool of connections to the hub, and the agents' browser.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.args.connections),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )
        self.api = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HUB_ADMIN_EMAIL": ADMIN_EMAIL,
            "HUB_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        log = (self.folder / "hub.log").open("wb")
        self.hub = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "hub.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            await wait_http(f"{self.hub_base}/readyz", timeout=120)
        except RuntimeError:
            raise SystemExit(f"the hub did not come up:\n{self.log_tail()}") from None
        info = json.loads((self.folder / "data" / INFO_NAME).read_text())
        self.store_pid, self.store_port = int(info["pid"]), int(info["port"])
        async with self.api.post(
            f"{self.hub_base}/api/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        ) as response:
            login = await response.json()
            if response.status != 200:
                raise SystemExit(f"login failed: {response.status} {login}")
        self.token = login["token"]

    async def stop_hub(self) -> tuple[float, int | None]:
        """SIGINT the hub; how long it took to exit, and its exit code."""
        hub = self.hub
        if hub is None or hub.poll() is not None:
            return 0.0, hub.returncode if hub else None
        started = time.perf_counter()
        hub.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(hub.wait, 60)
        except subprocess.TimeoutExpired:
            hub.kill()
            await asyncio.to_thread(hub.wait)
        return time.perf_counter() - started, hub.returncode

    async def close(self) -> None:
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
        for session in (self.http, self.api):
            if session is not None:
                await session.close()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "hub.log").read_text().splitlines()[-lines:])
        return ""

    # -- the customers ---------------------------------------------------------------------

    def customer(self) -> int:
        """One in ten messages from a new customer, the rest from one who wrote before."""
        if self.customers < 100 or self.rng.random() < NEW_CUSTOMER:
            self.customers += 1
            return self.customers - 1
        return self.rng.randrange(self.customers)

    @staticmethod
    def phone(k: int) -> str:
        return f"+1555{2000000 + k:07d}"

    async def message(self, item: Item, k: int) -> None:
        """Post one inbound message as its provider would."""
        CURRENT.set(item)
        item.t0 = item.scheduled
        channel, medium = MIX[item.inbox][0], MIX[item.inbox][1]
        name = f"Customer {k}"
        text = f"[m{item.number}] {self.rng.choice(TEXTS)}"
        if channel == "form":
            await self.submit_form(item, k, name, text)
            return
        if channel == "pbx":
            await self.call(item, k, name)
            return
        address = {
            "telegram": str(700000000 + k),
            "email": f"customer{k}@example.net",
        }.get(channel, self.phone(k))
        reply_to = self.email_threads.get(address) if channel == "email" else None
        writing = Writing(
            customer=Customer(address, name),
            text=text,
            subject=None if reply_to else f"Question {item.number}",
            reply_to=reply_to,
            last_subject=None,
        )
        handed = await self.simulators[channel].write(item.inbox, medium, writing)  # type: ignore[arg-type]
        if item.inbox == "mail-smtp":  # an SMTP session: no HTTP post to record
            ok = handed.status == 250
            item.webhooks.append(("smtp", handed.status, time.perf_counter() - item.t0))
        else:
            ok = handed.status == 200
        item.acked = ok
        if handed.provider_id:
            item.provider_ids.append(handed.provider_id)

    async def submit_form(self, item: Item, k: int, name: str, text: str) -> None:
        submission = f"soak-{item.number}"
        body = json.dumps(
            {
                "submission_id": submission,
                "name": name,
                "phone": self.phone(k),
                "email": f"customer{k}@example.net",
                "message": text,
                "utm_source": "soak",
            }
        ).encode()
        status, _ = await self.post(
            self.webhook_url(item.inbox),
            body,
            {"Content-Type": "application/json", SIGNATURE_HEADER: sign(FORM_SECRET, body)},
        )
        item.acked = status == 200
        item.provider_ids.append(f"form:{submission}")

    async def call(self, item: Item, k: int, name: str) -> None:
        """call.started; 1-4 s later, call.missed (after recording.ready, one call in four)."""
        pbx = self.simulators["pbx"]
        phone = await pbx.call(item.inbox, Customer(self.phone(k), name))
        await asyncio.sleep(self.rng.uniform(1.0, 4.0))
        voicemail = item.number % 4 == 0
        item.t0 = time.perf_counter()
        await pbx.hang_up(
            phone,
            voicemail=voicemail,
            duration=self.rng.randint(5, 40),
            recording_url=f"{self.sim_url}/recordings/{phone.id}.wav",
        )
        # call.started stores nothing; the call is one message once it is missed,
        # its voicemail another.
        statuses = [status for _, status, _ in item.webhooks[1:]]
        item.acked = bool(statuses) and all(s == 200 for s in statuses)
        item.provider_ids.append(f"{phone.id}:call")
        if voicemail:
            item.provider_ids.append(f"{phone.id}:recording")

    # -- the load -----------------------------------------------------------------------------

    async def load(self, seconds: float, rate: float) -> None:
        inboxes = list(MIX)
        weights = [MIX[i][2] for i in inboxes]
        total = int(seconds * rate)
        start = self.load_start
        running: set[asyncio.Task[None]] = set()
        for number in range(total):
            at = start + number / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inbox = self.rng.choices(inboxes, weights)[0]
            item = Item(number, inbox, at, late=max(0.0, time.perf_counter() - at))
            item.reply = MIX[inbox][3] and self.rng.random() < REPLY_SHARE
            if item.reply:
                self.replies[number] = Reply(number, inbox)
            self.items.append(item)
            task = asyncio.create_task(self.message(item, self.customer()))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    # -- the agents ----------------------------------------------------------------------------

    async def agents(self, ready: asyncio.Event) -> None:
        """Read the agents' feed; answer the chosen messages 1-3 s after they arrive."""
        assert self.api is not None
        url = self.hub_base.replace("http", "ws", 1) + f"/api/ws?token={self.token}"
        async with self.api.ws_connect(url, heartbeat=30) as ws:
            hello = await ws.receive_json(timeout=10)
            assert hello.get("type") == "hello", hello
            ready.set()
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                self.ws_events += 1
                event = json.loads(frame.data)
                if event.get("type") != "message.created":
                    continue
                data = event.get("data") or {}
                if data.get("direction") != "in":
                    continue
                self.ws_in += 1
                match = MESSAGE_TOKEN.search(str(data.get("text") or ""))
                reply = self.replies.get(int(match.group(1))) if match else None
                if reply is not None and not reply.event_at:
                    reply.event_at = time.perf_counter()
                    self.spawn(self.answer(reply, str(data["conversation_id"])))
            self.ws_closed = f"closed ({ws.close_code})"

    async def answer(self, reply: Reply, conversation_id: str) -> None:
        assert self.api is not None
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        try:
            async with self.api.post(
                f"{self.hub_base}/api/conversations/{conversation_id}/messages",
                json={"text": f"[r{reply.number}] Thanks for writing, we are on it."},
                headers={"Authorization": f"Bearer {self.token}"},
            ) as response:
                body = await response.json(content_type=None)
                reply.status = response.status
                if response.status == 201:
                    reply.message_id = body["id"]
        except TimeoutError:
            reply.status = TIMED_OUT
        except (aiohttp.ClientError, ValueError):
            reply.status = 0

    # -- sampling --------------------------------------------------------------------------------

    async def sample(self, label: str) -> dict[str, Any]:
        assert self.hub is not None and self.api is not None
        own = {self.hub_port, self.smtp_in_port}
        hub = sockets_of(self.hub.pid, own, self.store_port)
        outbox = float("nan")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.api.get(f"{self.hub_base}/metrics") as response:
                page = await response.text()
            outbox = metric_sum(page, "hub_outbox_depth")
        now = time.perf_counter()
        cpu = [cpu_seconds(self.hub.pid), cpu_seconds(self.store_pid), cpu_seconds(os.getpid())]
        # The rest of the machine: every process but these three (the machine is shared).
        cpu.append(machine_busy() - sum(cpu))
        share = [float("nan")] * 4
        if self.samples:
            before = self.samples[-1]
            share = [
                100 * (c - b) / (now - before["at"])
                for c, b in zip(cpu, before["cpu"], strict=True)
            ]
        sample = {
            "label": label,
            "hub_rss": rss_mb(self.hub.pid),
            "store_rss": rss_mb(self.store_pid),
            "hub": hub,
            "store_fds": len(os.listdir(f"/proc/{self.store_pid}/fd")),
            "outbox": outbox,
            "posted": len(self.items),
            "at": now,
            "cpu": cpu,
            "cpu_share": share,
        }
        self.samples.append(sample)
        print(
            f"  {label:>6}  hub {sample['hub_rss']:6.1f} MB  store {sample['store_rss']:6.1f} MB"
            f"  hub fds {hub.fds:4d} (tcp in {hub.accepted}, store {hub.store}, out {hub.out})"
            f"  outbox {outbox:4.0f}  messages {len(self.items)}",
            flush=True,
        )
        return sample

    async def every_minute(self, minutes: int) -> None:
        start = self.load_start
        for minute in range(1, minutes + 1):
            await asyncio.sleep(max(0.0, start + 60 * minute - time.perf_counter()))
            await self.sample(f"{minute} min")

    async def drain(self, timeout: float) -> float:
        """Wait until every chosen reply was queued and taken by its provider, the
        outbox is empty and the delivery callbacks are posted; seconds it took."""
        assert self.api is not None
        started = time.perf_counter()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            acked_replies = [r for r in self.replies.values() if self.items[r.number].acked]
            answered = all(r.status is not None for r in acked_replies)
            sent = all(r.seen for r in acked_replies if r.status == 201)
            outbox = float("nan")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.api.get(f"{self.hub_base}/metrics") as response:
                    outbox = metric_sum(await response.text(), "hub_outbox_depth")
            if answered and sent and outbox == 0:
                break
            await asyncio.sleep(0.5)
        # The last delivery callbacks: one delivery delay, and a margin.
        await asyncio.sleep(self.args.delivery_delay + 1.0)
        return time.perf_counter() - started

    # -- the store --------------------------------------------------------------------------------

    async def stored(self) -> tuple[set[str], dict[str, dict[str, Any]], Counter[str]]:
        """Which inbound messages the store holds (by provider id), the replies' outbound
        documents, and inbound messages per inbox."""
        from pymongo import AsyncMongoClient

        info = json.loads((self.folder / "data" / INFO_NAME).read_text())
        uri = f"mongodb://{info['host']}:{info['port']}/?directConnection=true"
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            messages = client["hub"]["messages"]
            wanted = [
                message_id_for(item.inbox, pid) for item in self.items for pid in item.provider_ids
            ]
            found: set[str] = set()
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                async for doc in messages.find({"_id": {"$in": chunk}}, {"_id": 1}):
                    found.add(str(doc["_id"]))
            ids = [r.message_id for r in self.replies.values() if r.message_id]
            outbound: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                async for doc in messages.find(
                    {"_id": {"$in": chunk}}, {"_id": 1, "status": 1, "provider_id": 1}
                ):
                    outbound[str(doc["_id"])] = doc
            per_inbox: Counter[str] = Counter()
            for inbox in MIX:
                per_inbox[inbox] = await messages.count_documents(
                    {"inbox": inbox, "direction": "in"}
                )
        finally:
            await client.close()
        return found, outbound, per_inbox


# -- the run and its report ------------------------------------------------------------------------


def log_levels(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Lines of the hub's log by level ("plain": not a JSON record, such as the
    address it prints at start-up), and its warnings and errors by message."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                levels["plain"] += 1
                continue
            if not isinstance(entry, dict):
                levels["plain"] += 1
                continue
            level = str(entry.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                messages[f"{level}: {str(entry.get('msg', ''))[:90]}"] += 1
    return levels, messages


def status_counts(counter: Counter[int]) -> str:
    names = {0: "not reached", TIMED_OUT: f"no answer in {TIMEOUT:.0f} s"}
    return ", ".join(f"{names.get(s, s)}: {n}" for s, n in sorted(counter.items())) or "none"


async def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="hub-soak-"))
    soak = Soak(args, folder)
    seconds = args.minutes * 60
    rc = 1
    try:
        await soak.start()
        print(
            f"soak: {args.minutes:g} min at {args.rate:.0f} inbound messages/s across "
            f"{len(MIX)} inboxes; hub pid {soak.hub.pid if soak.hub else '?'}, "
            f"store pid {soak.store_pid}; {folder}",
            flush=True,
        )
        ready = asyncio.Event()
        agents = asyncio.create_task(soak.agents(ready))
        await asyncio.wait_for(ready.wait(), 15)
        await soak.sample("start")
        soak.load_start = time.perf_counter() + 0.2
        sampler = asyncio.create_task(soak.every_minute(int(args.minutes)))
        load_started = time.perf_counter()
        await soak.load(seconds, args.rate)
        load_seconds = time.perf_counter() - load_started
        drained = await soak.drain(args.drain)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        end = await soak.sample("end")
        metrics_page = ""
        assert soak.api is not None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with soak.api.get(f"{soak.hub_base}/metrics") as response:
                metrics_page = await response.text()
        found, outbound, per_inbox = await soak.stored()
        agents.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await agents
        hub_alive = soak.hub is not None and soak.hub.poll() is None
        stop_seconds, code = await soak.stop_hub()
        rc = report(
            args,
            soak,
            load_seconds,
            drained,
            end,
            metrics_page,
            found,
            outbound,
            per_inbox,
            hub_alive,
            stop_seconds,
            code,
        )
    finally:
        await soak.stop_hub()
        await soak.close()
        if args.keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return rc


def report(
    args: argparse.Namespace,
    soak: Soak,
    load_seconds: float,
    drained: float,
    end: dict[str, Any],
    metrics_page: str,
    found: set[str],
    outbound: dict[str, dict[str, Any]],
    per_inbox: Counter[str],
    hub_alive: bool,
    stop_seconds: float,
    code: int | None,
) -> int:
    items = soak.items
    start = soak.samples[0]
    print()
    print(
        f"Soak: {args.minutes:g} min at {args.rate:.0f} inbound messages/s "
        f"({len(items):,} messages in {load_seconds:.0f} s), agents replying to 1 in "
        f"{round(1 / REPLY_SHARE)} (shared 2-core machine: load, simulators, hub and store)"
    )
    print()
    print(
        "              hub RSS  store RSS  hub fds  hub TCP in/store/out  store fds  outbox"
        "  CPU % hub/store/load/rest"
    )
    for sample in soak.samples:
        hub = sample["hub"]
        cpu = "/".join("-" if c != c else f"{c:.0f}" for c in sample["cpu_share"])
        tcp = f"{hub.accepted}/{hub.store}/{hub.out}"
        print(
            f"  {sample['label']:>7}  {sample['hub_rss']:6.1f} MB  {sample['store_rss']:6.1f} MB"
            f"  {hub.fds:7d}  {tcp:>20}  {sample['store_fds']:9d}  {sample['outbox']:6.0f}"
            f"  {cpu:>25}"
        )
    print(
        f"  RSS start -> end: hub {start['hub_rss']:.1f} -> {end['hub_rss']:.1f} MB "
        f"({end['hub_rss'] - start['hub_rss']:+.1f}), store {start['store_rss']:.1f} -> "
        f"{end['store_rss']:.1f} MB ({end['store_rss'] - start['store_rss']:+.1f})"
    )
    used = [
        (e - b) / max(1, len(soak.items)) * 1000
        for e, b in zip(end["cpu"], start["cpu"], strict=True)
    ]
    print(
        f"  CPU per inbound message, start to end: hub {used[0]:.2f} ms, store {used[1]:.2f} ms, "
        f"load and simulators {used[2]:.2f} ms; other processes {used[3]:.2f} ms"
    )
    print(
        "  asyncio tasks: not exposed (hub/metrics.py has no task gauge); open fds and "
        "TCP connections above instead"
    )
    print(
        "  CPU: % of one core over the interval before each line; 'rest' is every other "
        "process of the machine (2 cores: 200%)"
    )
    print(
        f"  the load's own connection pool to the hub: at most {args.connections}; "
        "the agents: one WebSocket and a pool of 32"
    )

    # -- inbound
    wanted_by_inbox: dict[str, list[Item]] = {inbox: [] for inbox in MIX}
    for item in items:
        wanted_by_inbox[item.inbox].append(item)
    print()
    print(
        "  inbound                    messages   webhooks   acked  stored  acked, not stored"
        "  not acked  in store"
    )
    totals = Counter[str]()
    statuses: Counter[int] = Counter()
    acks: list[float] = []
    for inbox, group in wanted_by_inbox.items():
        hooks = sum(len(i.webhooks) for i in group)
        acked = [i for i in group if i.acked]
        stored_acked = sum(
            1 for i in acked if all(message_id_for(inbox, pid) in found for pid in i.provider_ids)
        )
        stored_any = sum(
            1 for i in group if any(message_id_for(inbox, pid) in found for pid in i.provider_ids)
        )
        in_store = per_inbox[inbox]
        for i in group:
            for _, status, seconds in i.webhooks:
                statuses[status] += 1
                if status in (200, 250):
                    acks.append(seconds)
        print(
            f"  {LABELS[inbox]:24} {len(group):10,d} {hooks:10,d} {len(acked):7,d} "
            f"{stored_any:7,d} {len(acked) - stored_acked:18,d} {len(group) - len(acked):10,d}"
            f" {in_store:9,d}"
        )
        totals.update(
            messages=len(group),
            hooks=hooks,
            acked=len(acked),
            stored=stored_any,
            lost=len(acked) - stored_acked,
            unacked=len(group) - len(acked),
            in_store=in_store,
        )
    print(
        f"  {'total':24} {totals['messages']:10,d} {totals['hooks']:10,d} {totals['acked']:7,d} "
        f"{totals['stored']:7,d} {totals['lost']:18,d} {totals['unacked']:10,d}"
        f" {totals['in_store']:9,d}"
    )
    print(
        "  (a PBX call is one message of two or three webhooks, and two stored messages "
        "with a voicemail: 'in store' counts documents)"
    )
    bad = Counter({s: n for s, n in statuses.items() if s not in (200, 250)})
    print(f"  answers other than 200 (SMTP 250), by status: {status_counts(bad)}")
    late = [i.late for i in items]
    print(
        f"  ack latency (scheduled send -> answer): p50 {percentile(acks, 50) * 1000:.1f} ms, "
        f"p99 {percentile(acks, 99) * 1000:.1f} ms, max {max(acks, default=0) * 1000:.0f} ms; "
        f"this process started {sum(1 for x in late if x > 0.1)} messages over 100 ms late "
        f"(worst {max(late, default=0) * 1000:.0f} ms)"
    )
    minutes = max(1, int(args.minutes))
    per_minute: list[str] = []
    for minute in range(minutes):
        lo, hi = soak.load_start + 60 * minute, soak.load_start + 60 * (minute + 1)
        window = [
            s
            for i in items
            if lo <= i.scheduled < hi
            for _, st, s in i.webhooks
            if st in (200, 250)
        ]
        per_minute.append(
            f"{percentile(window, 50) * 1000:.0f}/{percentile(window, 99) * 1000:.0f}"
        )
    print(f"  ack p50/p99 ms per minute: {', '.join(per_minute)}")

    # -- replies
    replies = list(soak.replies.values())
    chosen = [r for r in replies if soak.items[r.number].acked]
    got_event = [r for r in chosen if r.event_at]
    queued = [r for r in chosen if r.status == 201]
    refused = Counter(r.status or 0 for r in chosen if r.status not in (None, 201))
    once = sum(1 for r in queued if len(r.seen) == 1)
    twice = sum(1 for r in queued if len(r.seen) > 1)
    never = sum(1 for r in queued if not r.seen)
    store_status = Counter(
        str(outbound.get(r.message_id or "", {}).get("status", "missing")) for r in queued
    )
    matches = sum(
        1
        for r in queued
        if r.seen and outbound.get(r.message_id or "", {}).get("provider_id") == r.seen[0]
    )
    print()
    print(
        f"  replies: {len(chosen):,} inbound messages chosen; {len(got_event):,} seen on the "
        f"agents' WebSocket; {len(queued):,} queued (201)"
        + (f"; refused: {status_counts(refused)}" if refused else "")
    )
    print(
        f"    at the providers: {once:,} sent exactly once, {twice} more than once, "
        f"{never} not sent; {soak.other_outbound} sends that were no reply"
    )
    print(
        f"    in the store: {', '.join(f'{k} {v:,}' for k, v in sorted(store_status.items()))}; "
        f"provider id as the provider gave it: {matches:,}"
    )
    by_inbox = Counter(r.inbox for r in queued)
    print("    queued by inbox: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_inbox.items())))
    print(
        f"  delivery callbacks to the hub: {sum(soak.callbacks.values()):,} "
        f"({status_counts(soak.callbacks)}); receipts delivered {soak.delivered:,}"
        + (f", undelivered: {dict(soak.undelivered)}" if soak.undelivered else "")
    )
    print(
        f"  WebSocket: {soak.ws_events:,} events, {soak.ws_in:,} inbound message.created"
        + (f"; {soak.ws_closed} before the end" if soak.ws_closed else "")
    )
    out_metric = metric_sum(metrics_page, "hub_messages_out_total")
    in_metric = metric_sum(metrics_page, "hub_messages_in_total")
    send_errors = metric_sum(metrics_page, "hub_send_errors_total")
    print(
        f"  hub metrics: messages in {in_metric:,.0f}, out {out_metric:,.0f}, "
        f"send errors {send_errors:,.0f}; drained in {drained:.1f} s after the load"
    )
    levels, messages = log_levels(soak.folder / "hub.log")
    print(
        "  hub log lines (level WARNING and up): "
        + (", ".join(f"{k} {v}" for k, v in sorted(levels.items())) or "none")
    )
    for text, count in messages.most_common(5):
        print(f"    {count:6d}  {text}")
    print(
        f"  hub {'running at the end' if hub_alive else 'HAD EXITED before the end'}; "
        f"stopped by SIGINT in {stop_seconds:.1f} s, exit code {code}"
    )
    ok = (
        hub_alive
        and totals["lost"] == 0
        and twice == 0
        and never == 0
        and len(queued) == len(chosen)
        and not bad
    )
    print(f"  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="inbound messages per second")
    parser.add_argument("--quick", action="store_true", help="1 minute")
    parser.add_argument(
        "--connections", type=int, default=64, help="the providers' connections to the hub"
    )
    parser.add_argument("--delivery-delay", type=float, default=0.5, help="seconds to 'delivered'")
    parser.add_argument("--drain", type=float, default=120.0, help="most seconds to wait after")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and the hub log")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 1.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
