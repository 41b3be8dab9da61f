"""Bots answer first where configured and hand off to people.

The hub calls its bot hook (`hub.ports.BotHook`, here `bots.runtime.BotRuntime`)
with every new inbound message after it is stored; the runtime gives it to the
bot of the conversation, once, and carries out the bot's actions: replies go
through the outbox like agents' do, handoffs through `hub.services.handoff`.

`BUILTIN_BOTS` maps a bot kind (`kind` of a `[[bots]]` entry) to its class,
imported lazily like the channels' registry:
- `flow`: a TOML flow file run inside the hub (`bots.flow`);
- `http`: an external bot the hub POSTs each message to, signed (`bots.external`);
- `llm`: an OpenAI-compatible chat-completions endpoint answering from the
  business's knowledge files (`bots.llm`).
A class has `from_settings(settings, *, hub)` and `async decide(ctx) -> Decision`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hub.ports import BotHook, NoBot

if TYPE_CHECKING:
    from bots.runtime import Bot
    from hub.services.runtime import Hub

BUILTIN_BOTS: dict[str, str] = {
    "flow": "bots.flow:FlowBot",
    "http": "bots.external:HttpBot",
    "llm": "bots.llm:LlmBot",
}


def bot_class(name: str) -> Any | None:
    """The bot class registered under kind `name`, or None."""
    target = BUILTIN_BOTS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_bots(hub: Hub) -> dict[str, Bot]:
    """One bot per `[[bots]]` entry of the hub's settings, by kind in the registry."""
    built: dict[str, Bot] = {}
    for settings in hub.settings.bots:
        cls = bot_class(settings.kind)
        if cls is None:
            raise ValueError(f"bots: unknown kind {settings.kind!r}")
        built[settings.id] = cls.from_settings(settings, hub=hub)
    return built


__all__ = ["BUILTIN_BOTS", "BotHook", "NoBot", "bot_class", "build_bots"]
