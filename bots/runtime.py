"""The bot runtime: the hub's `BotHook`, which gives each new inbound message of a
bot's conversation to that bot once, and carries out what the bot answers.

Once, across provider retries, restarts and hub processes:
- ingest calls `on_inbound` only for a message it stored new (never for a retry);
- a turn is claimed by inserting a `bot_turns` document whose `_id` is the
  message's: of two processes (or a process and a sweep) one wins;
- the bot's decision is recorded in the turn before anything is sent, and every
  reply is queued with a key derived from the message (`bot:<message id>:<n>`):
  a turn interrupted by a crash is picked up by the sweep (`working` for longer
  than `stale_after`) and finishes with the same replies, sent once;
- a message stored just before a crash, whose turn was never claimed, is found by
  the sweep too (a bot conversation whose last message is an unanswered inbound one).

Within a process, the turns of one conversation run one after another, in the
order the messages were stored; the channel's pace (the dispatcher) spaces the
replies of a customer who floods the bot, each message answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from bots.actions import BadAnswer, BotFailure, Decision, TurnContext
from hub.model import ButtonReply, utcnow
from hub.services import contacts as contact_service
from hub.services import conversations
from hub.services.handoff import hand_off, reply_as_bot
from hub.services.outbox import OutboxError
from hub.store import find_by_ids

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.bots")

# Kinds of message a bot is not given (a call is for people).
UNANSWERED_KINDS = ("call", "voicemail", "event", "note")
# Telegram's callback data holds at most 64 bytes; WhatsApp's reply-button titles
# 20 characters and a list's rows 24, at most 10 choices.
TELEGRAM_PAYLOAD_BYTES = 64
WHATSAPP_MAX_CHOICES = 10


class Bot(Protocol):
    """One configured bot: answers one customer message with a Decision."""

    id: str

    async def decide(self, ctx: TurnContext) -> Decision: ...


def native_buttons(channel: str | None, medium: str) -> bool:
    """Whether the channel shows buttons of its own (Telegram's inline keyboard,
    the WhatsApp Cloud API's reply buttons and lists); else a numbered list."""
    return medium == "telegram" or (medium == "whatsapp" and channel == "whatsapp")


def _payload(label: str, medium: str) -> str:
    if medium == "telegram":
        data = label.encode()[:TELEGRAM_PAYLOAD_BYTES]
        return data.decode(errors="ignore") or "?"
    return label[:256]


def rendered_reply(
    text: str, labels: list[str], channel: str | None, medium: str
) -> tuple[str, list[ButtonReply]]:
    """The reply's text and buttons as the conversation's channel shows them."""
    if not labels:
        return text, []
    if native_buttons(channel, medium) and len(labels) <= WHATSAPP_MAX_CHOICES:
        return text, [ButtonReply(payload=_payload(label, medium), title=label) for label in labels]
    listed = "\n".join(f"{number} {label}" for number, label in enumerate(labels, start=1))
    return f"{text}\n\n{listed}", []


class _Locks:
    """One lock per conversation, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> Any:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class BotRuntime:
    """The hub's bot hook: routes each new inbound message to its conversation's bot."""

    def __init__(
        self,
        hub: Hub,
        bots: Mapping[str, Bot],
        *,
        sweep_every: float = 30.0,
        sweep_window: float = 120.0,
        sweep_grace: float = 10.0,
        stale_after: float = 120.0,
    ) -> None:
        self.hub = hub
        self.bots = dict(bots)
        self.sweep_every = sweep_every
        self.sweep_window = sweep_window
        self.sweep_grace = sweep_grace
        self.stale_after = stale_after
        self._locks = _Locks()
        self._sweeper: asyncio.Task[None] | None = None
        self._turns: set[asyncio.Task[None]] = set()
        self.answered = 0  # turns this process finished (the benchmark reads it)

    # -- the hook ------------------------------------------------------------------------

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        if message.get("kind") in UNANSWERED_KINDS or message.get("direction") != "in":
            return
        conversation_id = str(message["conversation_id"])
        # Taken before anything is awaited: the turns of a conversation run in the
        # order ingest handed them over.
        async with self._locks.hold(conversation_id):
            await self._turn(message, claim=True)

    # -- the sweep -----------------------------------------------------------------------

    def start(self) -> None:
        if self.bots and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="bot-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._turns:
            await asyncio.gather(*self._turns, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        window = max(self.sweep_window, 3600.0)  # at start: what a restart left behind
        while True:
            try:
                await self.sweep(window=window)
            except PyMongoError as error:
                log.warning("bot sweep failed", extra={"error": str(error)})
            except Exception:
                log.exception("bot sweep failed")
            window = self.sweep_window
            await asyncio.sleep(self.sweep_every)

    async def sweep(self, *, window: float | None = None) -> int:
        """Finish turns interrupted (a crash) and answer messages whose turn was never
        started; how many turns it ran."""
        store = self.hub.store
        assert store is not None
        now = utcnow()
        ran = 0
        stale = await (
            store.bot_turns.find(
                {"state": "working", "at": {"$lt": now - timedelta(seconds=self.stale_after)}}
            )
            .limit(200)
            .to_list()
        )
        for turn in stale:
            taken = await store.bot_turns.update_one(
                {"_id": turn["_id"], "state": "working", "at": turn["at"]},
                {"$set": {"at": utcnow(), "owner": self.hub.instance_id}},
            )
            if taken.modified_count != 1:
                continue
            message = await store.messages.find_one({"_id": turn["_id"]})
            if message is None:
                await self._finish_turn(str(turn["_id"]), "message gone")
                continue
            log.info(
                "resuming an interrupted bot turn",
                extra={"message_id": turn["_id"], "conversation_id": turn.get("conversation_id")},
            )
            async with self._locks.hold(str(message["conversation_id"])):
                await self._turn(message, claim=False)
            ran += 1
        span = timedelta(seconds=window if window is not None else self.sweep_window)
        waiting = await (
            store.conversations.find(
                {
                    "last_activity_at": {
                        "$gte": now - span,
                        "$lte": now - timedelta(seconds=self.sweep_grace),
                    },
                    "last_message.direction": "in",
                    "bot": {"$ne": None},
                },
                {"last_message": 1, "bot": 1},
            )
            .limit(1000)
            .to_list()
        )
        last_ids = {
            str(c["last_message"]["id"]): c
            for c in waiting
            if c.get("bot") in self.bots and (c.get("last_message") or {}).get("id")
        }
        if not last_ids:
            return ran
        known = await find_by_ids(store.bot_turns, list(last_ids))
        for message_id in last_ids:
            if message_id in known:
                continue
            message = await store.messages.find_one({"_id": message_id})
            if message is None or message.get("direction") != "in":
                continue
            if message.get("kind") in UNANSWERED_KINDS:
                continue
            log.info(
                "answering a message no bot turn took",
                extra={"message_id": message_id, "conversation_id": message["conversation_id"]},
            )
            async with self._locks.hold(str(message["conversation_id"])):
                await self._turn(message, claim=True)
            ran += 1
        return ran

    # -- one turn ------------------------------------------------------------------------

    async def _turn(self, message: dict[str, Any], *, claim: bool) -> None:
        try:
            await self._run_turn(message, claim=claim)
        except Exception:
            # The turn stays `working`: the sweep takes it up again later.
            log.exception(
                "bot turn failed",
                extra={
                    "message_id": message.get("_id"),
                    "conversation_id": message.get("conversation_id"),
                },
            )

    async def _run_turn(self, message: dict[str, Any], *, claim: bool) -> None:
        store = self.hub.store
        assert store is not None
        message_id = str(message["_id"])
        conversation_id = str(message["conversation_id"])
        conversation = await store.conversations.find_one({"_id": conversation_id})
        if conversation is None:
            return
        bot_id = conversation.get("bot")
        bot = self.bots.get(str(bot_id)) if bot_id else None
        if bot is None:
            return  # people have it (or a bot of another config)
        if claim:
            try:
                await store.bot_turns.insert_one(
                    {
                        "_id": message_id,
                        "conversation_id": conversation_id,
                        "bot": bot.id,
                        "state": "working",
                        "owner": self.hub.instance_id,
                        "at": utcnow(),
                        "actions": None,
                    }
                )
            except DuplicateKeyError:
                return  # another process (or an earlier attempt) has this message
            turn: dict[str, Any] = {"actions": None}
        else:
            turn = await store.bot_turns.find_one({"_id": message_id}) or {"actions": None}

        actions = turn.get("actions")
        if actions is None:
            decision = await self._decide(bot, message, conversation)
            if decision is None:
                await self._finish_turn(message_id, "failed")
                return
            actions = decision.actions
            # The decision is kept before anything is done, so a turn resumed after
            # a crash does the same (its replies are keyed: each is sent once).
            await store.bot_turns.update_one({"_id": message_id}, {"$set": {"actions": actions}})
            await self._keep_state(conversation, decision.state)
        await self._apply(bot.id, message_id, conversation, actions)
        await self._finish_turn(message_id, "done")
        self.answered += 1

    async def _finish_turn(self, message_id: str, outcome: str) -> None:
        store = self.hub.store
        assert store is not None
        await store.bot_turns.update_one(
            {"_id": message_id}, {"$set": {"state": outcome, "done_at": utcnow()}}
        )

    async def _decide(
        self, bot: Bot, message: dict[str, Any], conversation: dict[str, Any]
    ) -> Decision | None:
        """The bot's decision; None when it failed (the conversation then goes to
        people with a `system` message saying why)."""
        store = self.hub.store
        assert store is not None
        conversation_id = str(conversation["_id"])
        contact = await store.contacts.find_one({"_id": conversation.get("contact_id")}) or {}
        kept = await store.bot_states.find_one({"_id": conversation_id})
        state = None
        if (
            kept is not None
            and kept.get("bot") == bot.id
            and kept.get("since") == conversation.get("bot_since")
        ):
            state = kept.get("state")

        async def history(limit: int) -> list[dict[str, Any]]:
            docs = (
                await store.messages.find({"conversation_id": conversation_id})
                .sort([("created_at", -1), ("_id", -1)])
                .limit(limit)
                .to_list()
            )
            return list(reversed(docs))

        ctx = TurnContext(
            bot_id=bot.id,
            message=message,
            conversation=conversation,
            contact=contact,
            state=state,
            now=utcnow(),
            region=self.hub.settings.identity.default_region,
            history=history,
        )
        try:
            return await bot.decide(ctx)
        except (BotFailure, BadAnswer) as error:
            reason = str(error)
        except Exception as error:  # a bug in a bot must not cost the customer an answer
            log.exception("bot raised", extra={"conversation_id": conversation_id, "bot": bot.id})
            reason = f"an error in the bot ({type(error).__name__})"
        log.warning(
            "bot failed; handing the conversation to people",
            extra={"conversation_id": conversation_id, "bot": bot.id, "reason": reason},
        )
        await hand_off(
            self.hub,
            conversation_id,
            reason=f"The bot {bot.id} could not answer: {reason}. Handed to people.",
        )
        await store.bot_states.delete_one({"_id": conversation_id})
        return None

    async def _keep_state(self, conversation: dict[str, Any], state: dict[str, Any] | None) -> None:
        store = self.hub.store
        assert store is not None
        conversation_id = conversation["_id"]
        if state is None:
            await store.bot_states.delete_one({"_id": conversation_id})
            return
        await store.bot_states.update_one(
            {"_id": conversation_id},
            {
                "$set": {
                    "bot": conversation.get("bot"),
                    "since": conversation.get("bot_since"),
                    "state": state,
                    "at": utcnow(),
                }
            },
            upsert=True,
        )

    # -- actions -------------------------------------------------------------------------

    async def _apply(
        self,
        bot_id: str,
        message_id: str,
        conversation: dict[str, Any],
        actions: list[dict[str, Any]],
    ) -> None:
        conversation_id = str(conversation["_id"])
        inbox = self.hub.settings.inbox(str(conversation.get("inbox")))
        channel = inbox.channel if inbox is not None else None
        medium = str(conversation.get("channel"))
        for index, action in enumerate(actions):
            kind = action.get("type")
            try:
                if kind == "reply":
                    text, buttons = rendered_reply(
                        str(action["text"]), list(action.get("buttons") or []), channel, medium
                    )
                    await reply_as_bot(
                        self.hub,
                        conversation_id,
                        bot_id,
                        text=text,
                        buttons=buttons or None,
                        key=f"bot:{message_id}:{index}",
                    )
                elif kind == "set_contact":
                    await self._set_contact(conversation, action)
                elif kind == "add_labels":
                    await self._add_labels(conversation_id, list(action.get("labels") or []))
                elif kind == "handoff":
                    await hand_off(
                        self.hub,
                        conversation_id,
                        reason=action.get("reason") or f"The bot {bot_id} handed over.",
                    )
                    await self._forget(conversation_id)
                elif kind == "resolve":
                    await self._resolve(conversation_id)
                    await self._forget(conversation_id)
            except OutboxError as error:
                log.warning(
                    "bot reply not queued",
                    extra={"conversation_id": conversation_id, "error": str(error)},
                )
            except (contact_service.InvalidContact, contact_service.IdentityTaken) as error:
                log.info(
                    "bot's contact change not made",
                    extra={"conversation_id": conversation_id, "error": str(error)},
                )

    async def _forget(self, conversation_id: str) -> None:
        assert self.hub.store is not None
        await self.hub.store.bot_states.delete_one({"_id": conversation_id})

    async def _set_contact(self, conversation: dict[str, Any], action: dict[str, Any]) -> None:
        store = self.hub.store
        assert store is not None
        contact = await store.contacts.find_one({"_id": conversation.get("contact_id")})
        if contact is None:
            return
        fields: dict[str, Any] = {}
        for name in ("name", "locale", "birthday"):
            if action.get(name) is not None:
                fields[name] = action[name]
        if action.get("attributes"):
            fields["attributes"] = {str(k): str(v) for k, v in action["attributes"].items()}
        if action.get("email"):
            emails = list(contact.get("emails") or [])
            fields["emails"] = [*emails, action["email"]]
        if action.get("phone"):
            phones = list(contact.get("phones") or [])
            fields["phones"] = [*phones, action["phone"]]
        if fields.get("emails") is not None and len(set(fields["emails"])) == len(
            contact.get("emails") or []
        ):
            del fields["emails"]  # already known
        change = contact_service.ContactChange(**fields)
        await contact_service.update(
            store, contact, change, default_region=self.hub.settings.identity.default_region
        )

    async def _add_labels(self, conversation_id: str, labels: list[str]) -> None:
        store, events = self.hub.store, self.hub.events
        assert store is not None and events is not None
        doc = await store.conversations.find_one({"_id": conversation_id})
        if doc is None:
            return
        wanted = list(dict.fromkeys([*(doc.get("labels") or []), *labels]))
        if wanted == list(doc.get("labels") or []):
            return
        await conversations.update(
            store,
            events,
            doc,
            conversations.Change(labels=wanted),
            by=None,
            inboxes_of=_sees_all,
        )

    async def _resolve(self, conversation_id: str) -> None:
        store, events = self.hub.store, self.hub.events
        assert store is not None and events is not None
        # The bot lets go first (only if it still has it), so the event of the change
        # shows `bot` null; the next message the customer writes goes to the bot
        # again, afresh.
        doc = await store.conversations.find_one_and_update(
            {"_id": conversation_id, "bot": {"$ne": None}},
            {"$set": {"bot": None}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return
        await conversations.update(
            store,
            events,
            doc,
            conversations.Change(status="resolved"),
            by=None,
            inboxes_of=_sees_all,
        )


async def _sees_all(_agent: dict[str, Any]) -> frozenset[str] | None:
    return None
