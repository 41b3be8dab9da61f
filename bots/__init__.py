"""Bots answer first where configured and hand off to a human.

The hub calls a `BotHook` with every new inbound message after it is stored; bots
reply through the outbox like agents do. The built-in flow bot, the external HTTP
bot and the handoff rules come with the bots issue; until then the hook is
`NoBot`, which leaves every conversation to the agents.
"""

from __future__ import annotations

from typing import Any, Protocol


class BotHook(Protocol):
    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        """Called once per new inbound message (never for a provider's retry)."""


class NoBot:
    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        return None
