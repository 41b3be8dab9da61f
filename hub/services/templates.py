"""Approved message templates (WhatsApp): each inbox's list, read from its
provider through the channel (`Channel.templates`) and kept for `TTL` seconds,
and a template send checked against it (name, language, one value for each
placeholder) before it is queued, so the agent learns at once what is wrong.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.ports import Channel, MessageTemplate

# Seconds an inbox's list is kept before the provider is asked again.
TTL = 300.0
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class NoTemplates(Exception):
    """The inbox has no templates (not a WhatsApp inbox, or no account named)."""


class TemplateRefused(Exception):
    """A template send that cannot go: an unknown template or the wrong parameters."""


@dataclass
class _Cached:
    until: float
    items: list[MessageTemplate]


# Per channel adapter (and medium): a hub's adapters live as long as the hub.
_cache: weakref.WeakKeyDictionary[Any, dict[str | None, _Cached]] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


async def approved(
    channel: Channel, medium: str | None, *, fresh: bool = False
) -> list[MessageTemplate]:
    """The inbox's approved templates on `medium` (from the cache while fresh).
    Raises NoTemplates, or the channel's SendError when the provider fails."""
    now = time.monotonic()
    per_medium = _cache.setdefault(channel, {})
    cached = per_medium.get(medium)
    if cached is not None and cached.until > now and not fresh:
        return cached.items
    lock = _locks.setdefault(channel, asyncio.Lock())
    async with lock:
        cached = per_medium.get(medium)
        if cached is not None and cached.until > time.monotonic() and not fresh:
            return cached.items
        items = await channel.templates(medium)
        if items is None:
            raise NoTemplates(f"inbox {channel.inbox_id} has no message templates")
        items = sorted(items, key=lambda t: (t.name, t.language))
        per_medium[medium] = _Cached(time.monotonic() + TTL, items)
        return items


def forget(channel: Channel) -> None:
    """Drop the inbox's cached list (the next read asks the provider)."""
    _cache.pop(channel, None)


def fill(template: MessageTemplate, parameters: Sequence[str]) -> str:
    """The template's body with each placeholder replaced by its value."""
    values = dict(zip(template.parameters, parameters, strict=True))
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template.body)


async def prepare(
    channel: Channel, medium: str | None, name: str, language: str, parameters: Sequence[str]
) -> tuple[dict[str, Any], str]:
    """(the outbound `template`, the filled body) for a send of template `name` in
    `language` with `parameters`; TemplateRefused naming what is wrong."""
    items = await approved(channel, medium)
    found = next((t for t in items if t.name == name and t.language == language), None)
    if found is None:
        languages = sorted(t.language for t in items if t.name == name)
        if languages:
            raise TemplateRefused(
                f"template {name!r} is not approved in {language!r} "
                f"(approved in: {', '.join(languages)})"
            )
        raise TemplateRefused(f"no approved template {name!r} in inbox {channel.inbox_id}")
    if len(parameters) != len(found.parameters):
        raise TemplateRefused(
            f"template {name!r} takes {len(found.parameters)} parameter(s) "
            f"({', '.join('{{' + p + '}}' for p in found.parameters) or 'none'}), "
            f"{len(parameters)} given"
        )
    return channel.template_message(found, parameters), fill(found, parameters)
