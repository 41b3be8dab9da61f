"""The hub's configuration: a TOML file validated into typed settings.

Every error names the file, the key and what is wrong, so a bad config stops
start-up with a message an operator can act on.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from channels import channel_class, known_channels
from hub.settings import (
    BOT_KINDS,
    BotSettings,
    DispatcherSettings,
    EventsSettings,
    IdentitySettings,
    InboxConfig,
    InboxSla,
    IngestSettings,
    LoggingSettings,
    MediaSettings,
    OptOutSettings,
    SandboxSettings,
    SchedulerSettings,
    Section,
    ServerSettings,
    Settings,
    StoreSettings,
    parse_duration,
)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URI_PASSWORD = re.compile(r"^mongodb(?:\+srv)?://[^:@/]*:([^@/]+)@")


class ConfigError(Exception):
    """A configuration problem, with the file and key it concerns."""


class _RawConfig(Section):
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    identity: IdentitySettings = IdentitySettings()
    ingest: IngestSettings = IngestSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    events: EventsSettings = EventsSettings()
    logging: LoggingSettings = LoggingSettings()
    sandbox: SandboxSettings = SandboxSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    opt_out: OptOutSettings = OptOutSettings()
    media: MediaSettings = MediaSettings()
    inboxes: list[dict[str, Any]] = []
    bots: list[dict[str, Any]] = []


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _expand_env(value: Any, path: tuple[Any, ...], source: str, used: set[str]) -> Any:
    """Replace ${VAR} in every string with the environment's value."""
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), source, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), source, used) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{source}: {_loc(path)}: environment variable {name} is not set")
            resolved = os.environ[name]
            if resolved:
                used.add(resolved)
            return resolved

        return _ENV_REF.sub(replace, value)
    return value


def _validation_message(source: str, prefix: tuple[Any, ...], error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = _loc((*prefix, *item["loc"]))
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{source}: {where}: required key is missing")
        else:
            lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def _secret_values(model: BaseModel) -> set[str]:
    """Values of fields a channel marked as secret, so logs can redact them."""
    found: set[str] = set()
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("secret"):
            value = getattr(model, name)
            if isinstance(value, str) and value:
                found.add(value)
    return found


def uri_password(uri: str) -> str | None:
    """The password a MongoDB URI carries, as written in it (percent-encoded)."""
    match = _URI_PASSWORD.match(uri)
    return match.group(1) if match else None


def _inbox_sla(entry: dict[str, Any], source: str, where: tuple[Any, ...]) -> InboxSla:
    """An inbox's `first_response` and `escalate_after` durations."""
    seconds: dict[str, float] = {}
    for key in InboxSla.KEYS:
        if key in entry:
            try:
                seconds[key] = parse_duration(entry[key])
            except ValueError as error:
                raise ConfigError(f"{source}: {_loc((*where, key))}: {error}") from None
    if "escalate_after" in seconds and "first_response" not in seconds:
        raise ConfigError(
            f"{source}: {_loc((*where, 'escalate_after'))}: needs first_response "
            "(it counts from the breach)"
        )
    return InboxSla(**seconds)


def _bots(
    entries: list[dict[str, Any]], source: str, base_dir: Path, inbox_ids: set[str]
) -> tuple[tuple[BotSettings, ...], set[str]]:
    """The `[[bots]]` entries, checked: kind, keys, inboxes (one bot each), and the
    flow and knowledge files (read now, so an error stops `hub check` and `hub serve`)."""
    from bots.flow import FlowError, load_flow

    bots: list[BotSettings] = []
    secrets: set[str] = set()
    ids: set[str] = set()
    served: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where: tuple[Any, ...] = ("bots", index)
        kind = entry.get("kind")
        cls = BOT_KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            problem = "required key is missing" if kind is None else f"unknown kind {kind!r}"
            raise ConfigError(
                f"{source}: {_loc((*where, 'kind'))}: {problem} (available: {', '.join(BOT_KINDS)})"
            )
        try:
            bot = cls.model_validate(entry)
        except ValidationError as error:
            raise ConfigError(_validation_message(source, where, error)) from None
        if bot.id in ids:
            raise ConfigError(f"{source}: {_loc((*where, 'id'))}: duplicate bot id {bot.id!r}")
        ids.add(bot.id)
        for number, inbox in enumerate(bot.inboxes):
            at = _loc((*where, "inboxes", number))
            if inbox not in inbox_ids:
                raise ConfigError(f"{source}: {at}: no inbox {inbox!r}")
            if inbox in served:
                raise ConfigError(
                    f"{source}: {at}: inbox {inbox!r} already has bot {served[inbox]!r} "
                    "(an inbox has at most one bot)"
                )
            served[inbox] = bot.id
        update: dict[str, Any] = {}
        if bot.kind == "flow":
            flow = Path(bot.flow)
            update["flow"] = str(flow if flow.is_absolute() else base_dir / flow)
            try:
                load_flow(update["flow"])
            except FlowError as error:
                raise ConfigError(f"{source}: {_loc((*where, 'flow'))}: {error}") from None
        elif bot.kind == "llm":
            files = []
            for number, name in enumerate(bot.knowledge):
                file = Path(name) if Path(name).is_absolute() else base_dir / name
                if not file.is_file():
                    raise ConfigError(
                        f"{source}: {_loc((*where, 'knowledge', number))}: "
                        f"no such file {str(file)!r}"
                    )
                files.append(str(file))
            update["knowledge"] = files
        secrets |= _secret_values(bot)
        bots.append(bot.model_copy(update=update) if update else bot)
    return tuple(bots), secrets


def parse_settings(data: dict[str, Any], *, source: str = "<config>", base_dir: Path) -> Settings:
    """Validate raw TOML data (already parsed) into Settings."""
    used_env: set[str] = set()
    data = _expand_env(data, (), source, used_env)
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_validation_message(source, (), error)) from None

    store = raw.store
    env_uri = os.environ.get("MONGODB_URI")
    if env_uri:
        store = store.model_copy(update={"uri": env_uri})
        used_env.add(env_uri)

    inboxes: list[InboxConfig] = []
    secrets: set[str] = set()
    seen: set[str] = set()
    for index, entry in enumerate(raw.inboxes):
        where = ("inboxes", index)
        inbox_id = entry.get("id")
        if not isinstance(inbox_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", inbox_id):
            raise ConfigError(
                f"{source}: {_loc((*where, 'id'))}: required, 1-64 characters of A-Za-z0-9_-"
            )
        if inbox_id in seen:
            raise ConfigError(f"{source}: {_loc((*where, 'id'))}: duplicate inbox id {inbox_id!r}")
        seen.add(inbox_id)
        channel = entry.get("channel")
        if channel is None:
            raise ConfigError(
                f"{source}: {_loc((*where, 'channel'))}: required key is missing "
                f"(available: {', '.join(known_channels()) or 'none'})"
            )
        cls = channel_class(channel) if isinstance(channel, str) else None
        if cls is None:
            raise ConfigError(
                f"{source}: {_loc((*where, 'channel'))}: unknown channel {channel!r} "
                f"(available: {', '.join(known_channels()) or 'none'})"
            )
        fields = {
            k: v
            for k, v in entry.items()
            if k not in ("id", "channel", "assignment", *InboxSla.KEYS)
        }
        try:
            channel_settings = cls.Settings.model_validate(fields)
        except ValidationError as error:
            raise ConfigError(_validation_message(source, where, error)) from None
        secrets |= _secret_values(channel_settings)
        sla = _inbox_sla(entry, source, where)
        assignment = entry.get("assignment", "none")
        if assignment not in ("none", "round_robin"):
            raise ConfigError(
                f"{source}: {_loc((*where, 'assignment'))}: must be \"none\" or "
                f"\"round_robin\", not {assignment!r}"
            )
        inboxes.append(
            InboxConfig(
                id=inbox_id,
                channel=channel,
                settings=channel_settings,
                sla=sla,
                assignment=assignment,
            )
        )

    for index, name in enumerate(raw.sandbox.inboxes):
        if name not in seen:
            raise ConfigError(f"{source}: sandbox.inboxes[{index}]: no inbox {name!r}")

    bots, bot_secrets = _bots(raw.bots, source, base_dir, seen)
    secrets |= bot_secrets

    password = uri_password(store.uri)
    if password:  # a password written in the file is as secret as one from the environment
        secrets |= {password, urllib.parse.unquote(password)}

    data_dir = Path(store.data_dir)
    if not data_dir.is_absolute():
        data_dir = base_dir / data_dir
    return Settings(
        server=raw.server,
        store=store,
        identity=raw.identity,
        ingest=raw.ingest,
        dispatcher=raw.dispatcher,
        events=raw.events,
        logging=raw.logging,
        inboxes=tuple(inboxes),
        sandbox=raw.sandbox,
        scheduler=raw.scheduler,
        opt_out=raw.opt_out,
        media=raw.media,
        bots=bots,
        source=source,
        data_dir=data_dir.resolve(),
        secrets=frozenset(s for s in secrets | used_env if len(s) >= 4),
    )


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load the config named by `path`, else by HUB_CONFIG, else the defaults."""
    chosen = path or os.environ.get("HUB_CONFIG")
    if not chosen:
        return parse_settings({}, source="<defaults>", base_dir=Path.cwd())
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{file}: cannot read the config file: not UTF-8 text (byte {error.start})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file}: not valid TOML: {error}") from None
    return parse_settings(data, source=str(file), base_dir=file.resolve().parent)
