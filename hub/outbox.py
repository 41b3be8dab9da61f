"""The outbox: every outbound message is stored before it is sent.

`enqueue` writes an `outbox` item and then the message (status `queued`). The
dispatcher claims items with a lease, sends through the inbox's adapter, and
records what the provider said. The `outbox` collection only holds work still to
do, so claiming scans a small collection even when `messages` is large.

Crash semantics (a lease that expired while `sending`):
- replies (agent, bot) are sent again: at-least-once;
- items marked `at_most_once` (campaign and greeting sends) are never sent again:
  their message becomes `unknown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import DeleteOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from channels.base import ChannelAdapter, PermanentSendError, TransientSendError
from hub.config import DispatcherSettings
from hub.events import Event, Events
from hub.metrics import Metrics
from hub.model import (
    STATUS_RANK,
    Attachment,
    ButtonReply,
    OutboundMessage,
    StatusUpdate,
    utcnow,
)
from hub.ratelimit import KeyedRateLimiter, RateLimiter, space_together
from hub.store import Store, derived_id, find_by_ids, new_id
from hub.views import message_view

log = logging.getLogger("hub.outbox")


# How long an outbox item may wait for the message `enqueue` writes after it, and
# how soon a dispatcher that claimed it too early looks again.
MESSAGE_GRACE = timedelta(seconds=60)
MESSAGE_RECHECK = timedelta(seconds=0.05)
# One claim takes about this many seconds of an inbox's pace (see `_batch_cap`).
CLAIM_HORIZON = 1.0
# How long this process holds an inbox's sending, how often it renews the lease,
# and how much of it must be left for it to start a new batch.
INBOX_LEASE = 15.0
INBOX_LEASE_RENEW = 3.0
INBOX_LEASE_MARGIN = 5.0
# How long a status for a send not (yet) recorded here is kept.
EARLY_STATUS_KEEP = timedelta(days=1)
# Statuses after which a message is never sent again.
SETTLED = frozenset({"sent", "delivered", "read", "failed", "unknown"})


class OutboxError(ValueError):
    """The message cannot be queued (unknown conversation, nothing to send...)."""


def provider_key(inbox: str, provider_id: str) -> str:
    return derived_id("out", inbox, provider_id)


def _outbox_doc(message_id: str, inbox: str, at_most_once: bool, now: datetime) -> dict[str, Any]:
    return {
        "_id": message_id,
        "inbox": inbox,
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": now,
        "at_most_once": at_most_once,
        "lease_owner": None,
        "lease_until": None,
        "created_at": now,
    }


async def _insert_outbox(
    store: Store, message_id: str, inbox: str, at_most_once: bool, now: datetime
) -> None:
    await store.outbox.insert_one(_outbox_doc(message_id, inbox, at_most_once, now))


def _message_doc(
    message_id: str,
    conversation: dict[str, Any],
    *,
    text: str | None,
    sender: dict[str, Any],
    kind: str = "text",
    attachments: list[Attachment] | None = None,
    campaign_id: str | None = None,
    template: dict[str, Any] | None = None,
    buttons: list[ButtonReply] | None = None,
    subject: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": message_id,
        "conversation_id": conversation["_id"],
        "inbox": conversation["inbox"],
        "channel": conversation["channel"],
        "direction": "out",
        "kind": kind,
        "text": text,
        "sender": sender,
        "status": "queued",
        "error": None,
        "attachments": [a.model_dump() for a in attachments or []],
        "provider_id": None,
        "provider_key": None,
        "campaign_id": campaign_id,
        "created_at": now,
    }
    if template:
        doc["template"] = template
    if buttons:
        doc["buttons"] = [b.model_dump() for b in buttons]
    if subject:
        doc["email"] = {"subject": subject}
    return doc


@dataclass(frozen=True)
class Draft:
    """One message of a bulk enqueue (a campaign's, a greeting run's)."""

    conversation_id: str
    text: str | None
    sender: dict[str, Any]
    at_most_once: bool = False
    campaign_id: str | None = None
    template: dict[str, Any] | None = None
    # A stable id (per campaign and contact) makes queueing it again a no-op.
    message_id: str | None = None


async def enqueue_many(store: Store, events: Events, drafts: Sequence[Draft]) -> list[str]:
    """Queue many messages in a few bulk writes; return the ids newly queued.

    Drafts whose conversation does not exist, or whose `message_id` is already
    queued or sent, are left out of the result.
    """
    if not drafts:
        return []
    conversation_ids = list({d.conversation_id for d in drafts})
    conversations = await find_by_ids(store.conversations, conversation_ids)
    now = utcnow()
    items: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    for draft in drafts:
        conversation = conversations.get(draft.conversation_id)
        if conversation is None or not (draft.text or draft.template):
            continue
        message_id = draft.message_id or new_id()
        items.append(_outbox_doc(message_id, conversation["inbox"], draft.at_most_once, now))
        docs.append(
            _message_doc(
                message_id,
                conversation,
                text=draft.text,
                sender=draft.sender,
                campaign_id=draft.campaign_id,
                template=draft.template,
                now=now,
            )
        )
    if not docs:
        return []
    refused = await _insert_new(store.outbox, items)
    # An item refused as a duplicate is queued already: its message stays as it is.
    docs = [d for d in docs if d["_id"] not in refused]
    settled = await _insert_new(store.messages, docs)
    if settled:
        # Their messages exist and their items were gone: sent already. Take back
        # the items just written for them.
        await store.outbox.bulk_write([DeleteOne({"_id": i}) for i in settled], ordered=False)
    docs = [d for d in docs if d["_id"] not in settled]
    if not docs:
        return []
    latest: dict[str, dict[str, Any]] = {d["conversation_id"]: d for d in docs}
    await store.conversations.bulk_write(
        [
            UpdateOne(
                {"_id": conversation_id},
                {
                    "$set": {
                        "last_message": {
                            "id": doc["_id"],
                            "text": doc["text"],
                            "kind": doc["kind"],
                            "direction": "out",
                            "at": now,
                        },
                        "last_activity_at": now,
                    }
                },
            )
            for conversation_id, doc in latest.items()
        ],
        ordered=False,
    )
    await events.publish([Event("message.created", message_view(d)) for d in docs])
    return [str(d["_id"]) for d in docs]


async def _insert_new(collection: Any, docs: list[dict[str, Any]]) -> set[Any]:
    """Insert `docs`, skipping those whose `_id` exists; return the skipped ids."""
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as error:
        refused = set()
        for failure in error.details.get("writeErrors", []):
            if failure.get("code") != 11000:
                raise
            refused.add(docs[failure["index"]]["_id"])
        return refused
    return set()


async def enqueue(
    store: Store,
    events: Events,
    *,
    conversation_id: str,
    text: str | None,
    sender: dict[str, Any],
    attachments: list[Attachment] | None = None,
    subject: str | None = None,
    at_most_once: bool = False,
    campaign_id: str | None = None,
    kind: str = "text",
    template: dict[str, Any] | None = None,
    buttons: list[ButtonReply] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Store an outbound message for the conversation's channel; return its document.

    With a `key` (e.g. "<call id>:missed-call-sms") the message is queued once per
    conversation and key, however often the caller retries: a repeat returns the
    message already queued (or sent).
    """
    if not text and not attachments and not template:
        raise OutboxError("a message needs text, an attachment or a template")
    conversation = await store.conversations.find_one({"_id": conversation_id})
    if conversation is None:
        raise OutboxError(f"no conversation {conversation_id}")
    now = utcnow()
    message_id = new_id() if key is None else derived_id("keyed", conversation_id, key)
    if key is not None:
        existing = await store.messages.find_one({"_id": message_id})
        if existing is not None:
            return existing
    try:
        await _insert_outbox(store, message_id, conversation["inbox"], at_most_once, now)
    except DuplicateKeyError:
        if key is None:
            raise
        # A concurrent call with the same key is writing it.
        return await store.messages.find_one({"_id": message_id}) or {"_id": message_id}
    doc = _message_doc(
        message_id,
        conversation,
        text=text,
        sender=sender,
        kind=kind,
        attachments=attachments,
        campaign_id=campaign_id,
        template=template,
        buttons=buttons,
        subject=subject,
        now=now,
    )
    await store.messages.insert_one(doc)
    await store.conversations.update_one(
        {"_id": conversation_id},
        {
            "$set": {
                "last_message": {
                    "id": message_id,
                    "text": text,
                    "kind": kind,
                    "direction": "out",
                    "at": now,
                },
                "last_activity_at": now,
            }
        },
    )
    await events.publish([Event("message.created", message_view(doc))])
    return doc


async def set_opt_out(
    store: Store, events: Events, contact_id: str, medium: str, opted_out: bool = True
) -> None:
    """Record that a contact refuses (or no longer refuses) `medium`, and say so."""
    await store.contacts.update_one(
        {"_id": contact_id}, {"$set": {f"opted_out.{medium}": opted_out}}
    )
    await events.publish(
        [Event("contact.updated", {"id": contact_id, "opted_out": {medium: opted_out}})]
    )


async def record_statuses(store: Store, events: Events, updates: list[StatusUpdate]) -> int:
    """Apply provider status callbacks; return how many messages moved.

    A callback never moves a message backwards (providers send them out of order).
    One that arrives before the send recorded its provider id is kept and applied
    when it is recorded.
    """
    moved = 0
    published: list[Event] = []
    for update in updates:
        key = provider_key(update.inbox, update.provider_id)
        rank = STATUS_RANK[update.status]
        earlier = [s for s, r in STATUS_RANK.items() if r < rank]
        fields: dict[str, Any] = {"status": update.status, f"{update.status}_at": update.at}
        if update.status == "failed":
            fields["error"] = _reason(update.error, update.error_code)
        doc = await store.messages.find_one_and_update(
            {"provider_key": key, "status": {"$in": earlier}},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            exists = await store.messages.find_one({"provider_key": key}, {"_id": 1})
            if exists is None:
                await _keep_early_status(store, key, update, rank)
                # The send may have recorded its id between our look and our keep,
                # and looked for early statuses before we kept this one: look again,
                # so that one of the two always applies it.
                if await store.messages.find_one({"provider_key": key}, {"_id": 1}):
                    kept = await store.early_statuses.find_one_and_delete({"_id": key})
                    if kept is not None:
                        moved += await record_statuses(
                            store, events, [StatusUpdate.model_validate(kept["update"])]
                        )
            continue
        moved += 1
        published.append(Event("message.updated", message_view(doc)))
    await events.publish(published)
    return moved


async def _keep_early_status(store: Store, key: str, update: StatusUpdate, rank: int) -> None:
    """Keep the furthest status seen for a send whose provider id is not recorded yet."""
    kept = await store.early_statuses.find_one({"_id": key}, {"rank": 1})
    if kept is not None and int(kept.get("rank", -1)) >= rank:
        return
    await store.early_statuses.replace_one(
        {"_id": key},
        {"rank": rank, "update": update.model_dump(mode="json"), "at": utcnow()},
        upsert=True,
    )


def _reason(error: str | None, code: str | None) -> str:
    if error and code:
        return f"{error} (code {code})"
    return error or (f"provider error {code}" if code else "failed")


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


@dataclass
class _Outcome:
    """What became of one claimed item: `queued` again (retry), or settled."""

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
        adapters: dict[str, ChannelAdapter],
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
        # (inbox, recipient) -> the last turn promised to a deferred message.
        self._promised: dict[tuple[str, str], float] = {}
        self._leases_renewed = -INBOX_LEASE

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

    async def claim_batch(self) -> list[dict[str, Any]]:
        """Lease the items that are due, up to each inbox's cap; other dispatchers
        (in this process or another) never get the same item."""
        # One claim at a time in this process: concurrent ones would all pick the
        # same first items and all but one come back empty-handed.
        async with self._claiming:
            return await self._claim_batch()

    async def _claim_batch(self) -> list[dict[str, Any]]:
        await self._hold_inboxes()
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)
        items: list[dict[str, Any]] = []
        for inbox in self._sending_for():
            cursor = self.store.outbox.find(
                {"state": "queued", "inbox": inbox, "next_attempt_at": {"$lte": now}}
            ).limit(self._batch_cap(inbox))
            items.extend(await cursor.to_list())
        if not items:
            return []
        # This process alone dispatches these inboxes (`_hold_inboxes`) and claims
        # one batch at a time, so no other claim can be taking the same items: each
        # is leased by `_id` alone, the one lookup the embedded engine answers
        # without reading the whole collection.
        await self.store.outbox.bulk_write(
            [
                UpdateOne(
                    {"_id": item["_id"]},
                    {
                        "$set": {
                            "state": "sending",
                            "lease_owner": self.instance_id,
                            "lease_until": lease_until,
                        },
                        "$inc": {"attempts": 1},
                    },
                )
                for item in items
            ],
            ordered=False,
        )
        for item in items:
            item |= {
                "state": "sending",
                "lease_owner": self.instance_id,
                "lease_until": lease_until,
                "attempts": int(item.get("attempts", 0)) + 1,
            }
        return items

    # -- which inboxes this process dispatches ---------------------------------------

    def _sending_for(self) -> list[str]:
        """The inboxes whose lease this process holds with time to spare."""
        horizon = time.monotonic() + INBOX_LEASE_MARGIN
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
        every = INBOX_LEASE_RENEW if len(self._inbox_leases) == len(self.adapters) else 1.0
        if not force and started - self._leases_renewed < every:
            return
        self._leases_renewed = started
        now = utcnow()
        for inbox in self.adapters:
            key = f"outbox:{inbox}"
            try:
                await self.store.leases.find_one_and_update(
                    {"_id": key, "$or": [{"owner": self.instance_id}, {"until": {"$lt": now}}]},
                    {
                        "$set": {
                            "owner": self.instance_id,
                            "until": now + timedelta(seconds=INBOX_LEASE),
                        }
                    },
                    upsert=True,
                )
            except DuplicateKeyError:
                self._inbox_leases.pop(inbox, None)  # another process holds it
                continue
            self._inbox_leases[inbox] = started + INBOX_LEASE

    async def _release_inboxes(self) -> None:
        """Hand the inboxes back at once on a clean stop (no wait for expiry)."""
        keys = [f"outbox:{inbox}" for inbox in self._inbox_leases]
        self._inbox_leases.clear()
        if keys:
            with contextlib.suppress(PyMongoError):
                await self.store.leases.delete_many(
                    {"_id": {"$in": keys}, "owner": self.instance_id}
                )

    async def recover_expired(self) -> int:
        """Take back items whose sender died mid-send (lease expired)."""
        recovered = 0
        while True:
            now = utcnow()
            item = await self.store.outbox.find_one_and_update(
                {"state": "sending", "lease_until": {"$lt": now}},
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
            elif item.get("at_most_once"):
                # It may or may not have reached the provider: never send it twice.
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
        """Claim a batch and send it; False when there was nothing to do."""
        items = await self.claim_batch()
        if not items:
            return False
        await self._send_batch(items)
        return True

    async def _send_batch(self, items: list[dict[str, Any]]) -> None:
        messages = await find_by_ids(self.store.messages, [item["_id"] for item in items])
        conversations = await find_by_ids(
            self.store.conversations, list({m["conversation_id"] for m in messages.values()})
        )
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
        if booked:
            # `sending` is announced, not stored: while a send is in flight the
            # outbox item's lease is its record, and one write per message fewer
            # is what lets the embedded store keep up with a fast provider.
            await self.events.publish(
                [
                    Event("message.updated", message_view({**entry[1], "status": "sending"}))
                    for _, entry in booked
                ]
            )
            outcomes += await asyncio.gather(
                *(self._deliver(*entry, wait=wait) for wait, entry in booked)
            )
        await self._apply(outcomes)

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
        if wait > 0:
            await asyncio.sleep(wait)
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
            reason = _reason(error.reason, error.code)
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
        reason = _reason(error.reason, error.code)
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
            except PyMongoError as error:
                log.warning("outbox housekeeping failed", extra={"error": str(error)})
            await self._pause(max(1.0, self.settings.poll_interval * 5))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once when the dispatcher is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_signal.wait(), seconds)
