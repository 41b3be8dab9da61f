"""Opt-out by stop and start words.

An inbound message that is only a stop word (any case, surrounding spaces and
punctuation ignored: "Stop!", " стоп. ") sets the contact's `opted_out[<channel>]`
and is answered with one confirmation, through the outbox, from the system; a
start word clears it, also with one. A stop word from a contact already opted out
(or a start word from one who is not) changes nothing and sends nothing. The
change is one conditional update, so two stop words arriving together make one
confirmation. The words and texts come from `[opt_out]` (hub.settings).

Ingest calls `OptOut.consume` before the inbox's bot: a consumed word never
reaches the bot.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from hub.model import Event, utcnow
from hub.services.contacts import OPT_OUT_CHANGED
from hub.services.events import Events
from hub.services.outbox import enqueue
from hub.settings import OptOutSettings
from hub.store import Store

log = logging.getLogger("hub.optout")

Word = Literal["stop", "start"]


def normalize(text: str) -> str:
    """The text compared with the words: trimmed of spaces and of punctuation and
    symbols at either end, case-folded; inner spaces collapsed."""
    cleaned = unicodedata.normalize("NFKC", text).strip()

    def edge(char: str) -> bool:
        return char.isspace() or unicodedata.category(char)[0] in "PSZC"

    start, end = 0, len(cleaned)
    while start < end and edge(cleaned[start]):
        start += 1
    while end > start and edge(cleaned[end - 1]):
        end -= 1
    return " ".join(cleaned[start:end].split()).casefold()


class StopWords:
    """Which texts are a stop or a start word."""

    def __init__(self, stop: Iterable[str], start: Iterable[str]) -> None:
        self.stop = frozenset(normalize(w) for w in stop)
        self.start = frozenset(normalize(w) for w in start) - self.stop

    def classify(self, text: Any) -> Word | None:
        if not isinstance(text, str) or len(text) > 64:
            return None
        word = normalize(text)
        if not word:
            return None
        if word in self.stop:
            return "stop"
        if word in self.start:
            return "start"
        return None


class OptOut:
    """The ingest hook: consumes stop and start words."""

    def __init__(
        self,
        store: Store,
        events: Events,
        settings: OptOutSettings | None = None,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        settings = settings or OptOutSettings()
        self.store = store
        self.events = events
        self.words = StopWords(settings.stop_words, settings.start_words)
        self.replies: dict[Word, str] = {
            "stop": settings.stop_reply,
            "start": settings.start_reply,
        }
        self.on_queued = on_queued

    async def __call__(self, message: Mapping[str, Any]) -> bool:
        return await self.consume(message)

    async def consume(self, message: Mapping[str, Any]) -> bool:
        """Handle an inbound message if it is a stop or start word; True when it
        was one (the bot must not see it)."""
        if message.get("direction") != "in" or message.get("kind") not in ("text", "email"):
            return False
        word = self.words.classify(message.get("text"))
        if word is None:
            return False
        channel = str(message.get("channel") or "")
        conversation = await self.store.conversations.find_one(
            {"_id": message["conversation_id"]}, {"contact_id": 1}
        )
        if conversation is None or not channel:
            return False
        contact_id = conversation["contact_id"]
        out = word == "stop"
        path = f"opted_out.{channel}"
        # One conditional update: of a repeat (or two at once) only one changes it.
        condition: Any = {"$ne": True} if out else True
        changed = await self.store.contacts.update_one(
            {"_id": contact_id, path: condition}, {"$set": {path: out, OPT_OUT_CHANGED: utcnow()}}
        )
        if changed.modified_count == 0:
            log.info(
                "opt-out word: nothing to change",
                extra={"contact_id": contact_id, "channel": channel, "word": word},
            )
            return True
        await self.events.publish(
            [Event("contact.updated", {"id": contact_id, "opted_out": {channel: out}})]
        )
        await enqueue(
            self.store,
            self.events,
            conversation_id=message["conversation_id"],
            text=self.replies[word],
            sender={"type": "system", "id": None},
            key=f"opt-{word}:{message['_id']}",
        )
        self.on_queued()
        log.info(
            "contact opted out" if out else "contact opted back in",
            extra={"contact_id": contact_id, "channel": channel},
        )
        return True
