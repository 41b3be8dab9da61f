"""The dispatcher: sends what the outbox holds, at each inbox's pace.

It claims queued items with a lease, sends them through the inbox's channel, and
records what the provider said (`hub.services.outbox` holds the queue itself).
An item due within `CLAIM_AHEAD` is claimed before it is due and held in this
process until its `next_attempt_at` (`_hold`): an instant with thousands of
greetings is claimed before it comes, and each leaves at it, never before.
One process at a time sends for an inbox (an inbox lease in `leases`), so the
provider's limit is kept with any number of hub processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DeleteOne, ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from hub.metrics import Metrics
from hub.model import Attachment, ButtonReply, Event, OutboundMessage, StatusUpdate, utcnow
from hub.ports import Channel, PermanentSendError, TransientSendError
from hub.ratelimit import KeyedRateLimiter, RateLimiter, space_together
from hub.services.contacts import opted_out_since, set_opt_out
from hub.services.events import Events
from hub.services.leases import release_leases, take_lease
from hub.services.outbox import (
    EARLY_STATUS_KEEP,
    SETTLED,
    failure_reason,
    provider_key,
    record_statuses,
)
from hub.settings import DispatcherSettings
from hub.shapes import message_view
from hub.store import Store, find_by_ids, new_id

log = logging.getLogger("hub.dispatcher")

# How long an outbox item may wait for the message `enqueue` writes after it, and
# how soon a dispatcher that claimed it too early looks again.
MESSAGE_GRACE = timedelta(seconds=60)
MESSAGE_RECHECK = timedelta(seconds=0.05)
# One claim takes about this many seconds of an inbox's pace (see `_batch_cap`).
CLAIM_HORIZON = 1.0
# How long before its turn an at-most-once send is marked as handed to the provider.
# The mark is a write: at a quarter of a second, a store busy for longer (a
# campaign's next recipients queued, its records followed) held the sends of
# every second back and let them out together after it (the campaigns bench: a
# fifth of each second without a send, then twice the pace, 94.5% of the rate in
# the first 10 s). A hub that dies leaves at most this much of the pace `unknown`
# that had not left yet.
HANDED_LEAD = 1.0
# How far ahead of its `next_attempt_at` an item is claimed, to be held in this
# process until then (see `_hold`). An instant's whole load must be claimed before
# it comes: the embedded store claims about 3,000 items a second on a loaded
# 2-core machine (the 8,334 greetings of the busiest instant of 100,000 contacts
# over 24 zones took 5.2 s at load 4), and a dispatcher in another process than
# the greeting job's first sees them at its next poll (`poll_interval`, 1 s). An
# item is leased from its own `next_attempt_at` on (the lease outlasts the wait).
CLAIM_AHEAD = 8.0
# A held group's opt-out re-check (a greeting's) is read this many seconds before
# its instant, with its messages and conversations if the claim did not read them
# (`_read_before`): at the instant the dispatcher only books, sends and records.
# The re-check reads the contacts whose opt-outs changed since the group's items
# were queued (less OPT_OUT_SLACK, for the queueing's own read of the contact
# and the clocks of several hosts), by an index: one small read however many
# recipients the instant has (reading each recipient's contact cost the store
# about 0.2 ms each, seconds at a busy instant).
READ_LEAD = 1.0
OPT_OUT_SLACK = timedelta(minutes=10)
# The lower bound of the claim's and the recovery's ranges of dates: an item's
# `next_attempt_at` is None while it is claimed, its `lease_until` None while it
# is queued, and a range with no lower bound would walk those too (the held items
# of a busy instant, read one by one at every poll, seconds of the store's time).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
# The documents marking held groups handed (`outbox_handed`) are needed only
# until their items are settled; those left behind by a process that died are
# cleared after this long.
HANDED_KEEP = timedelta(days=1)
# Held items are sent at their instant in chunks of this many, side by side: what
# is still read at the instant (a bot's conversation, anything `_read_before`
# could not read) is read for the next chunks while the first chunk's sends go.
SEND_CHUNK = 100
# The held items of an instant are all handed to the provider before any of their
# outcomes is written (the store's reads for the last ones do not queue behind the
# first ones' records); a chunk waits at most this long for the others.
RECORD_WAIT_MOST = 2.0
# How long this process holds an inbox's sending (`dispatcher.inbox_lease_seconds`,
# 15 s by default), and, as shares of it, how often it renews the lease (every
# fifth: 3 s) and how much of it must be left for it to start a new batch (a
# third: 5 s).
INBOX_LEASE_RENEW_SHARE = 1 / 5
INBOX_LEASE_MARGIN_SHARE = 1 / 3


def outbound_message(
    item: dict[str, Any], message: dict[str, Any], conversation: dict[str, Any]
) -> OutboundMessage:
    """What the adapter is given to send `message` in `conversation`."""
    identity = str(conversation.get("identity", ""))
    thread = conversation.get("email_thread") or {}
    subject = (message.get("email") or {}).get("subject") or thread.get("subject")
    return OutboundMessage(
        id=str(message["_id"]),
        inbox=item["inbox"],
        medium=conversation["channel"],
        conversation_id=str(conversation["_id"]),
        to=identity.split(":", 1)[1] if ":" in identity else identity,
        text=message.get("text"),
        attachments=tuple(Attachment(**a) for a in message.get("attachments") or []),
        subject=subject,
        in_reply_to=thread.get("message_id"),
        references=tuple(thread.get("references") or ()),
        template=message.get("template"),
        buttons=tuple(ButtonReply(**b) for b in message.get("buttons") or []),
        attempt=int(item.get("attempts", 1)),
        last_inbound_at=conversation.get("last_inbound_at"),
    )


def _requeue(
    item_id: Any,
    now: datetime,
    delay: float,
    *,
    last_error: str | None = None,
    uncount: bool = False,
) -> UpdateOne:
    """Put a claimed item back in the queue, due in `delay` seconds; `uncount`
    when it was not attempted (its claim does not count as an attempt)."""
    fields: dict[str, Any] = {
        "state": "queued",
        "next_attempt_at": now + timedelta(seconds=delay),
        "lease_owner": None,
    }
    if last_error is not None:
        fields["last_error"] = last_error
    update: dict[str, Any] = {"$set": fields}
    if uncount:
        update["$inc"] = {"attempts": -1}
    return UpdateOne({"_id": item_id}, update)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _due(item: dict[str, Any]) -> datetime:
    """An item's `next_attempt_at`, aware (UTC)."""
    return _aware(item["next_attempt_at"])


def _handed_key(item: dict[str, Any]) -> str:
    """The `_id` of the document that marks a held group handed to the provider
    (`Dispatcher._mark_held`): the group is one claim's items for one instant."""
    return f"{item.get('claim')}|{_aware(item['held_for']).isoformat()}"


def _release(item: dict[str, Any]) -> UpdateOne:
    """Put back an item claimed ahead and not attempted, due as it was: it is never
    sent before its `next_attempt_at` by whichever process claims it next."""
    return UpdateOne(
        {"_id": item["_id"]},
        {
            "$set": {
                "state": "queued",
                "next_attempt_at": item["next_attempt_at"],
                "lease_owner": None,
            },
            "$inc": {"attempts": -1},
        },
    )


@dataclass
class _Outcome:
    """What became of one claimed item: `queued` again (retry), `deferred` (not
    attempted: its recipient's turn), `released` (claimed ahead, not attempted:
    due as it was), or settled."""

    item: dict[str, Any]
    status: str
    error: str | None = None
    provider_id: str | None = None
    message: dict[str, Any] | None = None
    retry_in: float = 0.0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        events: Events,
        metrics: Metrics,
        adapters: dict[str, Channel],
        settings: DispatcherSettings,
        instance_id: str,
    ) -> None:
        self.store = store
        self.events = events
        self.metrics = metrics
        self.adapters = adapters
        self.settings = settings
        self.instance_id = instance_id
        self.limiters: dict[str, RateLimiter] = {}
        self.recipient_limiters: dict[str, KeyedRateLimiter] = {}
        for inbox, adapter in adapters.items():
            rate = adapter.rate_limit()
            self.limiters[inbox] = RateLimiter(rate.per_second, rate.burst)
            if rate.per_recipient:
                self.recipient_limiters[inbox] = KeyedRateLimiter(rate.per_recipient)
            adapter.share_pacing(self.limiters[inbox], self.recipient_limiters.get(inbox))
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stop_signal = asyncio.Event()
        self._claims = itertools.count()
        self._claiming = asyncio.Lock()
        self._inbox_leases: dict[str, float] = {}  # inbox -> monotonic expiry
        # item id -> its message and conversation, read with its claim.
        self._read_ahead: dict[Any, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}
        # item id -> the contacts whose opt-outs changed since its group was
        # queued, read READ_LEAD before a held item's instant for its re-check.
        self._contact_ahead: dict[Any, dict[Any, dict[str, Any]]] = {}
        # (inbox, recipient) -> the last turn promised to a deferred message.
        self._promised: dict[tuple[str, str], float] = {}
        # inbox -> how many items this process claimed ahead and holds for their
        # instant (`_hold`); bounded by `_held_cap`.
        self._held: dict[str, int] = {}
        self._held_at: Counter[datetime] = Counter()  # instant -> items held for it
        # instant -> its held items not handed to the provider yet, and the signal
        # that they all were (see `_recorded_after`).
        self._unsent: Counter[datetime] = Counter()
        self._all_sent: dict[datetime, asyncio.Event] = {}
        self.inbox_lease = settings.inbox_lease_seconds
        self._leases_renewed = -self.inbox_lease

    def wake(self) -> None:
        """Look for work now (an item was just queued)."""
        self._wake.set()

    def start(self) -> None:
        for number in range(self.settings.workers):
            self._spawn(self._worker(), f"dispatcher-{number}")
        self._spawn(self._housekeeping(), "dispatcher-housekeeping")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float = 10.0) -> None:
        """Let every loop finish the step it is in, then end it.

        A store command is never cancelled half-way: a cancelled command leaves
        the embedded store's write transaction open once the client closes, and
        a send cut between the provider's answer and its recording would be sent
        again. Only a loop still busy after `grace` seconds (a slow provider) is
        cancelled.
        """
        self._stopping = True
        self._stop_signal.set()
        self._wake.set()
        tasks = tuple(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._release_inboxes()

    # -- claiming ----------------------------------------------------------------

    def _batch_cap(self, inbox: str) -> int:
        """How many of an inbox's items one claim takes: about a second of its pace,
        so a lease never holds more than the limiter lets out soon."""
        rate = 1.0 / self.limiters[inbox].interval
        return max(1, min(self.settings.batch, math.ceil(rate * CLAIM_HORIZON)))

    def _held_cap(self, inbox: str) -> int:
        """How many of an inbox's items this process may hold claimed ahead: what
        its pace lets out over the claim-ahead window and a claim's horizon, so
        what is held is sent well within its lease, however slow the pace."""
        rate = 1.0 / self.limiters[inbox].interval
        return max(self._batch_cap(inbox), math.ceil(rate * (CLAIM_AHEAD + CLAIM_HORIZON)))

    async def claim_batch(self, *, read_ahead: bool = False) -> list[dict[str, Any]]:
        """Lease the items that are due, up to each inbox's cap; other dispatchers
        (in this process or another) never get the same item. `read_ahead`: their
        messages and conversations are read with the claim, for a send that
        follows at once (`run_once`); a batch sent later reads them then."""
        # One claim at a time in this process: concurrent ones would all pick the
        # same first items and all but one come back empty-handed.
        async with self._claiming:
            return await self._claim_batch(read_ahead=read_ahead)

    async def _claim_batch(self, *, read_ahead: bool = False) -> list[dict[str, Any]]:
        await self._hold_inboxes()
        now = utcnow()
        lease = timedelta(seconds=self.settings.lease_seconds)
        items: list[dict[str, Any]] = []
        for inbox in self._sending_for():
            # Those due within CLAIM_AHEAD are claimed now and held for their
            # instant (`run_once`), unless this process holds its share already:
            # then only those due now.
            ahead = self._held.get(inbox, 0) < self._held_cap(inbox)
            horizon = now + timedelta(seconds=CLAIM_AHEAD) if ahead else now
            # Found by the `next_attempt_at` index (a range up to the horizon): the
            # items queued ahead for later (a day's greetings) are never read until
            # nearly due, nor those claimed (theirs is None, EARLIEST). (`state` by
            # `$in`, not an equality: the embedded engine would seek by its index
            # first, and read every queued item, due or not.)
            cursor = self.store.outbox.find(
                {
                    "next_attempt_at": {"$gte": EARLIEST, "$lte": horizon},
                    "state": {"$in": ["queued"]},
                    "inbox": inbox,
                }
            ).limit(self._batch_cap(inbox))
            items.extend(await cursor.to_list())
        if not items:
            return []
        # This process alone dispatches these inboxes (`_hold_inboxes`) and claims
        # one batch at a time, so no other claim can be taking the same items: each
        # is leased by `_id` alone, the one lookup the embedded engine answers
        # without reading the whole collection. Each claim has a token of its own:
        # a group held for its instant is marked handed by it (`_mark_held`).
        token = new_id()
        claim = self.store.outbox.bulk_write(
            [
                UpdateOne(
                    {"_id": item["_id"]},
                    {
                        "$set": {
                            "state": "sending",
                            "lease_owner": self.instance_id,
                            # From its instant on, for one held until then: a
                            # process that dies is relieved of it only after it.
                            "lease_until": max(now, _due(item)) + lease,
                            # Not yet handed to the provider (see `_deliver`).
                            "handed": False,
                            "claim": token,
                            # Out of the claim's range while claimed: its instant
                            # is kept in `held_for` (put back by `_release`).
                            "next_attempt_at": None,
                            "held_for": _due(item),
                        },
                        "$inc": {"attempts": 1},
                    },
                )
                for item in items
            ],
            ordered=False,
        )
        # The items' messages and conversations (an item names its conversation)
        # are read while the claim is written: a send starts a round trip or two
        # sooner. Nothing is sent before the claim is in.
        conversation_ids = list(
            {str(i["conversation_id"]) for i in items if i.get("conversation_id")}
        )
        if read_ahead:
            _, messages, conversations = await asyncio.gather(
                claim,
                find_by_ids(self.store.messages, [item["_id"] for item in items]),
                find_by_ids(self.store.conversations, conversation_ids),
            )
            for item in items:
                message = messages.get(item["_id"])
                conversation = conversations.get(message["conversation_id"]) if message else None
                self._read_ahead[item["_id"]] = (message, conversation)
        else:
            await claim
        for item in items:
            item |= {
                "state": "sending",
                "lease_owner": self.instance_id,
                "lease_until": max(now, _due(item)) + lease,
                "handed": False,
                "claim": token,
                "held_for": _due(item),  # `next_attempt_at` is kept here
                "attempts": int(item.get("attempts", 0)) + 1,
            }
        return items

    # -- which inboxes this process dispatches ---------------------------------------

    def _sending_for(self) -> list[str]:
        """The inboxes whose lease this process holds with time to spare."""
        horizon = time.monotonic() + self.inbox_lease * INBOX_LEASE_MARGIN_SHARE
        return [inbox for inbox, until in self._inbox_leases.items() if until > horizon]

    async def _hold_inboxes(self, force: bool = False) -> None:
        """Take or renew the lease on each inbox's sending.

        One process at a time sends for an inbox: its pace is the provider's limit,
        and two processes each pacing at it would together exceed it. Another
        process takes over when the lease runs out (the holder died or stopped).
        """
        started = time.monotonic()
        # Held leases are renewed now and then; one held elsewhere is tried again
        # sooner, so a clean stop of its holder is taken over within a second.
        renew = self.inbox_lease * INBOX_LEASE_RENEW_SHARE
        every = renew if len(self._inbox_leases) == len(self.adapters) else min(1.0, renew)
        if not force and started - self._leases_renewed < every:
            return
        self._leases_renewed = started
        now = utcnow()
        for inbox in self.adapters:
            if await take_lease(
                self.store, f"outbox:{inbox}", self.instance_id, self.inbox_lease, now=now
            ):
                self._inbox_leases[inbox] = started + self.inbox_lease
            else:
                self._inbox_leases.pop(inbox, None)  # another process holds it

    async def _release_inboxes(self) -> None:
        """Hand the inboxes back at once on a clean stop (no wait for expiry)."""
        keys = [f"outbox:{inbox}" for inbox in self._inbox_leases]
        self._inbox_leases.clear()
        await release_leases(self.store, keys, self.instance_id)

    async def recover_expired(self) -> int:
        """Take back items whose sender died mid-send (lease expired)."""
        recovered = 0
        while True:
            now = utcnow()
            # By the `lease_until` index: not every item in flight is read (an
            # instant's thousands held for it), only those whose lease ran out.
            item = await self.store.outbox.find_one_and_update(
                {"lease_until": {"$gte": EARLIEST, "$lt": now}, "state": {"$in": ["sending"]}},
                {"$set": {"state": "recovering", "lease_owner": self.instance_id}},
                return_document=ReturnDocument.AFTER,
            )
            if item is None:
                return recovered
            recovered += 1
            message = await self.store.messages.find_one({"_id": item["_id"]}, {"status": 1})
            if message is not None and message.get("status") in SETTLED:
                # The send was recorded; only the clean-up was cut off.
                await self.store.outbox.delete_one({"_id": item["_id"]})
            elif item.get("at_most_once") and (
                item.get("handed") is not False or await self._handed_together(item)
            ):
                # It may or may not have reached the provider: never send it twice.
                # (An item claimed but never handed to the provider, `handed`
                # false, waited for its turn when its hub died: it goes back to the
                # queue below like a reply.)
                await self._apply(
                    [_Outcome(item, "unknown", error="the hub stopped while sending")]
                )
            else:
                await self.store.outbox.update_one(
                    {"_id": item["_id"]},
                    {"$set": {"state": "queued", "next_attempt_at": now, "lease_owner": None}},
                )
            log.warning(
                "recovered an interrupted send",
                extra={"message_id": item["_id"], "at_most_once": bool(item.get("at_most_once"))},
            )

    # -- sending -----------------------------------------------------------------

    async def run_once(self) -> bool:
        """Claim a batch and send what is due in it; what was claimed ahead is held
        for its instant by tasks of its own, so this worker claims again at once
        (and items due now never wait behind those). False when there was nothing
        to do."""
        items = await self.claim_batch(read_ahead=True)
        if not items:
            return False
        now = utcnow()
        due_now: list[dict[str, Any]] = []
        later: dict[datetime, list[dict[str, Any]]] = {}
        for item in items:
            due = _due(item)
            if due <= now:
                due_now.append(item)
            else:
                later.setdefault(due, []).append(item)
        for due, group in sorted(later.items()):
            for inbox, count in Counter(item["inbox"] for item in group).items():
                self._held[inbox] = self._held.get(inbox, 0) + count
            self._held_at[due] += len(group)
            self._unsent[due] += len(group)
            self._all_sent.setdefault(due, asyncio.Event())
            if self._stopping:
                # Stopping: `stop` waits only for the tasks it saw start.
                await self._hold(due, group)
            else:
                self._spawn(self._hold(due, group), f"dispatcher-hold-{due.isoformat()}")
        if due_now:
            await self._send_batch(due_now)
        return True

    async def _hold(self, due: datetime, items: list[dict[str, Any]]) -> None:
        """Wait for the items' instant (claimed ahead: they are leased, not yet
        handed to the provider, nothing booked in the pace), then send them as any
        due batch: their slots in the inbox's pace are booked then, the contact's
        opt-out is checked then. A clean stop puts them back as they were due."""
        marked = False
        try:
            await self._wait_until(due - timedelta(seconds=max(HANDED_LEAD, READ_LEAD)))
            # What the sends need is read, and the first turns are marked handed,
            # each from its own lead before the instant.
            _, marked = await asyncio.gather(
                self._read_before(due, items), self._mark_before(due, items)
            )
            await self._wait_until(due)
            if self._stopping:
                self._forget_ahead(items)
                self._handed_over(due, len(items))
                await self._apply([_Outcome(item, "released") for item in items])
                await self._unmark(marked, items)
                return
            # A bot's answer is sent only if people did not take the conversation
            # over meanwhile: its conversation is read again (see `_send_batch`).
            for item in items:
                message, _ = self._read_ahead.get(item["_id"], (None, None))
                if message is not None and (message.get("sender") or {}).get("type") == "bot":
                    self._read_ahead[item["_id"]] = (message, None)
            chunks = [items[i : i + SEND_CHUNK] for i in range(0, len(items), SEND_CHUNK)]
            done = await asyncio.gather(
                *(self._send_batch(chunk, instant=due) for chunk in chunks),
                return_exceptions=True,
            )
            for result in done:
                if isinstance(result, PyMongoError):
                    raise result
                if isinstance(result, BaseException):
                    log.error("a held batch failed", exc_info=result)
            if not any(isinstance(result, BaseException) for result in done):
                # Every outcome is recorded: the mark is not needed any more.
                await self._unmark(marked, items)
        except PyMongoError as error:
            # Left leased: recovered when the lease runs out, as any interrupted send.
            log.warning("dispatcher cannot reach the store", extra={"error": str(error)})
        finally:
            self._forget_ahead(items)
            for item in items:
                self._held[item["inbox"]] -= 1
            self._held_at[due] -= len(items)
            if self._held_at[due] <= 0:
                del self._held_at[due]
                self._unsent.pop(due, None)
                self._all_sent.pop(due, None)

    async def _mark_before(self, due: datetime, items: list[dict[str, Any]]) -> bool:
        """Mark the group's first turns handed HANDED_LEAD before its instant;
        whether they were."""
        await self._wait_until(due - timedelta(seconds=HANDED_LEAD))
        if self._stopping:
            return False
        return await self._mark_held(self._first_turns(items))

    async def _mark_held(self, items: list[dict[str, Any]]) -> bool:
        """Mark at-most-once items of one held group (one claim's, one instant's)
        handed to the provider, as `_mark_handed` does, in one small document that
        names them (`outbox_handed`, by the claim's token and the instant) instead
        of a write to each: recovery reads it (`recover_expired`). False, nothing
        marked, when it cannot be written: they are marked at their turn then."""
        if not items:
            return False
        try:
            await self.store.outbox_handed.insert_one(
                {"_id": _handed_key(items[0]), "ids": [i["_id"] for i in items], "at": utcnow()}
            )
        except PyMongoError:
            return False
        for item in items:
            item["handed"] = True
        return True

    async def _unmark(self, marked: bool, items: list[dict[str, Any]]) -> None:
        """Drop a group's mark once its items' outcomes are recorded (those left
        by a process that died go after HANDED_KEEP)."""
        if marked and items:
            with contextlib.suppress(PyMongoError):
                await self.store.outbox_handed.delete_one({"_id": _handed_key(items[0])})

    async def _handed_together(self, item: dict[str, Any]) -> bool:
        """Whether `item` was marked handed with its held group (`_mark_held`)."""
        if not item.get("claim"):
            return False
        mark = await self.store.outbox_handed.find_one({"_id": _handed_key(item)}, {"ids": 1})
        return mark is not None and item["_id"] in (mark.get("ids") or [])

    async def _opted_out_lately(self, items: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        """The contacts whose opt-outs changed since the earliest of `items` was
        queued (less OPT_OUT_SLACK): the queueing checked each one's then."""
        now = utcnow()
        since = min(_aware(item.get("created_at") or now) for item in items)
        return await opted_out_since(self.store, since - OPT_OUT_SLACK)

    async def _read_before(self, due: datetime, items: list[dict[str, Any]]) -> None:
        """Read READ_LEAD before a held group's instant what its sends need: the
        messages and conversations the claim did not read, and the opt-outs
        changed since it was queued if it is to be checked again (greetings). A
        bot's conversation is read again at the instant all the same (`_hold`: a
        takeover meanwhile cancels its answer). What cannot be read now is read
        at the instant."""
        await self._wait_until(due - timedelta(seconds=READ_LEAD))
        if self._stopping:
            return
        try:
            missing = [item["_id"] for item in items if item["_id"] not in self._read_ahead]
            if missing:
                messages = await find_by_ids(self.store.messages, missing)
                conversations = await find_by_ids(
                    self.store.conversations,
                    list({str(m["conversation_id"]) for m in messages.values()}),
                )
                for item_id, message in messages.items():
                    conversation = conversations.get(message["conversation_id"])
                    self._read_ahead[item_id] = (message, conversation)
            recheck = [item for item in items if item.get("recheck_opt_out")]
            lately = await self._opted_out_lately(recheck) if recheck else {}
        except PyMongoError as error:
            log.warning("held sends not read ahead", extra={"error": str(error)})
            return
        for item in recheck:
            self._contact_ahead[item["_id"]] = lately

    def _forget_ahead(self, items: list[dict[str, Any]]) -> None:
        """Drop what was read ahead for `items` (sent, or put back)."""
        for item in items:
            self._read_ahead.pop(item["_id"], None)
            self._contact_ahead.pop(item["_id"], None)

    def _handed_over(self, due: datetime, count: int) -> asyncio.Event | None:
        """Count `count` of an instant's held items as handed to the provider (or
        given up); the signal that all were."""
        self._unsent[due] -= count
        signal = self._all_sent.get(due)
        if signal is not None and self._unsent[due] <= 0:
            signal.set()
        return signal

    async def _recorded_after(self, due: datetime, count: int) -> None:
        """Wait, before writing outcomes, until every item held for the instant
        `due` was handed to the provider (RECORD_WAIT_MOST at most)."""
        signal = self._handed_over(due, count)
        if signal is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), RECORD_WAIT_MOST)

    async def _wait_until(self, moment: datetime) -> None:
        """Until `moment` on the dispatcher's clock, looked at again every half
        second at most (a wake-up can come a moment early; a clock can be moved),
        or the stop."""
        while (remaining := (moment - utcnow()).total_seconds()) > 0 and not self._stopping:
            await self._pause(min(remaining, 0.5))

    def _first_turns(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The at-most-once items among `items` that the inbox's pace lets out
        within HANDED_LEAD of their instant, in order: those are marked handed a
        moment before it, as a send is before its turn (`_deliver`), the rest at
        their turn."""
        room: dict[str, int] = {}
        first: list[dict[str, Any]] = []
        for item in items:
            if not item.get("at_most_once"):
                continue
            inbox = item["inbox"]
            if inbox not in room:
                room[inbox] = math.floor(HANDED_LEAD / self.limiters[inbox].interval)
            if room[inbox] > 0:
                room[inbox] -= 1
                first.append(item)
        return first

    async def _mark_handed(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Mark at-most-once items handed to the provider in one write (see
        `_deliver`); those it could not mark are returned (marked at their turn
        by `_deliver`, or not sent)."""
        if not items:
            return []
        try:
            await self.store.outbox.bulk_write(
                [UpdateOne({"_id": i["_id"]}, {"$set": {"handed": True}}) for i in items],
                ordered=False,
            )
        except PyMongoError:
            return items
        for item in items:
            item["handed"] = True
        return []

    async def _send_batch(
        self, items: list[dict[str, Any]], *, instant: datetime | None = None
    ) -> None:
        """Send the claimed `items` and record their outcomes; `instant` when they
        were held for it (`_hold`): their outcomes are written once the instant's
        held sends were all handed over, and `sending` is not announced for them."""
        # What the claim read already (`_claim_batch`); the rest is read here.
        ahead = {
            i["_id"]: self._read_ahead.pop(i["_id"]) for i in items if i["_id"] in self._read_ahead
        }
        messages = {i: m for i, (m, _) in ahead.items() if m is not None}
        messages |= await find_by_ids(
            self.store.messages, [item["_id"] for item in items if item["_id"] not in ahead]
        )
        conversations = {str(c["_id"]): c for _, c in ahead.values() if c is not None}
        conversations |= await find_by_ids(
            self.store.conversations,
            list({m["conversation_id"] for m in messages.values()} - conversations.keys()),
        )
        # Queued ahead (greetings): the contact may have opted out since it was
        # queued (the queueing checked it then). For a held item the opt-outs
        # changed since were read READ_LEAD (a second) before its instant
        # (`_read_before`): an opt-out within about a second of the send is not
        # seen by this re-check (the send is as if the opt-out came just after
        # it). The others' are read here.
        contact_ahead = {
            i["_id"]: self._contact_ahead.pop(i["_id"])
            for i in items
            if i["_id"] in self._contact_ahead
        }
        recheck = [i for i in items if i.get("recheck_opt_out") and i["_id"] not in contact_ahead]
        lately = await self._opted_out_lately(recheck) if recheck else {}
        outcomes: list[_Outcome] = []
        ready: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], OutboundMessage]] = []
        for item in items:
            message = messages.get(item["_id"])
            if message is None:
                await self._message_missing(item)
                continue
            if message.get("status") in SETTLED:
                # Already sent (an item re-queued after its send was recorded).
                await self.store.outbox.delete_one({"_id": item["_id"]})
                continue
            conversation = conversations.get(message["conversation_id"])
            if conversation is None:
                outcomes.append(_Outcome(item, "failed", error="the conversation is gone"))
                continue
            if item.get("recheck_opt_out"):
                changed = contact_ahead.get(item["_id"], lately)
                contact = changed.get(conversation.get("contact_id")) or {}
                if (contact.get("opted_out") or {}).get(conversation.get("channel")):
                    reason = "opted out before it was sent"
                    outcomes.append(_Outcome(item, "cancelled", error=reason, message=message))
                    continue
            taken_over_at = conversation.get("taken_over_at")
            if (
                (message.get("sender") or {}).get("type") == "bot"
                and taken_over_at is not None
                and message["created_at"] <= taken_over_at
            ):
                # People took the conversation over after this answer was queued and
                # before the takeover could take it back (it was already claimed):
                # the customer gets no more answers from the bot. (A bot's last words
                # before its own handoff still go.)
                reason = "taken back: people took the conversation"
                outcomes.append(_Outcome(item, "cancelled", error=reason, message=message))
                continue
            try:
                outbound = outbound_message(item, message, conversation)
            except Exception as error:
                # A message the hub cannot even build a send for (a bug, or a document
                # written by hand): fail it with a reason rather than retry it forever.
                log.exception("cannot send a message", extra={"message_id": item["_id"]})
                reason = f"internal error: {type(error).__name__}"
                outcomes.append(_Outcome(item, "failed", error=reason, message=message))
                continue
            ready.append((item, message, conversation, outbound))

        # Each send's slot in the inbox's pace is booked now, in claim order, and
        # with it its recipient's (a Telegram chat's) at the same time. A recipient
        # not free by then (a busy chat) waits in the queue, not in this batch: it
        # would hold the batch back, and take its slot late, out of turn.
        booked: list[tuple[float, tuple[Any, ...]]] = []
        for entry in ready:
            wait = self._book(entry[0]["inbox"], entry[3].to)
            if wait is None:
                outcomes.append(
                    _Outcome(entry[0], "deferred", retry_in=self._recipient_delay(entry))
                )
            else:
                booked.append((wait, entry))
        # At-most-once sends whose turn is within HANDED_LEAD are marked handed in
        # one write (not one each: the store's time at a busy instant).
        unmarked = await self._mark_handed(
            [
                entry[0]
                for wait, entry in booked
                if entry[0].get("at_most_once")
                and entry[0].get("handed") is not True
                and wait <= HANDED_LEAD
            ]
        )
        if unmarked:
            failed = {item["_id"] for item in unmarked}
            outcomes += [
                _Outcome(entry[0], "deferred", retry_in=1.0)
                for _, entry in booked
                if entry[0]["_id"] in failed
            ]
            booked = [(wait, entry) for wait, entry in booked if entry[0]["_id"] not in failed]
        if booked:
            deliveries = [self._deliver(*entry, wait=wait) for wait, entry in booked]
            if instant is None:
                # `sending` is announced, not stored: while a send is in flight the
                # outbox item's lease is its record, and one write per message fewer
                # is what lets the embedded store keep up with a fast provider.
                # Announced while the sends go (before their outcomes are recorded).
                announce = self._announce(
                    [
                        Event("message.updated", message_view({**entry[1], "status": "sending"}))
                        for _, entry in booked
                    ]
                )
                _, *delivered = await asyncio.gather(announce, *deliveries)
            else:
                delivered = await asyncio.gather(*deliveries)
            outcomes += [outcome for outcome in delivered if outcome is not None]
        if instant is not None:
            await self._recorded_after(instant, len(items))
        await self._apply(outcomes)

    async def _announce(self, events: list[Event]) -> None:
        try:
            await self.events.publish(events)
        except PyMongoError as error:
            # Only the announcement is lost: what the sends did is still recorded.
            log.warning("sends not announced", extra={"error": str(error)})

    def _book(self, inbox: str, recipient: str) -> float | None:
        """Book a send's slot in the inbox's pace, and its recipient's at the same
        moment; return the wait for it. None, with nothing booked, when the
        recipient is not free by then."""
        overall = self.limiters[inbox]
        now = time.monotonic()
        wait = overall.delay(now)
        limiters = self.recipient_limiters.get(inbox)
        if limiters is not None:
            limiter = limiters.limiter(recipient)
            if limiter.delay(now + wait) > 0:
                return None
            limiter.reserve(now + wait)
        overall.reserve(now)
        return wait

    def _recipient_delay(self, entry: tuple[Any, ...]) -> float:
        """When a deferred message should come back: each gets a turn of its own
        after those already promised to the same recipient, so a recipient with
        a long backlog has about one message due at a time, not all of them
        crowding every claim."""
        item, _, _, outbound = entry
        limiter = self.recipient_limiters[item["inbox"]].limiter(outbound.to)
        now = time.monotonic()
        key = (item["inbox"], outbound.to)
        turn = max(now + limiter.delay(now), self._promised.get(key, 0.0)) + limiter.interval
        self._promised[key] = turn
        if len(self._promised) > 10_000:
            self._promised = {k: t for k, t in self._promised.items() if t > now}
        return turn - now

    async def _message_missing(self, item: dict[str, Any]) -> None:
        created = item.get("created_at")
        if created is not None and utcnow() - created < MESSAGE_GRACE:
            # `enqueue` writes the item before the message: this one is still
            # being written. Put the item back untouched and look again soon.
            await self.store.outbox.update_one(
                {"_id": item["_id"]},
                {
                    "$set": {
                        "state": "queued",
                        "next_attempt_at": utcnow() + MESSAGE_RECHECK,
                        "lease_owner": None,
                    },
                    "$inc": {"attempts": -1},
                },
            )
            return
        # The enqueue that wrote this item failed before the message: it was never
        # acknowledged to anyone, so there is nothing to send.
        await self.store.outbox.delete_one({"_id": item["_id"]})

    async def _deliver(
        self,
        item: dict[str, Any],
        message: dict[str, Any],
        conversation: dict[str, Any],
        outbound: OutboundMessage,
        *,
        wait: float = 0.0,
    ) -> _Outcome:
        """Wait for the send's booked slot, send through the adapter, and say what
        became of it."""
        adapter = self.adapters[item["inbox"]]
        # Marked handed already (`_mark_handed`): only its turn is waited for.
        at_most_once = bool(item.get("at_most_once")) and item.get("handed") is not True
        turn = time.monotonic() + wait
        # An at-most-once send is marked handed to the provider a moment before its
        # turn (HANDED_LEAD, so the write does not delay the pace): a crash after
        # that leaves it `unknown`; one before (a claim still waiting for its turn)
        # leaves it to be sent by the next holder of the inbox.
        lead = HANDED_LEAD if at_most_once else 0.0
        if wait > lead:
            await self._pause(wait - lead)
            if self._stopping:
                # A clean stop: a send still waiting for its turn goes back to the
                # queue at once, for whichever process sends for the inbox next,
                # rather than holding the stop up or sitting in a lease left to
                # run out.
                return _Outcome(item, "deferred", retry_in=0.0)
        if at_most_once:
            try:
                await self.store.outbox.update_one({"_id": item["_id"]}, {"$set": {"handed": True}})
            except PyMongoError:
                return _Outcome(item, "deferred", retry_in=1.0)
            rest = turn - time.monotonic()
            if rest > 0:
                await self._pause(rest)
                if self._stopping:
                    return _Outcome(item, "deferred", retry_in=0.0)
        # The wake-up from the slot's sleep varies: keep the sends (and each
        # recipient's) spaced as they actually go out, recording the send in the
        # inbox's limiter and the recipient's at the moment it goes.
        per_recipient = self.recipient_limiters.get(item["inbox"])
        recipient = () if per_recipient is None else (per_recipient.limiter(outbound.to),)
        await space_together(self.limiters[item["inbox"]], *recipient)
        channel = str(conversation["channel"])
        try:
            result = await adapter.send(outbound)
        except TransientSendError as error:
            self.metrics.send_errors.labels(channel, "transient").inc()
            return self._transient(item, message, error)
        except PermanentSendError as error:
            self.metrics.send_errors.labels(channel, "permanent").inc()
            if error.opt_out:
                await set_opt_out(self.store, self.events, conversation["contact_id"], channel)
            reason = failure_reason(error.reason, error.code)
            return _Outcome(item, "failed", error=reason, message=message)
        except Exception as error:
            # An adapter bug: we cannot tell whether the provider took it.
            log.exception("adapter send raised", extra={"message_id": item["_id"]})
            self.metrics.send_errors.labels(channel, "unknown").inc()
            unknown = TransientSendError(f"adapter error: {type(error).__name__}")
            return self._transient(item, message, unknown)
        self.metrics.messages_out.labels(channel).inc()
        return _Outcome(item, result.status, provider_id=result.provider_id, message=message)

    def _transient(
        self, item: dict[str, Any], message: dict[str, Any], error: TransientSendError
    ) -> _Outcome:
        attempts = int(item.get("attempts", 1))
        reason = failure_reason(error.reason, error.code)
        if item.get("at_most_once") and error.maybe_sent:
            return _Outcome(item, "unknown", error=reason, message=message)
        if attempts >= self.settings.max_attempts:
            reason = f"gave up after {attempts} attempts: {reason}"
            return _Outcome(item, "failed", error=reason, message=message)
        backoff = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempts - 1))
        delay = max(error.retry_after or 0.0, random.uniform(backoff / 2, backoff))
        return _Outcome(item, "queued", error=reason, message=message, retry_in=delay)

    async def _apply(self, outcomes: list[_Outcome]) -> None:
        """Record a batch's outcomes: one write for the messages, one for the
        outbox, one event document; then any status that arrived early."""
        if not outcomes:
            return
        now = utcnow()
        message_writes: list[UpdateOne] = []
        outbox_writes: list[UpdateOne | DeleteOne] = []
        views: list[Event] = []
        keys: list[str] = []
        for outcome in outcomes:
            item = outcome.item
            if outcome.status == "deferred":
                # Not attempted: back in the queue until its recipient's turn.
                outbox_writes.append(_requeue(item["_id"], now, outcome.retry_in, uncount=True))
                continue
            if outcome.status == "released":
                outbox_writes.append(_release(item))
                continue
            if outcome.status == "queued":
                fields: dict[str, Any] = {"status": "queued", "error": f"retrying: {outcome.error}"}
                outbox_writes.append(
                    _requeue(item["_id"], now, outcome.retry_in, last_error=outcome.error)
                )
            else:
                fields = {"status": outcome.status, "error": outcome.error}
                if outcome.provider_id:
                    key = provider_key(item["inbox"], outcome.provider_id)
                    keys.append(key)
                    fields |= {
                        "provider_id": outcome.provider_id,
                        "provider_key": key,
                        "sent_at": now,
                    }
                outbox_writes.append(DeleteOne({"_id": item["_id"]}))
            message_writes.append(UpdateOne({"_id": item["_id"]}, {"$set": fields}))
            message = outcome.message
            if message is None:
                message = await self.store.messages.find_one({"_id": item["_id"]})
            if message is not None:
                views.append(Event("message.updated", message_view({**message, **fields})))
        # The message first: a crash before the outbox write leaves a lease that
        # recovery finds settled and only cleans up.
        if message_writes:
            await self.store.messages.bulk_write(message_writes, ordered=False)
        await self.store.outbox.bulk_write(outbox_writes, ordered=False)
        await self.events.publish(views)
        if keys and await self.store.early_statuses.estimated_document_count():
            early = (await find_by_ids(self.store.early_statuses, keys)).values()
            for kept in early:
                if await self.store.early_statuses.find_one_and_delete({"_id": kept["_id"]}):
                    await record_statuses(
                        self.store, self.events, [StatusUpdate.model_validate(kept["update"])]
                    )

    # -- loops -------------------------------------------------------------------

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                worked = await self.run_once()
            except PyMongoError as error:
                log.warning("dispatcher cannot reach the store", extra={"error": str(error)})
                worked = False
                await asyncio.sleep(self.settings.poll_interval)
            if not worked and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                if not self._stopping:  # the stop signal stays set for every worker
                    self._wake.clear()

    async def prune_early_statuses(self, older_than: timedelta = EARLY_STATUS_KEEP) -> int:
        """Forget statuses kept for sends never recorded here (another system's
        sends on the same number, a send whose recording failed)."""
        result = await self.store.early_statuses.delete_many({"at": {"$lt": utcnow() - older_than}})
        return int(result.deleted_count)

    async def _housekeeping(self) -> None:
        last_prune = -math.inf
        while not self._stopping:
            try:
                await self.recover_expired()
                # From the collection's size, not a count of its documents: the
                # embedded store counts by reading them all (a quarter-second at a
                # backlog of 6,000, every second, in the senders' way).
                self.metrics.outbox_depth.set(await self.store.outbox.estimated_document_count())
                if time.monotonic() - last_prune > 600:
                    last_prune = time.monotonic()
                    await self.prune_early_statuses()
                    await self.store.outbox_handed.delete_many(
                        {"at": {"$lt": utcnow() - HANDED_KEEP}}
                    )
            except PyMongoError as error:
                log.warning("outbox housekeeping failed", extra={"error": str(error)})
            await self._pause(max(1.0, self.settings.poll_interval * 5))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once when the dispatcher is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_signal.wait(), seconds)
