"""Channel adapters: one module per provider.

`BUILTIN_CHANNELS` maps the config's `channel = "..."` name to the adapter class,
given as "module:Class" so a provider's libraries load only when it is used.
"""

from __future__ import annotations

import importlib

from channels.base import (
    ChannelAdapter,
    ChannelContext,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    SendError,
    StoreUnavailable,
    TransientSendError,
)
from channels.simulation import Simulator

BUILTIN_CHANNELS: dict[str, str] = {
    "twilio": "channels.twilio:TwilioChannel",
    "telegram": "channels.telegram:TelegramChannel",
    "whatsapp": "channels.whatsapp:WhatsAppChannel",
    "email": "channels.email:EmailChannel",
    "pbx": "channels.pbx:PbxChannel",
    "form": "channels.form:FormChannel",
}

_registered: dict[str, type[ChannelAdapter]] = {}


def register_channel(cls: type[ChannelAdapter]) -> type[ChannelAdapter]:
    """Add an adapter class under its `name` (for plugins and tests)."""
    _registered[cls.name] = cls
    return cls


def channel_class(name: str) -> type[ChannelAdapter] | None:
    if name in _registered:
        return _registered[name]
    target = BUILTIN_CHANNELS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    cls: type[ChannelAdapter] = getattr(importlib.import_module(module_name), attr)
    _registered[name] = cls
    return cls


def simulator_class(name: str) -> type[Simulator] | None:
    """The simulator the channel names (`ChannelAdapter.simulator`), loaded; None
    when it has none."""
    cls = channel_class(name)
    if cls is None or cls.simulator is None:
        return None
    module_name, _, attr = cls.simulator.partition(":")
    simulator: type[Simulator] = getattr(importlib.import_module(module_name), attr)
    return simulator


def known_channels() -> list[str]:
    return sorted(set(BUILTIN_CHANNELS) | set(_registered))


__all__ = [
    "BUILTIN_CHANNELS",
    "ChannelAdapter",
    "ChannelContext",
    "ChannelSettings",
    "PermanentSendError",
    "RateLimit",
    "SendError",
    "StoreUnavailable",
    "TransientSendError",
    "channel_class",
    "known_channels",
    "register_channel",
    "simulator_class",
]
