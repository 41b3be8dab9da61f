"""The one function every channel ends in: dedupe, resolve, store, publish.

Concurrent webhooks are written together (group commit): while one batch is
being written the next one gathers, so under load a handful of store round trips
carries many messages, and when idle a message is written at once.

Order of writes for a batch, and why:
1. the messages, in one `insert_many` whose `_id` is derived from inbox and
   provider id: a provider's retry is refused by `_id` and reported as duplicate.
   Beside it, the conversations of the senders this process has not seen are
   read, with their identities (each conversation's `_id` is derived from inbox,
   medium and identity, so both are `_id` probes, one read each for the batch);
2. for new senders, their contacts and identities are created (one insert per
   collection for the batch; the identity's `_id` decides between two
   processes) and their conversations prepared, not yet written;
3. the conversations' summaries (last message, unread, last inbound time,
   reopened), one set of updates per conversation however many messages it got;
   a new sender's conversation is inserted with its summary instead (one insert
   for the batch; of two processes opening it at once one inserts, the other
   updates what it inserted);
4. one event document for the whole batch.
Only after all of them does a webhook get its answer; any store error before
that answers 5xx, so the provider retries and nothing acknowledged is lost.
A message is stored before its sender's contact exists: it names its
conversation, not its contact, and the retry of a batch that failed after it
was stored brings the conversation up to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from bson.errors import BSONError
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from hub.metrics import Metrics
from hub.model import Event, IdentityRef, InboundEvent, utcnow
from hub.ports import BotHook, IngestResult, NoBot, StoreUnavailable, UnstorableEvent
from hub.services.contacts import identity_owners, name_from_channel, resolve_many
from hub.services.events import Events
from hub.services.messages import inbound_message_doc
from hub.shapes import conversation_view, message_view
from hub.store import Store, derived_id, find_by_ids, identity_id, insert_new, together

log = logging.getLogger("hub.ingest")


def message_id_for(inbox: str, provider_id: str) -> str:
    return derived_id("msg", inbox, provider_id)


def conversation_id_for(inbox: str, medium: str, identity_key: str) -> str:
    return derived_id("conv", inbox, medium, identity_key)


# What encoding a document for the store raises when a value cannot be held
# (an integer over 8 bytes, a lone surrogate, a key with NUL, a bad type).
UNSTORABLE = (BSONError, OverflowError, UnicodeEncodeError)


def _store_failed(error: BaseException) -> bool:
    """Whether the store (or the way to it) failed, not what was given to it."""
    return isinstance(error, (PyMongoError, OSError))


def new_conversation_doc(
    conv_id: str,
    inbox: str,
    medium: str,
    identity: str,
    contact_id: str,
    now: Any,
    bot: str | None = None,
) -> dict[str, Any]:
    """A conversation as it is opened: open, unassigned, nothing in it yet; or,
    on an inbox with a bot, `pending` with the bot serving it (`bot_since` tells
    the bot's turns apart from those of an earlier time the conversation was its)."""
    return {
        "_id": conv_id,
        "inbox": inbox,
        "channel": medium,
        "contact_id": contact_id,
        "identity": identity,
        "status": "pending" if bot else "open",
        "bot": bot,
        "bot_since": now if bot else None,
        "bot_state": None,  # the bot's own (bots.runtime), e.g. the flow's step
        "assignee_id": None,
        "labels": [],
        "unread": 0,
        "last_message": None,
        "last_activity_at": now,
        "last_inbound_at": None,
        "snooze_until": None,
        # Every field an inbound summary sets is here from the start: the store's
        # quick update path applies only to fields a document already has.
        "resolved_at": None,
        "created_at": now,
        # How many inbound messages the summary has taken in (counted into
        # `unread`), to tell a retry whose summary was lost from one whose was
        # not. `counts_inbound` says the count was kept from the start: one opened
        # by an earlier version gets `inbound` from its next summary on, short.
        "inbound": 0,
        "counts_inbound": True,
    }


def opened_with_summary(doc: dict[str, Any], last: dict[str, Any], added: int) -> dict[str, Any]:
    """A new conversation (`new_conversation_doc`) as its first `added` inbound
    messages, `last` the newest, leave it: what the summary updates of a stored
    one would make of it, so it is opened with them in one insert."""
    return {
        **doc,
        **summary_fields(last),
        **email_thread(last),
        "unread": added,
        "inbound": added,
    }


def _before(summary_at: Any, message_at: Any) -> bool:
    """Whether a conversation's last activity is older than a message's time."""
    if summary_at is None:
        return True
    if summary_at.tzinfo is None:
        summary_at = summary_at.replace(tzinfo=UTC)
    if message_at.tzinfo is None:
        message_at = message_at.replace(tzinfo=UTC)
    return bool(summary_at < message_at)


def summary_fields(last: dict[str, Any]) -> dict[str, Any]:
    """What a conversation's summary says of its newest inbound message."""
    return {
        "last_message": {
            "id": last["_id"],
            "text": last["text"],
            "kind": last["kind"],
            "direction": "in",
            "at": last["created_at"],
        },
        "last_activity_at": last["created_at"],
        "last_inbound_at": last["created_at"],
    }


def email_thread(last: dict[str, Any]) -> dict[str, Any]:
    """For an e-mail, what a reply needs to thread in the customer's mail client."""
    email = last.get("email") or {}
    message_id = email.get("message_id")
    if not message_id:
        return {}
    references = [r for r in email.get("references") or [] if r != message_id][-20:]
    return {
        "email_thread": {
            "message_id": message_id,
            "references": [*references, message_id],
            "subject": email.get("subject"),
        }
    }


def conversation_change(
    conversation_id: str, contact_id: str, last: dict[str, Any], added: int
) -> dict[str, Any]:
    """The `conversation.updated` event for new inbound messages: only the fields
    this batch set, in the public shape, plus `unread_added`.

    The batch updates conversations without reading them back (one bulk write),
    so it does not know their assignee, labels or unread total: it leaves them
    out rather than announce values (none, no labels, zero) that are not so.
    """
    view = conversation_view(
        {
            "_id": conversation_id,
            "inbox": last["inbox"],
            "channel": last["channel"],
            "contact_id": contact_id,
            "status": "open",
            "last_message": {"text": last["text"], "direction": "in", "at": last["created_at"]},
            "last_activity_at": last["created_at"],
            "last_inbound_at": last["created_at"],
        }
    )
    for unknown in ("assignee", "labels", "unread", "created_at"):
        del view[unknown]
    view["contact"] = {"id": contact_id}
    view["unread_added"] = added
    return view


class _LRU(OrderedDict[str, str]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_fresh(self, key: str) -> str | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass
class _Pending:
    event: InboundEvent
    future: asyncio.Future[IngestResult]
    enqueued: float


# Messages waiting that let a batch be stored before the last one is finished.
PIPELINE_MIN = 16
# While webhooks arrive often, a smaller batch waits for more until its oldest
# message is this old: at a few hundred messages a second, three commands for
# two messages cost more than the wait. "Often" is a mean gap between arrivals
# under half the wait, the last one included, and the last gap itself shorter
# than the wait; otherwise nothing is likely to join, and the batch goes at once.
LINGER_MIN = 24
LINGER_SECONDS = 0.020
# The weight of the newest gap in the running mean, and the longest gap it
# counts (one long silence must not hide a burst for long).
GAP_WEIGHT = 0.1
GAP_CAP = 0.1


@dataclass(slots=True)
class _Found:
    """A batch after stage one: its messages are stored, and the conversations
    and identities of its senders this process did not know were read."""

    events: list[InboundEvent]
    hinted: list[str | None]  # the conversation the adapter named, per event
    own: list[str]  # the sender's own conversation id, per event
    ids: list[tuple[str, str]]  # (message id, conversation id) per event
    contacts: dict[str, str]  # conversation id -> contact id, of those known so far
    docs: list[dict[str, Any]]  # one per provider message
    first_index: dict[str, int]  # message id -> the first event that carried it
    refused: set[str]  # message ids that were stored already
    looked_up: set[str]  # the conversation ids whose senders' identities were read
    read: dict[str, str]  # identity key -> contact id, of those read that exist

    @property
    def unfinished(self) -> list[str]:
        """The message ids this batch stored."""
        return [d["_id"] for d in self.docs if d["_id"] not in self.refused]


@dataclass(slots=True)
class _InFlight:
    """A batch past stage one: `resolved` once its stage two is over (at once if
    it had no sender to find or create), `task` its stages two and three."""

    resolved: asyncio.Event
    task: asyncio.Task[None]


@dataclass(slots=True)
class _Stored:
    """A batch after stage two: its messages stored, its senders resolved."""

    events: list[InboundEvent]
    ids: list[tuple[str, str]]  # (message id, conversation id) per event
    contacts: dict[str, str]  # conversation id -> contact id
    docs: list[dict[str, Any]]  # one per provider message
    first_index: dict[str, int]  # message id -> the first event that carried it
    refused: set[str]  # message ids that were stored already
    # Conversations of new senders, prepared but not in the store yet: this
    # batch's own, and those an earlier batch still finishing prepared (its
    # second stage, run before this one's, opens them, or leaves them to this).
    creating: dict[str, dict[str, Any]]


class Ingestor:
    def __init__(
        self,
        store: Store,
        events: Events,
        metrics: Metrics,
        *,
        bot: BotHook | None = None,
        max_batch: int = 256,
        bot_inboxes: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.metrics = metrics
        self.bot = bot or NoBot()
        # inbox -> the bot that serves its new (and resolved, written to again)
        # conversations; calls are for people.
        self.bot_inboxes = dict(bot_inboxes or {})
        self.max_batch = max_batch
        # conversation id -> contact id, for conversations known to exist.
        self._conversations = _LRU(100_000)
        # conversation id -> its document, for the conversations of new senders
        # whose messages are stored and which a batch's second stage is to open
        # (with their summary, in one insert); gone once that stage is over.
        self._opening: dict[str, dict[str, Any]] = {}
        # Whether the last conversations read had one missing: new senders come
        # in runs (an advert, a campaign's replies), so the next batch's
        # identities are then read beside its conversations, saving its second
        # stage a store turn; known senders, whose conversations are found,
        # are not worth the read.
        self._new_senders_lately = False
        # Message ids handed to the store by this process whose batch is not
        # finished: stored, or about to be, but not in their summaries yet.
        self._unfinished: Counter[str] = Counter()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._lingering = False
        # Seconds between arrivals (calls of ingest): the last, and a running mean.
        # The first arrival follows a silence as long as the process has run.
        self._last_arrival = float("-inf")
        self._last_gap = float("inf")
        self._mean_gap = GAP_CAP
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._bot_tasks: set[asyncio.Task[None]] = set()
        # Consumes stop and start words before the bot (hub.services.optout.OptOut).
        self.opt_out: Callable[[dict[str, Any]], Awaitable[bool]] | None = None
        # A merge (here or in another hub process) moves conversations to another
        # contact: what this process remembers of them is then stale.
        events.bus.listen("contact.merged", lambda _event: self.forget_conversations())

    # -- public ------------------------------------------------------------------

    async def ingest(self, events: Sequence[InboundEvent]) -> list[IngestResult]:
        """Store `events` durably and return once they are; raise StoreUnavailable
        (answer 5xx) if the store could not take them."""
        if self._closing:
            raise StoreUnavailable("the hub is shutting down")
        if self._writer is None:
            raise RuntimeError("Ingestor.start() was not called")
        if not events:
            return []
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        self._last_gap = now - self._last_arrival
        self._mean_gap += GAP_WEIGHT * (min(self._last_gap, GAP_CAP) - self._mean_gap)
        self._last_arrival = now
        items = [_Pending(e, loop.create_future(), now) for e in events]
        self._pending.extend(items)
        # A lingering writer is woken only when its batch is big enough.
        if not self._lingering or len(self._pending) >= self._linger_min:
            self._wake.set()
        if len(items) == 1:  # a webhook carries one message, nearly always
            return [await items[0].future]
        return list(await asyncio.gather(*(i.future for i in items)))

    @property
    def _linger_min(self) -> int:
        return min(LINGER_MIN, self.max_batch)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")

    async def stop(self) -> None:
        """Finish what was handed over, then stop; bot calls are awaited."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._bot_tasks:
            await asyncio.gather(*self._bot_tasks, return_exceptions=True)

    # -- the writer --------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Group commit in three stages, one batch in each at a time.

        Stage one stores a batch's messages and reads the conversations of
        senders this process does not know (and their identities, while new
        senders are coming); stage two creates the contacts of new senders and
        prepares their conversations; stage three updates (or opens) the
        conversations, publishes the events and answers the waiting webhooks.
        Under load (PIPELINE_MIN messages or more
        waiting), the next batch is stored while the last ones are in stages
        two and three, so the store is not left idle while this process turns
        a reply into its next command: a batch of new senders has three
        batches in the store at once, one of known senders two (its stage two
        has nothing to do). With fewer waiting, the next batch waits for the
        last one and grows meanwhile: a few commands per batch cost less than
        per message. For the same reason, while messages arrive often, a batch
        of fewer than LINGER_MIN messages waits for more until its first
        message is LINGER_SECONDS old. Stages two and three run one batch at a
        time, in order: a batch's new senders are found by the next ones, and
        summaries and events follow the order messages were stored.
        """
        # Batches past stage one whose stage three is not over, oldest first;
        # each one's stage three waits for the one before.
        flight: list[_InFlight] = []
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                flight = [f for f in flight if not f.task.done()]
                if flight and len(self._pending) < PIPELINE_MIN:
                    await self._land(flight)
                # Three batches at most: a third only while the last is in stage two.
                while len(flight) >= 3 or (len(flight) == 2 and flight[-1].resolved.is_set()):
                    await self._land(flight[:1])
                    del flight[0]
                await self._linger()
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    found = await self._store_messages([p.event for p in batch])
                except Exception as error:
                    if len(batch) == 1 or _store_failed(error):
                        self._fail(batch, error)
                        continue
                    # Something in the batch cannot be written (one poisoned event):
                    # write each alone, so it costs no other customer's message.
                    await self._land(flight)
                    for item in batch:
                        await self._write_alone(item)
                    continue
                previous = flight[-1] if flight else None
                resolved = asyncio.Event()
                if not self._has_senders_to_resolve(found):
                    resolved.set()  # stage two has nothing to do
                task = asyncio.create_task(
                    self._resolve_and_finish(batch, found, previous, resolved)
                )
                flight.append(_InFlight(resolved, task))
            if self._closing and not self._pending:
                await self._land(flight)
                return

    @staticmethod
    async def _land(flight: list[_InFlight]) -> None:
        """Wait until these batches are finished (each waits for the one before)."""
        if flight:
            await flight[-1].task

    def _has_senders_to_resolve(self, found: _Found) -> bool:
        """Whether stage two has a conversation to look for (one not known now)."""
        return any(
            hint is None and self._conversations.get(conv_id) is None
            for hint, conv_id in zip(found.hinted, found.own, strict=True)
        )

    async def _resolve_and_finish(
        self,
        batch: list[_Pending],
        found: _Found,
        previous: _InFlight | None,
        resolved: asyncio.Event,
    ) -> None:
        """Stages two and three of a batch, each after the batch before's."""
        try:
            if previous is not None:
                await previous.resolved.wait()
            try:
                stored = await self._resolve(found)
            except Exception as error:
                if previous is not None:
                    await previous.task
                if len(batch) == 1 or _store_failed(error):
                    self._fail(batch, error)
                    return
                for item in batch:  # as a poisoned batch in stage one
                    await self._write_alone(item)
                return
        finally:
            resolved.set()
        if previous is not None:
            await previous.task
        await self._finish(batch, stored)

    async def _linger(self) -> None:
        """While messages arrive often and fewer than LINGER_MIN wait (or a full
        batch, if that is less), wait until the oldest of them is LINGER_SECONDS
        old or that many wait."""
        if (
            len(self._pending) >= self._linger_min
            or self._mean_gap * 2 > LINGER_SECONDS
            or self._last_gap >= LINGER_SECONDS
        ):
            return
        # Enqueue times are perf_counter(); the loop's clock is monotonic.
        left = self._pending[0].enqueued + LINGER_SECONDS - time.perf_counter()
        if left <= 0 or self._closing:
            return
        self._lingering = True
        self._wake.clear()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
        finally:
            self._lingering = False

    async def _finish(self, batch: list[_Pending], stored: _Stored) -> None:
        try:
            results = await self._finish_batch(stored)
        except Exception as error:
            self._fail(batch, error)
            return
        finally:
            self._release(d["_id"] for d in stored.docs if d["_id"] not in stored.refused)
            # Opened now (and known), or left to the next batch that needs them.
            for conv_id, doc in stored.creating.items():
                if self._opening.get(conv_id) is doc:
                    del self._opening[conv_id]
        done = time.perf_counter()
        self.metrics.ingest_batch.observe(len(batch))
        for item, result in zip(batch, results, strict=True):
            self.metrics.ingest_seconds.observe(done - item.enqueued)
            if not item.future.done():
                item.future.set_result(result)

    async def _write_alone(self, item: _Pending) -> None:
        """Every stage for one event of a batch that could not be written whole."""
        try:
            stored = await self._resolve(await self._store_messages([item.event]))
        except Exception as error:
            self._fail([item], error)
            return
        await self._finish([item], stored)

    def _fail(self, batch: list[_Pending], error: Exception) -> None:
        if _store_failed(error):
            log.error("ingest write failed", extra={"error": str(error), "batch": len(batch)})
            error = StoreUnavailable(f"store unavailable: {type(error).__name__}")
        elif isinstance(error, UNSTORABLE):
            # The edge lets nothing through that the store cannot hold; should
            # something still be, it is this event's alone, and retrying it cannot help.
            log.warning(
                "event refused: the store cannot hold it",
                extra={"error": f"{type(error).__name__}: {error}"[:300], "batch": len(batch)},
            )
            error = UnstorableEvent(f"the event cannot be stored: {type(error).__name__}")
        else:
            log.exception("ingest failed", exc_info=error)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def open_conversations(
        self, wanted: dict[str, tuple[str, str, IdentityRef]]
    ) -> dict[str, str]:
        """Find or open many conversations at once (conversation id -> its inbox,
        medium and identity), for messages the hub starts in bulk (a campaign's);
        their contact ids."""
        return await self._open_conversations(wanted)

    async def open_conversation(self, inbox: str, medium: str, ref: IdentityRef) -> tuple[str, str]:
        """Find or open the conversation of `ref` on `inbox` and `medium`; return
        its id and its contact's id (for messages the hub starts, not the customer)."""
        conv_id = conversation_id_for(inbox, medium, identity_id(ref.kind, ref.value))
        return conv_id, await self._ensure_conversation(inbox, medium, ref, conv_id)

    async def _ensure_conversation(
        self, inbox: str, medium: str, sender: IdentityRef, conv_id: str
    ) -> str:
        """Find or open the sender's conversation on this inbox and channel."""
        known = self._conversations.get_fresh(conv_id)
        if known is not None:
            return known
        opened = await self._open_conversations({conv_id: (inbox, medium, sender)})
        return opened[conv_id]

    async def _open_conversations(
        self, wanted: dict[str, tuple[str, str, IdentityRef]]
    ) -> dict[str, str]:
        """Find or open many conversations at once (conversation id -> its inbox,
        medium and sender); their contact ids, remembered in the process.

        One read finds those that exist; the senders of the others are resolved
        together (new contacts created in one write per collection) and their
        conversations inserted in one command. A conversation another process
        opened first (its `_id` is derived) is read back instead.
        """
        opened, prepared = await self._find_or_prepare(wanted)
        docs = list(prepared.values())
        taken = await insert_new(self.store.conversations, docs)
        for doc in docs:
            if doc["_id"] not in taken:
                opened[doc["_id"]] = doc["contact_id"]
        if taken:
            opened.update(await self._contacts_of(taken))
        for conv_id, contact_id in opened.items():
            self._conversations.put(conv_id, contact_id)
        return opened

    async def _contacts_of(self, conversation_ids: Iterable[str]) -> dict[str, str]:
        """The contact of each of these (stored) conversations, read in one command."""
        found = await find_by_ids(
            self.store.conversations, list(conversation_ids), {"contact_id": 1}
        )
        return {conv_id: str(doc["contact_id"]) for conv_id, doc in found.items()}

    async def _find_or_prepare(
        self, wanted: dict[str, tuple[str, str, IdentityRef]]
    ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        """Of many conversations (conversation id -> its inbox, medium and sender):
        the contact of each that exists (remembered in the process), and the
        document of each that does not, not inserted, its sender's contact found
        or created (`_look_up`, then `_prepare`)."""
        found, read = await self._look_up(wanted, senders=True)
        missing = {c: spec for c, spec in wanted.items() if c not in found}
        return found, await self._prepare(missing, read)

    async def _look_up(
        self, wanted: Mapping[str, tuple[str, str, IdentityRef]], *, senders: bool
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Read these conversations (conversation id -> its inbox, medium and
        sender) and, with `senders`, their senders' identities, at once, by
        `_id`: the contact of each conversation that exists (remembered in the
        process), and of each identity that exists (by key)."""
        if not wanted:
            return {}, {}
        read: dict[str, str] = {}
        if not senders:
            found = await self._contacts_of(wanted)
        else:
            keys = {identity_id(sender.kind, sender.value) for _, _, sender in wanted.values()}
            found, read = await together(
                self._contacts_of(wanted), identity_owners(self.store, keys)
            )
        for conv_id, contact_id in found.items():
            self._conversations.put(conv_id, contact_id)
        return found, read

    async def _prepare(
        self,
        missing: Mapping[str, tuple[str, str, IdentityRef]],
        read: Mapping[str, str] | None,
    ) -> dict[str, dict[str, Any]]:
        """The document of each of these conversations, which do not exist, not
        inserted, its sender's contact found or created: the new contacts and
        identities are written in one command each (`resolve_many`; `read` is
        what `_look_up` read of their identities, or None to read them), and a
        profile name given to a contact known before is set in one more
        (`name_from_channel`)."""
        prepared: dict[str, dict[str, Any]] = {}
        if not missing:
            return prepared
        created: set[str] = set()
        owners = await resolve_many(
            self.store, [spec[2] for spec in missing.values()], created=created, read=read
        )
        now = utcnow()
        named: dict[str, str] = {}
        for conv_id, (inbox, medium, sender) in missing.items():
            key = identity_id(sender.kind, sender.value)
            bot = self._bot_for(inbox, medium)
            prepared[conv_id] = new_conversation_doc(
                conv_id, inbox, medium, key, owners[key], now, bot
            )
            # A contact known by another channel (an SMS number) that had no name
            # takes the first profile name a channel gives (WhatsApp's, Telegram's);
            # one created just now has it already.
            if sender.name and key not in created:
                named[owners[key]] = sender.name
        if named:
            await name_from_channel(self.store, named)
        return prepared

    def _bot_for(self, inbox: str, medium: str) -> str | None:
        """The bot that serves the inbox's conversations on `medium`, or None."""
        return None if medium == "voice" else self.bot_inboxes.get(inbox)

    async def _hinted_conversation(
        self, event: InboundEvent, contacts: dict[str, str]
    ) -> str | None:
        """The conversation the adapter named (e-mail threading), if it is one of
        this inbox's; None to use the sender's own."""
        hint = event.conversation_id
        if hint is None:
            return None
        if hint in contacts or self._conversations.get_fresh(hint) is not None:
            return hint
        found = await self.store.conversations.find_one(
            {"_id": hint}, {"contact_id": 1, "inbox": 1}
        )
        if found is None or found.get("inbox") != event.inbox:
            return None
        self._conversations.put(hint, str(found["contact_id"]))
        return hint

    def forget_conversations(self) -> None:
        """Drop the cache of known conversations (after a merge or a deletion)."""
        self._conversations.clear()

    async def _store_messages(self, events: list[InboundEvent]) -> _Found:
        """Stage one: store the messages and, meanwhile, read the conversations
        of the senders this process does not know, and their identities while
        new senders are coming (`_look_up`); the messages already stored are
        left out (refused).

        A message names its conversation, whose id is derived from the inbox,
        the channel and the sender, and not its contact: it is stored without
        waiting for its sender. A message stored whose sender could not then
        be found or created is a message stored whose batch failed, as when
        stage three fails: the provider's retry finds it stored and brings its
        conversation up to it."""
        own = [
            conversation_id_for(e.inbox, e.medium, identity_id(e.sender.kind, e.sender.value))
            for e in events
        ]
        # A conversation the adapter named (e-mail threading) wins over the sender's own.
        contacts: dict[str, str] = {}
        hinted = [
            await self._hinted_conversation(event, contacts) if event.conversation_id else None
            for event in events
        ]
        ids = [
            (message_id_for(event.inbox, event.provider_id), hint or conv_id)
            for event, hint, conv_id in zip(events, hinted, own, strict=True)
        ]
        # One document per provider message; a repeat inside the batch is a duplicate.
        docs: list[dict[str, Any]] = []
        first_index: dict[str, int] = {}
        for index, (event, (msg_id, conv_id)) in enumerate(zip(events, ids, strict=True)):
            if msg_id not in first_index:
                first_index[msg_id] = index
                docs.append(inbound_message_doc(event, msg_id, conv_id))
        # The senders' own conversations neither known nor being opened by an
        # earlier batch are read, with their identities.
        wanted: dict[str, tuple[str, str, IdentityRef]] = {}
        for event, hint, conv_id in zip(events, hinted, own, strict=True):
            if (
                hint is None
                and self._conversations.get(conv_id) is None
                and conv_id not in self._opening
            ):
                wanted.setdefault(conv_id, (event.inbox, event.medium, event.sender))

        ids_sent = [d["_id"] for d in docs]
        senders = self._new_senders_lately
        self._unfinished.update(ids_sent)  # before the insert: it may land before its answer
        try:
            taken, (found, read) = await together(
                insert_new(self.store.messages, docs), self._look_up(wanted, senders=senders)
            )
        except BaseException:
            self._release(ids_sent)
            raise
        if wanted:
            self._new_senders_lately = len(found) < len(wanted)
        refused = {str(i) for i in taken}
        self._release(refused)
        looked_up = set(wanted) if senders else set()
        return _Found(
            events, hinted, own, ids, contacts, docs, first_index, refused, looked_up, read
        )

    async def _resolve(self, found: _Found) -> _Stored:
        """Stage two: the contact of every event's conversation. A conversation
        neither known nor being opened by an earlier batch (which stage three
        of that batch, run before this one's, opens, or leaves to this one) is
        prepared, not inserted, its sender's contact found or created; stage
        three opens it, with its summary in the same insert. Run one batch at a
        time, in order: a batch's new senders are found by the next ones."""
        try:
            events, hinted, own, contacts = found.events, found.hinted, found.own, found.contacts
            creating: dict[str, dict[str, Any]] = {}
            missing: dict[str, tuple[str, str, IdentityRef]] = {}
            for event, hint, conv_id in zip(events, hinted, own, strict=True):
                if hint is not None or conv_id in creating or conv_id in missing:
                    continue
                if self._conversations.get_fresh(conv_id) is None:
                    opening = self._opening.get(conv_id)
                    if opening is not None:
                        creating[conv_id] = opening
                    else:
                        missing[conv_id] = (event.inbox, event.medium, event.sender)
            # Identities stage one read are not read again. One a batch before
            # this one created since is found by its identity's insert, which
            # then loses (`resolve_many`): one contact still.
            read = found.read if found.looked_up.issuperset(missing) else None
            prepared = await self._prepare(missing, read)
            creating.update(prepared)
            for event, hint, sender_conv_id in zip(events, hinted, own, strict=True):
                conv_id = hint or sender_conv_id
                if conv_id not in contacts:
                    contact_id = (
                        creating[conv_id]["contact_id"]
                        if conv_id in creating
                        else self._conversations.get_fresh(conv_id)
                    )
                    if contact_id is None:  # forgotten meanwhile (a merge): look again
                        contact_id = await self._ensure_conversation(
                            event.inbox, event.medium, event.sender, conv_id
                        )
                    contacts[conv_id] = contact_id
        except BaseException:
            self._release(found.unfinished)
            raise
        # The next batches that write to them leave their opening to this one.
        for conv_id, doc in creating.items():
            self._opening.setdefault(conv_id, doc)
        return _Stored(
            events, found.ids, contacts, found.docs, found.first_index, found.refused, creating
        )

    def _release(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self._unfinished[message_id] -= 1
            if self._unfinished[message_id] <= 0:
                del self._unfinished[message_id]

    def _summary_updates(self, conv_id: str, last: dict[str, Any], added: int) -> list[UpdateOne]:
        """The updates that bring a stored conversation's summary up to `last`,
        the newest of `added` new inbound messages (none of them read first)."""
        updates = []
        new_summary: dict[str, Any] = {
            "status": "open",
            "snooze_until": None,
            "resolved_at": None,
            **summary_fields(last),
            **email_thread(last),
        }
        bot = self._bot_for(last["inbox"], last["channel"])
        if bot is not None:
            # On a bot's inbox the status depends on who has the conversation:
            # the bot's stays pending, people's open; a resolved one goes back
            # to the bot (conditional updates: nothing is read first).
            del new_summary["status"]
            back_to_bot = {"status": "pending", "bot": bot, "bot_since": last["created_at"]}
            updates.append(UpdateOne({"_id": conv_id, "status": "resolved"}, {"$set": back_to_bot}))
            updates.append(
                UpdateOne({"_id": conv_id, "status": "snoozed"}, {"$set": {"status": "open"}})
            )
        # The last message only moves forward: an inbound message older than
        # the inbound one shown (a provider's late retry, in a later batch)
        # leaves it shown. The provider's times are compared with each other
        # only (never with the hub's clock, which stamps replies); the same
        # whole second counts as later, as it arrived later.
        shown = {k: new_summary.pop(k) for k in ("last_message", "last_activity_at")}
        later = {"$lt": last["created_at"] + timedelta(seconds=1)}
        moves = [{"last_message.direction": {"$ne": "in"}}, {"last_activity_at": later}]
        updates.append(UpdateOne({"_id": conv_id, "$or": moves}, {"$set": shown}))
        updates.append(
            UpdateOne(
                {"_id": conv_id},
                {"$set": new_summary, "$inc": {"unread": added, "inbound": added}},
            )
        )
        return updates

    async def _open_prepared(
        self, docs: list[dict[str, Any]], contacts: dict[str, str]
    ) -> set[str]:
        """Insert prepared conversations (one command); those another process (or
        an agent's reply) opened first are left as they are, and `contacts` takes
        their contact as stored. Each is remembered as known; the ids taken."""
        taken = {str(i) for i in await insert_new(self.store.conversations, docs)}
        if taken:
            contacts.update(await self._contacts_of(taken))
        for doc in docs:
            self._conversations.put(doc["_id"], contacts[doc["_id"]])
        return taken

    async def _write_summaries(
        self,
        summarised: dict[str, dict[str, Any]],
        updates: list[UpdateOne],
        per_conv: dict[str, list[dict[str, Any]]],
        newest: dict[str, dict[str, Any]],
        contacts: dict[str, str],
    ) -> None:
        """The new conversations, opened with their summaries (one insert), beside
        the other conversations' summary updates (one bulk write); a new one
        another process opened first is summarised by updates after all."""

        async def open_new() -> set[str]:
            if not summarised:
                return set()
            return await self._open_prepared(list(summarised.values()), contacts)

        async def update_known() -> None:
            if updates:
                await self.store.conversations.bulk_write(updates, ordered=False)

        opening, _ = await together(open_new(), update_known())
        late = [
            update
            for conv_id in opening
            for update in self._summary_updates(conv_id, newest[conv_id], len(per_conv[conv_id]))
        ]
        if late:
            await self.store.conversations.bulk_write(late, ordered=False)

    async def _uncounted(
        self, summary: dict[str, Any], last: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """How many of a conversation's stored inbound messages its summary has not
        taken in, given `last`, the newest of its messages a batch found stored
        already (retried); and the newest message the summary may have to show.

        A summary that shows `last` has it. Otherwise its `inbound` count is held
        against the inbound messages stored (those of batches this process has
        not finished left out): a newer message summarised before the retry came
        (the customer wrote again; retries come late) leaves a lost one behind
        the summary's time, so time alone cannot tell. A conversation opened
        before the count was kept falls back on time: stored after the summary's
        newest inbound message, not taken in."""
        shown = (summary.get("last_message") or {}).get("id")
        if shown == last["_id"]:
            return 0, last
        if not summary.get("counts_inbound") or not isinstance(summary.get("inbound"), int):
            return int(_before(summary.get("last_inbound_at"), last["created_at"])), last
        stored = [
            doc
            async for doc in self.store.messages.find(
                {"conversation_id": summary["_id"], "direction": "in"}, {"created_at": 1}
            )
            if doc["_id"] not in self._unfinished
        ]
        missed = len(stored) - summary["inbound"]
        newest = max(stored, key=lambda d: d["created_at"], default=last)
        if missed > 0 and _before(last["created_at"], newest["created_at"]):
            last = await self.store.messages.find_one({"_id": newest["_id"]}) or last
        return max(missed, 0), last

    async def _finish_batch(self, stored: _Stored) -> list[IngestResult]:
        """Stage two: bring each conversation's summary up to its newest new
        message, publish the events, hand the messages to the bot; the results."""
        events, ids, contacts, first_index, refused = (
            stored.events,
            stored.ids,
            stored.contacts,
            stored.first_index,
            stored.refused,
        )
        new_docs = [d for d in stored.docs if d["_id"] not in refused]

        # One summary update per conversation, from its newest new message (by the
        # provider's time: a batch may hold them out of order).
        per_conv: dict[str, list[dict[str, Any]]] = {}
        for doc in new_docs:
            per_conv.setdefault(doc["conversation_id"], []).append(doc)
        newest = {
            conv_id: max(conv_docs, key=lambda d: (d["created_at"], d.get("seq") or 0))
            for conv_id, conv_docs in per_conv.items()
        }
        # New senders' conversations are opened here, each with its summary in
        # the insert (no update to follow), unless this batch also retries one of
        # its messages: those are opened as they are first, before the retries are
        # counted against them, and summarised like any other.
        creating = {
            conv_id: doc
            for conv_id, doc in stored.creating.items()
            if self._conversations.get_fresh(conv_id) is None  # opened meanwhile
        }
        retried = {conv_id for msg_id, conv_id in ids if msg_id in refused}
        summarised = {
            conv_id: opened_with_summary(doc, newest[conv_id], len(per_conv[conv_id]))
            for conv_id, doc in creating.items()
            if conv_id in per_conv and conv_id not in retried
        }
        bare = [doc for conv_id, doc in creating.items() if conv_id not in summarised]
        if bare:
            await self._open_prepared(bare, contacts)
        updates = [
            update
            for conv_id, conv_docs in per_conv.items()
            if conv_id not in summarised
            for update in self._summary_updates(conv_id, newest[conv_id], len(conv_docs))
        ]
        # A retry of a message already stored: if the attempt that stored it failed
        # before updating its conversation (the store went away in between, so the
        # provider got a 5xx and retried), bring the summary up to it now, counting
        # every stored message it missed (`_uncounted`); on an ordinary retry
        # nothing changes. The stored copy is read (duplicates are rare; they cost
        # this query) because its time, not the retry's, is what counts.
        repaired: dict[str, dict[str, Any]] = {}
        if refused:
            for doc in (await find_by_ids(self.store.messages, sorted(refused))).values():
                conv_id = doc["conversation_id"]
                if conv_id not in repaired or doc["created_at"] > repaired[conv_id]["created_at"]:
                    repaired[conv_id] = doc
            summaries = await find_by_ids(self.store.conversations, list(repaired))
            for conv_id, last in repaired.items():
                summary = summaries.get(conv_id)
                if summary is None:
                    continue
                missed, last = await self._uncounted(summary, last)
                if not missed:
                    continue
                # The newest message shown stays shown: a reply written after the
                # lost message, a newer inbound one, or this batch's own newer
                # ones, keep their place; the lost one is then only counted.
                fields: dict[str, Any] = {}
                if conv_id in per_conv or not _before(
                    summary.get("last_inbound_at"), last["created_at"]
                ):
                    pass
                elif summary.get("last_message") is None or _before(
                    summary.get("last_activity_at"), last["created_at"]
                ):
                    fields = {**summary_fields(last), "status": "open", "snooze_until": None}
                else:
                    fields = {"last_inbound_at": last["created_at"], "status": "open"}
                if self._bot_for(last["inbox"], last["channel"]) is not None:
                    fields.pop("status", None)  # the bot's stays pending (see above)
                change: dict[str, Any] = {"$inc": {"unread": missed, "inbound": missed}}
                if fields:
                    change["$set"] = fields
                updates.append(UpdateOne({"_id": conv_id}, change))
        published: list[Event] = [Event("message.created", message_view(d)) for d in new_docs]
        for conv_id, conv_docs in per_conv.items():
            change_view = conversation_change(
                conv_id, contacts[conv_id], newest[conv_id], len(conv_docs)
            )
            if self._bot_for(newest[conv_id]["inbox"], newest[conv_id]["channel"]) is not None:
                del change_view["status"]  # pending or open: not read here
                del change_view["bot"]
            published.append(Event("conversation.updated", change_view))
        # The summaries and the event document that reports them go to the store
        # together, the summaries first; events are delivered once both are in.
        summary_write = (
            self._write_summaries(summarised, updates, per_conv, newest, contacts)
            if summarised or updates
            else None
        )
        await self.events.publish(published, alongside=summary_write)

        for channel, count in Counter(doc["channel"] for doc in new_docs).items():
            self.metrics.messages_in.labels(channel).inc(count)
        for doc in new_docs:
            task = asyncio.create_task(self._call_bot(doc, contacts.get(doc["conversation_id"])))
            self._bot_tasks.add(task)
            task.add_done_callback(self._bot_tasks.discard)

        results = []
        for index, (event, (msg_id, conv_id)) in enumerate(zip(events, ids, strict=True)):
            duplicate = msg_id in refused or first_index[msg_id] != index
            if duplicate:
                self.metrics.duplicates_in.labels(event.medium).inc()
            results.append(IngestResult(msg_id, conv_id, contacts[conv_id], duplicate))
        return results

    async def _call_bot(self, doc: dict[str, Any], contact_id: str | None = None) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                if self.opt_out is not None and await self.opt_out(doc):
                    return  # a stop or start word: answered by the opt-out, not the bot
                await self.bot.on_inbound(
                    doc, {"_id": doc["conversation_id"], "contact_id": contact_id}
                )
            except Exception:
                log.exception("bot hook failed", extra={"message_id": doc["_id"]})
