"""Events: an in-process bus, and delivery to every other hub process through the store.

Each batch of events is one document in `events`, keyed by the time it was
written and the instance that wrote it. Every process polls a short window back
in time and skips what it has seen, so a write that commits a little after a
later one is still delivered. Old event documents are removed after
`retention_seconds`; a realtime client that was away longer reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError

from hub.model import Event
from hub.store import Store, find_by_ids, together

log = logging.getLogger("hub.events")

PRUNE_EVERY = 0.25  # seconds
LOOKBACK_NS = 5_000_000_000  # how far back each poll looks for late commits


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # a stalled reader must not stall the hub

    async def get(self, timeout: float | None = None) -> Event:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    """In-process fan-out to subscribers (WebSocket handlers, bots, tests)."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._listeners: dict[str, list[Callable[[Event], None]]] = {}

    def listen(self, event_type: str, callback: Callable[[Event], None]) -> None:
        """Call `callback` for every event of `event_type`, from this process or
        another, as it is delivered (for caches that an event makes stale)."""
        self._listeners.setdefault(event_type, []).append(callback)

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def deliver(self, events: Iterable[Event]) -> None:
        for event in events:
            for callback in self._listeners.get(event.type, ()):
                try:
                    callback(event)
                except Exception:
                    log.exception("event listener failed", extra={"event": event.type})
            for sub in tuple(self._subscribers):
                sub._offer(event)


@dataclass
class Events:
    """Publish events durably (for other processes) and locally (at once)."""

    store: Store
    bus: EventBus
    instance_id: str
    poll_interval: float = 0.25
    retention_seconds: float = 30.0
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _seen: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stop_signal: asyncio.Event | None = None

    def _key(self) -> str:
        return f"{time.time_ns():020d}-{self.instance_id}-{next(self._seq):08d}"

    async def publish(
        self, events: list[Event], *, alongside: Awaitable[Any] | None = None
    ) -> None:
        """Store `events` as one document, then deliver them in this process.

        `alongside` is the write the events report: it goes to the store first,
        the event document right behind it without waiting for its answer, and
        the events are delivered here only once both are durable. If either
        fails, its error is raised and nothing is delivered here."""
        if not events:
            if alongside is not None:
                await alongside
            return
        key = self._key()
        batch = [e.as_dict() for e in events]
        # Stored as one JSON string when it is JSON (the events that reach the
        # browser are): a store encodes and checks one string far faster than a
        # batch of nested documents. Anything else is stored as documents.
        stored: Any
        try:
            stored = json.dumps(batch, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            stored = batch
        document = {
            "_id": key,
            "key": key,  # the same, in an indexed field: ranges of it are read
            "origin": self.instance_id,
            "events": stored,
        }
        if alongside is None:
            await self.store.events.insert_one(document)
        else:
            await together(alongside, self.store.events.insert_one(document))
        self.bus.deliver(events)

    async def poll_once(self) -> int:
        """Deliver events other processes stored since the last poll.

        The window looks back LOOKBACK_NS on every poll, so it is read as keys
        only; a document is fetched whole once, when its key is new and another
        process wrote it (the writer is in the key).
        """
        now = time.time_ns()
        since = f"{now - LOOKBACK_NS:020d}"
        cursor = self.store.events.find({"key": {"$gt": since}}, {"_id": 1})
        fresh = [str(doc["_id"]) async for doc in cursor if str(doc["_id"]) not in self._seen]
        own = f"-{self.instance_id}-"
        for key in fresh:
            self._seen[key] = now
        wanted = sorted(key for key in fresh if own not in key)
        delivered = 0
        if wanted:
            docs = await find_by_ids(self.store.events, list(wanted))
            for key in wanted:
                doc = docs.get(key)
                if doc is None or doc.get("origin") == self.instance_id:
                    continue
                try:
                    stored = doc.get("events", [])
                    items = json.loads(stored) if isinstance(stored, str) else stored
                    batch = [Event(e["type"], e["data"]) for e in items]
                except (KeyError, TypeError, ValueError):
                    log.error("malformed event document skipped", extra={"key": key})
                    continue
                self.bus.deliver(batch)
                delivered += len(batch)
        horizon = now - 2 * LOOKBACK_NS
        for key in [k for k, seen_at in self._seen.items() if seen_at < horizon]:
            del self._seen[key]
        return delivered

    async def prune(self, *, unkeyed: bool = False) -> None:
        """Delete events older than the retention; with `unkeyed`, also those
        stored before events carried their key in a field (done once at start:
        finding them reads the whole collection)."""
        cutoff = {"key": {"$lt": f"{time.time_ns() - int(self.retention_seconds * 1e9):020d}"}}
        await self.store.events.delete_many(
            {"$or": [cutoff, {"key": {"$exists": False}}]} if unkeyed else cutoff
        )

    async def _run(self, started_ns: int, stop: asyncio.Event) -> None:
        # Mark what was there before start() as seen: a new process does not replay
        # history. Only what was written before start(): an event published while
        # this first query runs is new and must be delivered.
        with contextlib.suppress(PyMongoError):
            window = {
                "$gt": f"{started_ns - LOOKBACK_NS:020d}",
                "$lt": f"{started_ns:020d}",
            }
            async for doc in self.store.events.find({"key": window}, {"_id": 1}):
                self._seen[str(doc["_id"])] = time.time_ns()
        last_prune: float | None = None
        while not stop.is_set():
            try:
                await self.poll_once()
                # Often, so that each prune deletes a fraction of a second's worth:
                # the embedded store deletes a document at a time, each in its own
                # transaction, and every other write waits for it. Two seconds'
                # worth at 500 messages/s held webhooks up by 150-250 ms each
                # time; thirty seconds' worth, for a second or two.
                if last_prune is None or time.monotonic() - last_prune > PRUNE_EVERY:
                    await self.prune(unkeyed=last_prune is None)
                    last_prune = time.monotonic()
            except PyMongoError as error:
                log.warning("event poll failed", extra={"error": str(error)})
            except Exception:
                # A malformed event document must not end delivery for good.
                log.exception("event poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)

    def start(self) -> None:
        self._stop_signal = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(time.time_ns(), self._stop_signal), name="events-relay"
        )

    async def stop(self, grace: float = 5.0) -> None:
        """End the relay after the poll it is in (a store command is not cut off)."""
        task, self._task = self._task, None
        if task is None:
            return
        assert self._stop_signal is not None
        self._stop_signal.set()
        _, late = await asyncio.wait({task}, timeout=grace)
        if late:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
