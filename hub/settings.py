"""The hub's settings as typed objects: one model per section of the config file.

Reading and checking a config file (and the channels' own settings) is
`hub.config`'s job; everything else takes these objects as they are.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.ports import ChannelSettings


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = ""
    shutdown_timeout: float = Field(default=10.0, gt=0)
    # Connections: seconds one may sit idle waiting for a request; seconds a request
    # (headers and body) may take to arrive from its first byte; how many may be
    # open at once (at the cap the one idle longest is closed for a new one).
    keepalive_timeout: float = Field(default=75.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # Addresses of the reverse proxies in front of the hub (exact IPs): only a
    # request from one of them has its X-Forwarded-For believed.
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            ipaddress.ip_address(address)  # ValueError names the bad one
        return value


class StoreSettings(Section):
    uri: str = ""
    database: str = Field(default="hub", pattern=r"^[A-Za-z0-9_-]{1,60}$")
    data_dir: str = "var"
    server_selection_timeout_ms: int = Field(default=3000, ge=100)
    # How long a command waits for a connection, then for the store's answer
    # (the driver's waitQueueTimeoutMS and socketTimeoutMS).
    command_timeout_ms: int = Field(default=10_000, ge=100)


class IdentitySettings(Section):
    default_region: str = "US"

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        value = value.upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r} (use an ISO 3166 code such as 'US')")
        return value


class IngestSettings(Section):
    max_batch: int = Field(default=256, ge=1, le=5000)


class DispatcherSettings(Section):
    workers: int = Field(default=4, ge=1, le=64)
    batch: int = Field(default=100, ge=1, le=1000)  # most items one claim takes per inbox
    lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    # How long one process holds an inbox's sending; another takes over this long
    # after its holder died (at once after a clean stop, which hands it back).
    inbox_lease_seconds: float = Field(default=15.0, ge=1, le=600)


class EventsSettings(Section):
    poll_interval: float = Field(default=0.25, gt=0)
    retention_seconds: float = Field(default=30.0, gt=0)


DEFAULT_STOP_WORDS = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
    "СТОП", "ОТПИСАТЬСЯ", "ОТПИСКА", "ΣΤΟΠ", "ΔΙΑΓΡΑΦΗ", "STOPP",
)
DEFAULT_START_WORDS = ("START", "UNSTOP", "СТАРТ")  # noqa: RUF001
DEFAULT_STOP_REPLY = (
    "You are unsubscribed and will get no more messages here. Reply START to subscribe again."
)
DEFAULT_START_REPLY = "You are subscribed again. Reply STOP to unsubscribe."


class SchedulerSettings(Section):
    enabled: bool = True  # run the scheduled jobs (campaigns, greetings, reminders) here
    lease_seconds: float = Field(default=30.0, gt=0)  # a dead process's jobs wait this long


class MediaSettings(Section):
    """Customers' files: how the hub fetches them from the providers and keeps them."""

    max_inbound_bytes: int = Field(default=26_214_400, ge=1024)  # per file (25 MiB)
    max_message_bytes: int = Field(default=104_857_600, ge=1024)  # all files of one message
    fetch_timeout: float = Field(default=60.0, gt=0)  # seconds for one download
    max_attempts: int = Field(default=5, ge=1, le=100)  # tries before a download fails
    retry_base: float = Field(default=2.0, gt=0)  # seconds before the 2nd try, doubling
    workers: int = Field(default=4, ge=1, le=64)  # downloads at once per hub process
    sweep_interval: float = Field(default=5.0, gt=0)  # seconds between looks for pending files


class OptOutSettings(Section):
    """Stop and start words (hub.services.optout): a message that is only one of
    them opts its sender out of (back into) the channel, with one confirmation."""

    stop_words: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP_WORDS))
    start_words: list[str] = Field(default_factory=lambda: list(DEFAULT_START_WORDS))
    stop_reply: str = Field(default=DEFAULT_STOP_REPLY, min_length=1, max_length=1000)
    start_reply: str = Field(default=DEFAULT_START_REPLY, min_length=1, max_length=1000)

    @field_validator("stop_words", "start_words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        for word in value:
            if not word.strip() or len(word) > 40:
                raise ValueError(f"not a word: {word!r}")
        return value



class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class SandboxSettings(Section):
    """Built-in provider simulators and the customer page `/sandbox` (hub.sandbox).

    Off unless a config turns it on. When on, every inbox it covers (`inboxes`;
    empty: all twilio, telegram, whatsapp, email and pbx inboxes) sends to the
    simulators on loopback instead of its provider."""

    enabled: bool = False
    host: str = "127.0.0.1"  # where the simulators listen (keep it loopback)
    port: int = Field(default=0, ge=0, le=65535)  # their HTTP port; 0: any free one
    smtp_port: int = Field(default=0, ge=0, le=65535)  # their SMTP sink; 0: any free one
    hub_url: str = ""  # where they post webhooks; empty: the address the hub answered on
    inboxes: list[str] = []
    delivery_delay: float = Field(default=0.3, ge=0, le=60)  # seconds before "delivered"
    demo_admin_email: str = ""  # with a password: the first admin, created at start-up
    demo_admin_password: str = ""


def parse_duration(value: object) -> float:
    """Seconds in a duration written as a number and a unit: "90s", "15m", "2h"."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", value)
        if match:
            seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
            if 0 < seconds <= 30 * 86400:
                return seconds
    raise ValueError(f'{value!r} is not a duration such as "90s", "15m" or "2h" (at most 30 days)')


@dataclass(frozen=True)
class InboxSla:
    """An inbox's first-response SLA, in seconds (None: no SLA; `escalate_after`
    counts from the breach)."""

    first_response: float | None = None
    escalate_after: float | None = None

    KEYS = ("first_response", "escalate_after")


@dataclass(frozen=True)
class InboxConfig:
    """One configured inbox: its id, its channel name and the channel's own settings."""

    id: str
    channel: str
    settings: ChannelSettings
    sla: InboxSla = field(default_factory=InboxSla)
    assignment: str = "none"  # "none" | "round_robin" (hub.services.assignment)


class _BotBase(Section):
    """What every `[[bots]]` entry has: its id and the inboxes it serves."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    inboxes: list[str] = []


class FlowBotSettings(_BotBase):
    """A flow file run inside the hub (bots.flow)."""

    kind: Literal["flow"]
    flow: str  # the flow file, relative to the config file


class HttpBotSettings(_BotBase):
    """An external bot the hub POSTs each new inbound message to (bots.external)."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=8, json_schema_extra={"secret": True})
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)


class LlmBotSettings(_BotBase):
    """An OpenAI-compatible chat-completions endpoint answering from `knowledge` (bots.llm)."""

    kind: Literal["llm"]
    api_base: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)
    api_key: str = Field(default="", json_schema_extra={"secret": True})
    knowledge: list[str] = []  # files, relative to the config file
    timeout_seconds: float = Field(default=20.0, gt=0, le=300)


BotSettings = FlowBotSettings | HttpBotSettings | LlmBotSettings
BOT_KINDS: dict[str, type[BotSettings]] = {
    "flow": FlowBotSettings,
    "http": HttpBotSettings,
    "llm": LlmBotSettings,
}


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    store: StoreSettings
    identity: IdentitySettings
    ingest: IngestSettings
    dispatcher: DispatcherSettings
    events: EventsSettings
    logging: LoggingSettings
    inboxes: tuple[InboxConfig, ...]
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    bots: tuple[BotSettings, ...] = ()
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    opt_out: OptOutSettings = field(default_factory=OptOutSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    source: str = "<defaults>"
    data_dir: Path = field(default_factory=lambda: Path("var").resolve())
    secrets: frozenset[str] = frozenset()

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    def inbox(self, inbox_id: str) -> InboxConfig | None:
        return next((i for i in self.inboxes if i.id == inbox_id), None)

    def bot_of_inbox(self, inbox_id: str) -> str | None:
        """The id of the bot that serves `inbox_id` first, or None."""
        return next((b.id for b in self.bots if inbox_id in b.inboxes), None)
