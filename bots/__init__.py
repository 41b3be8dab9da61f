"""Bots answer first where configured and hand off to a human.

The hub calls a bot (`hub.ports.BotHook`) with every new inbound message after it
is stored; bots reply through the outbox (`hub.ports.Replies`) like agents do.
`BUILTIN_BOTS` maps a bot kind's name to its class, imported lazily like the
channels' registry. The flow bot, the external HTTP bot and the handoff rules
come with the bots issue; until then the only kind is `none`, which leaves every
conversation to the agents.
"""

from __future__ import annotations

import importlib

from hub.ports import BotHook, NoBot

BUILTIN_BOTS: dict[str, str] = {
    "none": "hub.ports:NoBot",
}


def bot_class(name: str) -> type[BotHook] | None:
    """The bot class registered under `name`, or None."""
    target = BUILTIN_BOTS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    cls: type[BotHook] = getattr(importlib.import_module(module_name), attr)
    return cls


__all__ = ["BUILTIN_BOTS", "BotHook", "NoBot", "bot_class"]
