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
from collections.abc import Awaitable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from bots.actions import BadAnswer, BotFailure, Decision, TurnContext
from hub.model import ButtonReply, utcnow
from hub.services import contacts as contact_service
from hub.services import conversations
from hub.services.handoff import hand_off, still_bot, withdraw_bot_replies
from hub.services.outbox import Draft, OutboxError, enqueue_many
from hub.store import VALUES_PER_IN, derived_id, find_by_ids, insert_new

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.bots")

# Kinds of message a bot is not given (a call is for people).
UNANSWERED_KINDS = ("call", "voicemail", "event", "note")
# Telegram's callback data holds at most 64 bytes; WhatsApp's reply-button titles
# 20 characters and a list's rows 24, at most 10 choices.
TELEGRAM_PAYLOAD_BYTES = 64
FLUSH_EVERY = 0.2  # seconds between writes marking finished turns done
BATCH_LINGER = 0.005  # seconds a batch of turns waits for more before it runs
BATCH_MAX = 200  # turns in one batch at most
WHATSAPP_MAX_CHOICES = 10


class Bot(Protocol):
    """One configured bot: answers one customer message with a Decision. A bot
    whose `decide` only computes, calling nothing outside (a flow), may say so
    with a `pure = True` attribute: it is then asked before its turn is claimed."""

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


# A claimed turn: its message, conversation, bot and `bot_turns` document.
type Turn = tuple[dict[str, Any], dict[str, Any], Bot, dict[str, Any]]


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
        self._finished: list[tuple[str, str]] = []  # turns done, not yet marked so
        # inbox -> its bot's id (a conversation's own `bot` decides; this routes).
        self.inbox_bots = {i: b.id for b in hub.settings.bots for i in b.inboxes}
        self._batch_queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._contact_hints: dict[str, Any] = {}  # message id -> its contact, as ingest knew it
        self._batch_wake = asyncio.Event()
        self._busy: set[str] = set()  # conversations with a batch running
        self._stopping = False
        self._batcher: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Decided turns waiting to be carried out, from every batch: carried out
        # together (`_carry_loop`), one group at a time.
        self._decided: list[tuple[Turn, bool, asyncio.Future[None]]] = []
        self._decided_wake = asyncio.Event()
        self._carrier: asyncio.Task[None] | None = None
        self.answered = 0  # turns this process finished (the benchmark reads it)

    # -- the hook ------------------------------------------------------------------------

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        if message.get("kind") in UNANSWERED_KINDS or message.get("direction") != "in":
            return
        if str(message.get("inbox")) not in self.inbox_bots or self._stopping:
            return  # no bot on this inbox (or stopping: the next start's sweep answers)
        # Turns go in batches (a few store commands for many), the turns of one
        # conversation one after another, in the order ingest handed them over.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if conversation.get("contact_id"):
            # Ingest says whose it is: the contact is read beside the conversation.
            self._contact_hints[str(message["_id"])] = conversation["contact_id"]
        self._batch_queue.append((message, done))
        self._batch_wake.set()
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._batch_loop(), name="bot-batches")
        await done

    # -- the sweep -----------------------------------------------------------------------

    def start(self) -> None:
        if self.bots and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="bot-sweep")

    async def stop(self) -> None:
        self._stopping = True
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        # Not started: left for the sweep of the next start (or another process).
        for _, done in self._batch_queue:
            if not done.done():
                done.set_result(None)
        self._batch_queue = []
        self._contact_hints.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._turns:
            await asyncio.gather(*self._turns, return_exceptions=True)
        if self._carrier is not None:
            self._carrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._carrier
            self._carrier = None
        await self._flush()

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
                self._done(str(turn["_id"]), "message gone")
                continue
            log.info(
                "resuming an interrupted bot turn",
                extra={"message_id": turn["_id"], "conversation_id": turn.get("conversation_id")},
            )
            if str(message["conversation_id"]) in self._busy:
                continue  # a batch has it now
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
            await self._flush()
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
            if str(message["conversation_id"]) in self._busy:
                continue  # a batch has it now
            async with self._locks.hold(str(message["conversation_id"])):
                await self._turn(message, claim=True)
            ran += 1
        await self._flush()
        return ran

    # -- turns in batches (bots that only compute) ---------------------------------------

    async def _batch_loop(self) -> None:
        """Start a batch of the messages waiting whose conversations have no turn
        running; one message per conversation at a time (the next one's turn
        starts from the state this one's leaves). Batches run side by side: an
        external bot's slow answer holds only its own batch."""
        while True:
            await self._batch_wake.wait()
            self._batch_wake.clear()
            await asyncio.sleep(BATCH_LINGER)  # let the messages stored together gather
            while True:
                batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
                later: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
                seen: set[str] = set()
                for item in self._batch_queue:
                    conversation_id = str(item[0]["conversation_id"])
                    if (
                        conversation_id in seen
                        or conversation_id in self._busy
                        or len(batch) >= BATCH_MAX
                    ):
                        later.append(item)
                    else:
                        seen.add(conversation_id)
                        batch.append(item)
                    seen.add(conversation_id)
                self._batch_queue = later
                if not batch:
                    break
                self._busy |= {str(m["conversation_id"]) for m, _ in batch}
                task = asyncio.create_task(self._batch_task(batch))
                self._turns.add(task)
                task.add_done_callback(self._turns.discard)

    async def _batch_task(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self._run_batch([message for message, _ in batch])
        except Exception:
            # Those turns stay `working` (or unclaimed): the sweep takes them up.
            log.exception("bot batch failed", extra={"messages": len(batch)})
        finally:
            self._busy -= {str(m["conversation_id"]) for m, _ in batch}
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            if self._batch_queue:
                self._batch_wake.set()

    async def _run_batch(self, messages: list[dict[str, Any]]) -> None:
        """The turns of many messages of different conversations in a few commands:
        their conversations and contacts read together, the turns claimed with
        their decisions in one insert, the bots' states kept in one bulk write, the
        replies queued together (`enqueue_many`, keyed as one by one); a turn that
        does more than reply (and hand off) is carried out alone."""
        store, events = self.hub.store, self.hub.events
        assert store is not None and events is not None
        hinted = {self._contact_hints.pop(str(m["_id"]), None) for m in messages} - {None}
        conversations, contacts = await asyncio.gather(
            find_by_ids(store.conversations, [str(m["conversation_id"]) for m in messages]),
            find_by_ids(store.contacts, list(hinted)),
        )
        served = []
        for message in messages:
            conversation = conversations.get(str(message["conversation_id"]))
            bot = self.bots.get(str((conversation or {}).get("bot")))
            if conversation is not None and bot is not None:
                served.append((message, conversation, bot))
        if not served:
            return
        # A contact ingest did not name (a turn the sweep took up), or one the
        # conversation no longer belongs to (contacts merged meanwhile).
        unread = {c.get("contact_id") for _, c, _ in served} - contacts.keys() - hinted
        if unread:
            contacts |= await find_by_ids(store.contacts, list(unread))
        turns: list[tuple[dict[str, Any], dict[str, Any], Bot, dict[str, Any]]] = []
        now = utcnow()
        for message, conversation, bot in served:
            turn: dict[str, Any] = {
                "_id": str(message["_id"]),
                "conversation_id": str(conversation["_id"]),
                "bot": bot.id,
                "state": "working",
                "owner": self.hub.instance_id,
                "at": now,
                "actions": None,
                "next": None,
            }
            if getattr(bot, "pure", False):
                # A bot that only computes (a flow) decides before the turn is
                # claimed: the claim carries the decision, one write for both.
                contact = contacts.get(conversation.get("contact_id")) or {}
                decision = await self._decide_with(bot, message, conversation, contact)
                if decision is None:
                    continue
                turn.update(actions=decision.actions, next=decision.state)
            turns.append((message, conversation, bot, turn))
        if not turns:
            return
        taken = await insert_new(store.bot_turns, [t for *_, t in turns])
        turns = [item for item in turns if item[3]["_id"] not in taken]
        asking = [item for item in turns if item[3]["actions"] is None]
        ready = [item for item in turns if item[3]["actions"] is not None]
        carried: list[Awaitable[None]] = [self._carry(item, asked=False) for item in ready]
        # The others (external bots) are asked side by side; each answer is
        # carried out as it comes in, with whatever else is decided by then, so a
        # slow or failing bot holds up only its own conversation.
        carried += [
            self._ask(item, contacts.get(item[1].get("contact_id")) or {}) for item in asking
        ]
        if carried:
            await asyncio.gather(*carried)

    async def _ask(self, item: Turn, contact: dict[str, Any]) -> None:
        """An external bot's decision for a claimed turn, then carried out."""
        message, conversation, bot, turn = item
        decision = await self._decide_with(bot, message, conversation, contact)
        if decision is None:
            self._done(str(message["_id"]), "failed")
            return
        turn.update(actions=decision.actions, next=decision.state)
        await self._carry(item, asked=True)

    def _carry(self, item: Turn, *, asked: bool) -> asyncio.Future[None]:
        """Hand a decided turn to the carrier; done once it is carried out."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decided.append((item, asked, done))
        self._decided_wake.set()
        if self._carrier is None:
            self._carrier = asyncio.create_task(self._carry_loop(), name="bot-carrier")
        return done

    async def _carry_loop(self) -> None:
        """Carry out the turns decided meanwhile, all together, one group at a time
        (a few store commands for many turns, as ingest's group commit)."""
        while True:
            await self._decided_wake.wait()
            self._decided_wake.clear()
            while self._decided:
                group = self._decided[:BATCH_MAX]
                del self._decided[:BATCH_MAX]
                try:
                    asked = [item for item, was_asked, _ in group if was_asked]
                    await self._carry_out(
                        [item for item, was_asked, _ in group if not was_asked], asked=asked
                    )
                except Exception:
                    # Those turns stay `working`: the sweep takes them up.
                    log.exception("bot turns not carried out", extra={"turns": len(group)})
                finally:
                    for _, _, done in group:
                        if not done.done():
                            done.set_result(None)

    async def _carry_out(self, turns: list[Turn], *, asked: Sequence[Turn] = ()) -> None:
        """Do what the bots decided, for turns of different conversations: their
        states kept with the replies' summaries, replies queued together, then
        handoffs, and a turn that does more alone. `asked`: turns whose decisions
        were just made (an external bot's), kept in their turns first; a
        conversation people took meanwhile gets nothing."""
        store, events = self.hub.store, self.hub.events
        assert store is not None and events is not None
        if asked:
            # The decisions are kept in their turns while the conversations are read
            # again; nothing is done before both are in.
            _, fresh = await asyncio.gather(
                store.bot_turns.bulk_write(
                    [
                        UpdateOne(
                            {"_id": t["_id"]},
                            {"$set": {"actions": t["actions"], "next": t["next"]}},
                        )
                        for *_, t in asked
                    ],
                    ordered=False,
                ),
                find_by_ids(store.conversations, [str(c["_id"]) for _, c, _, _ in asked]),
            )
            for message, conversation, bot, turn in asked:
                if (fresh.get(str(conversation["_id"])) or {}).get("bot") == bot.id:
                    turns.append((message, conversation, bot, turn))
                else:
                    self._done(str(message["_id"]), "done")  # people have it now
            if not turns:
                return
        # Each conversation's bot state, written with its replies' summary.
        states = {
            str(c["_id"]): {"bot_state": self._kept(c, t.get("next"))}
            for _, c, _, t in turns
            if t.get("next") is not None or c.get("bot_state")
        }
        drafts: list[Draft] = []
        alone = []
        handoffs = []
        for message, conversation, bot, turn in turns:
            actions = list(turn["actions"] or [])
            tail = actions[-1:] if actions and actions[-1].get("type") == "handoff" else []
            replies = actions[: len(actions) - len(tail)]
            # Queued together, messages get one time: a turn with several replies
            # queues them one by one, so they are stored and sent in order.
            if len(replies) > 1 or any(a.get("type") != "reply" for a in replies):
                alone.append((message, conversation, bot, actions))
                continue
            drafts += self._drafts(bot.id, str(message["_id"]), conversation, replies)
            if tail:
                handoffs.append((str(conversation["_id"]), tail[0], bot.id))
        alone_ids = {str(c["_id"]) for _, c, _, _ in alone}
        if any(c in alone_ids for c in states):  # kept before the turns done alone
            await store.conversations.bulk_write(
                [UpdateOne({"_id": c}, {"$set": f}) for c, f in states.items() if c in alone_ids],
                ordered=False,
            )
        states = {c: f for c, f in states.items() if c not in alone_ids}
        if drafts or states:
            await enqueue_many(
                store,
                events,
                drafts,
                conversations={str(c["_id"]): c for _, c, _, _ in turns},
                also_set=states,
            )
        if drafts:
            self.hub.wake_dispatcher()
            # Taken over while they were queued: taken back (hub.services.handoff).
            queued = list({d.conversation_id for d in drafts})
            still = await find_by_ids(store.conversations, queued)
            for conversation_id in queued:
                if not (still.get(conversation_id) or {}).get("bot"):
                    await withdraw_bot_replies(self.hub, conversation_id)
        for conversation_id, action, bot_id in handoffs:
            await hand_off(
                self.hub,
                conversation_id,
                reason=action.get("reason") or f"The bot {bot_id} handed over.",
            )
        for message, conversation, bot, actions in alone:
            await self._apply(bot, str(message["_id"]), conversation, actions)
        for message, *_ in turns:
            self._done(str(message["_id"]), "done")
        self.answered += len(turns)

    def _drafts(
        self,
        bot_id: str,
        message_id: str,
        conversation: dict[str, Any],
        replies: list[dict[str, Any]],
    ) -> list[Draft]:
        inbox = self.hub.settings.inbox(str(conversation.get("inbox")))
        channel = inbox.channel if inbox is not None else None
        medium = str(conversation.get("channel"))
        drafts = []
        for index, action in enumerate(replies):
            text, buttons = rendered_reply(
                str(action["text"]), list(action.get("buttons") or []), channel, medium
            )
            conversation_id = str(conversation["_id"])
            drafts.append(
                Draft(
                    conversation_id=conversation_id,
                    text=text,
                    sender={"type": "bot", "id": bot_id},
                    # As `enqueue` keys it: queued once, however often the turn runs.
                    message_id=derived_id("keyed", conversation_id, f"bot:{message_id}:{index}"),
                    buttons=tuple(buttons),
                )
            )
        return drafts

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
        pure = bool(getattr(bot, "pure", False))
        turn: dict[str, Any] = {
            "_id": message_id,
            "conversation_id": conversation_id,
            "bot": bot.id,
            "state": "working",
            "owner": self.hub.instance_id,
            "at": utcnow(),
            "actions": None,
        }
        if not claim:  # resuming a turn a crash interrupted: its decision, if it was made
            turn = await store.bot_turns.find_one({"_id": message_id}) or turn
        decided = turn.get("actions") is not None
        if not decided and pure:
            # A bot that only computes (a flow) decides before the turn is claimed:
            # the claim then carries the decision, one write for both.
            decision = await self._decide(bot, message, conversation)
            if decision is None:
                return
            turn.update(actions=decision.actions, next=decision.state)
            decided = True
        if claim:
            try:
                await store.bot_turns.insert_one(turn)
            except DuplicateKeyError:
                return  # another process (or an earlier attempt) has this message
        if not decided:
            decision = await self._decide(bot, message, conversation)
            if decision is None:
                self._done(message_id, "failed")
                return
            turn.update(actions=decision.actions, next=decision.state)
            # Kept before anything is done, so a turn resumed after a crash does the
            # same (its replies are keyed: each is queued once).
            await store.bot_turns.update_one(
                {"_id": message_id}, {"$set": {"actions": turn["actions"], "next": turn["next"]}}
            )
        await self._keep_state(conversation, turn.get("next"))
        await self._apply(bot, message_id, conversation, list(turn["actions"] or []))
        self._done(message_id, "done")
        self.answered += 1

    def _done(self, message_id: str, outcome: str) -> None:
        """Mark a turn finished; written in batches (`_flush`), a turn left `working`
        by a crash is only taken up again after `stale_after`."""
        self._finished.append((message_id, outcome))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_EVERY)
        await self._flush()

    async def _flush(self) -> None:
        store = self.hub.store
        assert store is not None
        while self._finished:
            batch, self._finished = self._finished[:VALUES_PER_IN], self._finished[VALUES_PER_IN:]
            now = utcnow()
            # One update by `_id` each, in one command: the store's fast path for
            # updates (an `$in` takes its general one).
            try:
                await store.bot_turns.bulk_write(
                    [
                        UpdateOne({"_id": i}, {"$set": {"state": outcome, "done_at": now}})
                        for i, outcome in batch
                    ],
                    ordered=False,
                )
            except PyMongoError as error:
                log.warning("bot turns not marked done", extra={"error": str(error)})

    async def _decide(
        self, bot: Bot, message: dict[str, Any], conversation: dict[str, Any]
    ) -> Decision | None:
        """The bot's decision; None when it failed (the conversation then goes to
        people with a `system` message saying why)."""
        store = self.hub.store
        assert store is not None
        contact = await store.contacts.find_one({"_id": conversation.get("contact_id")}) or {}
        return await self._decide_with(bot, message, conversation, contact)

    async def _decide_with(
        self,
        bot: Bot,
        message: dict[str, Any],
        conversation: dict[str, Any],
        contact: dict[str, Any],
    ) -> Decision | None:
        store = self.hub.store
        assert store is not None
        conversation_id = str(conversation["_id"])
        kept = conversation.get("bot_state") or {}
        state = None
        if kept.get("bot") == bot.id and kept.get("since") == conversation.get("bot_since"):
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
        return None

    async def _keep_state(self, conversation: dict[str, Any], state: dict[str, Any] | None) -> None:
        """The bot's state for the conversation, kept on it (`bot_state`) with the
        bot and the time it took the conversation: a conversation that comes back
        to the bot later (`bot_since` changes) starts afresh."""
        store = self.hub.store
        assert store is not None
        if state is None and not conversation.get("bot_state"):
            return  # nothing kept, nothing to keep (an external bot)
        await store.conversations.update_one(
            {"_id": conversation["_id"]}, {"$set": {"bot_state": self._kept(conversation, state)}}
        )

    @staticmethod
    def _kept(conversation: dict[str, Any], state: dict[str, Any] | None) -> dict[str, Any] | None:
        if state is None:
            return None
        return {"bot": conversation.get("bot"), "since": conversation.get("bot_since"),
                "state": state}  # fmt: skip

    # -- actions -------------------------------------------------------------------------

    async def _apply(
        self,
        bot: Bot,
        message_id: str,
        conversation: dict[str, Any],
        actions: list[dict[str, Any]],
    ) -> None:
        bot_id = bot.id
        # A bot that took its time (an external one) may have lost the conversation
        # meanwhile: its replies are then not even queued.
        checked = bool(getattr(bot, "pure", False))
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
                    if not checked and not await still_bot(self.hub, conversation_id, bot_id):
                        return
                    checked = True
                    await self.hub.reply(
                        conversation_id,
                        text=text,
                        sender={"type": "bot", "id": bot_id},
                        buttons=buttons or None,
                        key=f"bot:{message_id}:{index}",
                    )
                    # Taken over while it was queued: taken back (hub.services.handoff).
                    if not await still_bot(self.hub, conversation_id, bot_id):
                        await withdraw_bot_replies(self.hub, conversation_id)
                        return
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
                elif kind == "resolve":
                    await self._resolve(conversation_id)
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
