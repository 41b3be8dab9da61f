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
]
