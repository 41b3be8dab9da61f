"""The store: MongoDB through PyMongo's asyncio API, and nothing else.

Only this package knows collection names and index shapes. Its shape follows two
rules that hold on a MongoDB replica set and on the embedded engine alike:

- uniqueness that protects data (one identity per kind and value, one message per
  inbox and provider id) is carried by a deterministic `_id`, never by a secondary
  unique index: `_id` lookups are a primary-key probe on every engine;
- hot queries are single-field equalities on an indexed field, or `_id` probes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

if TYPE_CHECKING:
    from hub.settings import Settings
    from hub.store.embedded import EmbeddedStore

log = logging.getLogger("hub.store")

Doc = dict[str, Any]

# The fields searched by words (`$text`), per collection: on MongoDB one text index
# of them (whole words, any case, no stemming: `default_language` "none"); the
# embedded engine answers the same query from SQLite FTS5 (hub.store.engine.text).
TEXT_INDEXES: dict[str, tuple[str, ...]] = {
    "messages": ("text", "email.subject"),
    "contacts": ("name",),
}
TEXT_INDEX_OPTIONS = {"default_language": "none", "name": "words"}
# The date field each one's matches are listed by (newest first), which the
# embedded engine keeps beside its words.
TEXT_ORDER: dict[str, str] = {"messages": "created_at", "contacts": "created_at"}

# Every collection the hub uses and the indexes it needs: (keys, options).
INDEXES: dict[str, list[tuple[list[tuple[str, Any]], dict[str, Any]]]] = {
    "contacts": [
        ([("created_at", DESCENDING)], {}),
        ([("created_by", ASCENDING)], {}),
        # When its opt-outs last changed: a greeting's re-check at its send reads
        # only those that changed since it was queued. (Not sparse: the embedded
        # engine seeks a range through a plain index only.)
        ([("opted_out_changed_at", ASCENDING)], {}),
        ([(f, "text") for f in TEXT_INDEXES["contacts"]], TEXT_INDEX_OPTIONS),
    ],
    "identities": [([("contact_id", ASCENDING)], {})],
    "inboxes": [],
    "conversations": [
        ([("contact_id", ASCENDING)], {}),
        ([("last_activity_at", DESCENDING)], {}),
        ([("inbox", ASCENDING)], {}),
        ([("assignee_id", ASCENDING)], {}),  # an agent's load (capacity), "mine"
        ([("snooze_until", ASCENDING)], {}),  # waking snoozed conversations
    ],
    # `provider_key` (an outbound send's) and `email.message_id` (an inbound
    # e-mail's) are sparse: an inbound SMS or chat message has neither, so it
    # has no entry to write in either (its insert is the ingest's hot path).
    "messages": [
        ([("conversation_id", ASCENDING)], {}),
        ([("provider_key", ASCENDING)], {"sparse": True}),
        ([("email.message_id", ASCENDING)], {"sparse": True}),
        # Set only while a file is still to fetch (hub.services.media_fetch).
        ([("media_pending", ASCENDING)], {"sparse": True}),
        ([(f, "text") for f in TEXT_INDEXES["messages"]], TEXT_INDEX_OPTIONS),
    ],
    # `next_attempt_at`: the dispatcher's claim reads only what is due (not what
    # was queued ahead for later).
    # `lease_until`: the recovery of interrupted sends reads only expired leases.
    "outbox": [
        ([("state", ASCENDING)], {}),
        ([("next_attempt_at", ASCENDING)], {}),
        ([("lease_until", ASCENDING)], {}),
    ],
    "early_statuses": [],
    # At-most-once sends held for their instant and marked handed to the provider
    # together: one document per group (its items' `_id`s) instead of a write per
    # item (hub.services.dispatcher); `at` for clearing old ones.
    "outbox_handed": [([("at", ASCENDING)], {})],
    "agents": [([("email", ASCENDING)], {})],
    "tokens": [([("agent_id", ASCENDING)], {})],
    "teams": [],
    "canned": [],
    "campaigns": [],
    # One record per campaign and recipient; `stage` ("<campaign>:<status>") finds a
    # campaign's pending, queued or sent ones without reading the others.
    "campaign_sends": [([("campaign_id", ASCENDING)], {}), ([("stage", ASCENDING)], {})],
    # Greetings: one per contact, occasion and year; `due_at` only while still to send.
    "greetings_sent": [([("due_at", ASCENDING)], {}), ([("date", ASCENDING)], {})],
    "settings": [],  # documents of settings kept in the store (the greetings')
    "leases": [],
    "presence": [([("agent_id", ASCENDING)], {})],  # open inbox WebSockets (assignment)
    "assignment": [],  # the round-robin turn of each inbox
    # Send-later: only messages still scheduled (as `outbox` holds only work to do).
    "scheduled_sends": [([("send_at", ASCENDING)], {})],
    # Reminders: `due_at` is set only while one is still to fire.
    "reminders": [([("due_at", ASCENDING)], {}), ([("agent_id", ASCENDING)], {})],
    # First-response SLA: one document per breach and stage (its `_id` makes it once).
    "sla_breaches": [([("at", ASCENDING)], {})],
    # Bots: one turn per inbound message a bot answers (its `_id` is the message's,
    # so of two processes one answers; `state` "working" finds an interrupted one).
    "bot_turns": [([("state", ASCENDING)], {})],
    # Media: one claim per file being fetched (its `_id` is the attachment's).
    "media_fetches": [],
    "events": [([("key", ASCENDING)], {})],
    "audit": [([("at", DESCENDING)], {}), ([("agent_id", ASCENDING)], {})],
}


# How long a start waits for the store to build its indexes (an index new in this
# version, on a collection of millions, is built then).
INDEX_BUILD_SECONDS = 3600

IDS_PER_COMMAND = 1000  # also the most the embedded engine looks up by primary key
# The embedded engine refuses an `$in` on any other field past about 500 values
# ("Expression tree is too large"): a list the hub builds stays under this.
VALUES_PER_IN = 400


async def together[A, B](first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Send two store commands at once (the first first) and wait for both; their
    results. An error is raised once both are over, so neither is left running
    behind the caller."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (one, two):
        if isinstance(outcome, BaseException):
            raise outcome
    return one, two  # type: ignore[return-value]


async def find_by_ids(
    collection: Any, ids: list[Any], projection: dict[str, Any] | None = None
) -> dict[Any, dict[str, Any]]:
    """Documents by `_id` (only the `projection`'s fields, if given), in one
    command (the embedded engine answers an `_id` `$in` from its primary key,
    as MongoDB does)."""
    wanted = list(dict.fromkeys(ids))
    found: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(wanted), IDS_PER_COMMAND):
        chunk = wanted[start : start + IDS_PER_COMMAND]
        async for doc in collection.find({"_id": {"$in": chunk}}, projection):
            found[doc["_id"]] = doc
    return found


DUPLICATE_KEY = 11000
# An index's options or name differ from an existing one's of the same keys
# (MongoDB's IndexOptionsConflict, IndexKeySpecsConflict).
INDEX_CONFLICTS = (85, 86)
INDEX_NOT_FOUND = 27


async def insert_new(collection: Any, docs: list[dict[str, Any]]) -> set[Any]:
    """Insert `docs` in one unordered command, skipping those whose `_id` exists
    already; return the `_id`s skipped. Any other write error is raised."""
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as error:
        refused = set()
        for failure in error.details.get("writeErrors", []):
            if failure.get("code") != DUPLICATE_KEY:
                raise
            refused.add(docs[failure["index"]]["_id"])
        return refused
    return set()


def new_id() -> str:
    return str(ObjectId())


def derived_id(*parts: str) -> str:
    """A stable id for a natural key (the dedupe key of a message, a thread...)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12)
    return digest.hexdigest()


def identity_id(kind: str, value: str) -> str:
    return f"{kind}:{value}"


class CommandCounter(monitoring.CommandListener):
    """Counts the commands this process sends to the store, by name, and by name
    and collection."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.on: Counter[tuple[str, str]] = Counter()
        self.failures = 0
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        with self._lock:
            self.counts[event.command_name] += 1
            if isinstance(target, str):
                self.on[(event.command_name, target)] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:  # type: ignore[override]
        with self._lock:
            self.failures += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(
                n
                for name, n in self.counts.items()
                if name not in ("hello", "ismaster", "isMaster", "endSessions")
            )


@dataclass
class Store:
    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    commands: CommandCounter
    embedded: EmbeddedStore | None = None
    uri: str = ""
    _collections: dict[str, AsyncCollection[Doc]] = field(default_factory=dict)

    @classmethod
    async def for_settings(cls, settings: Settings) -> Store:
        """Connect to the store a hub's settings name."""
        return await cls.open(
            uri=settings.store.uri,
            database=settings.store.database,
            data_dir=settings.data_dir,
            server_selection_timeout_ms=settings.store.server_selection_timeout_ms,
            command_timeout_ms=settings.store.command_timeout_ms,
        )

    @classmethod
    async def open(
        cls,
        *,
        uri: str,
        database: str,
        data_dir: Path,
        server_selection_timeout_ms: int = 3000,
        command_timeout_ms: int | None = None,
    ) -> Store:
        """Connect to `uri`, or to the embedded store in `data_dir` when it is empty.

        `command_timeout_ms` bounds how long a command waits for a free connection
        and then for the store's answer (the driver's `waitQueueTimeoutMS` and
        `socketTimeoutMS`): a store that hangs fails the commands waiting on it
        with a `PyMongoError` (a webhook answers 503) instead of holding them, and
        everything queued behind them, until the driver's heartbeat gives up on
        the server (up to its 10 s interval plus the connect timeout later; never,
        for a MongoDB that answers heartbeats while a command hangs). The driver's
        `timeoutMS` is not used: with it set, a command to a store that is down
        waits that long to select a server, not `server_selection_timeout_ms`.
        The hub passes `store.command_timeout_ms`; None (the default) leaves
        commands unbounded, for bulk work outside the hub (seeding a benchmark's
        store).
        """
        embedded = None
        if not uri:
            from hub.store.embedded import EmbeddedStore

            embedded = EmbeddedStore(data_dir)
            uri = await embedded.start()
        counter = CommandCounter()
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=server_selection_timeout_ms,
            socketTimeoutMS=command_timeout_ms,
            waitQueueTimeoutMS=command_timeout_ms,
            timeoutMS=None,
            event_listeners=[counter],
            appname="hub",
        )
        return cls(client=client, db=client[database], commands=counter, embedded=embedded, uri=uri)

    def __getattr__(self, name: str) -> AsyncCollection[Doc]:
        if name in INDEXES:
            coll = self._collections.get(name)
            if coll is None:
                coll = self._collections[name] = self.db[name]
            return coll
        raise AttributeError(name)

    async def ensure_indexes(self) -> None:
        """Create every collection and index; safe to run at every start.

        An index built at a start (new in this version, or made again with other
        options) takes as long as its collection is large, on any store. Its
        commands go through a client of their own that waits up to
        INDEX_BUILD_SECONDS for a reply, not the hub's command timeout, which
        failed the start while the store went on building. A store that cannot
        be reached still fails the start after the server selection timeout
        (`pymongo.timeout` would lift that bound too).
        """
        if not self.uri:  # a store made around a client of the caller's
            await self._ensure_indexes(self.db)
            return
        options = self.client.options
        connect = options.pool_options.connect_timeout
        builder: AsyncMongoClient[Doc] = AsyncMongoClient(
            self.uri,
            serverSelectionTimeoutMS=round(options.server_selection_timeout * 1000),
            connectTimeoutMS=None if connect is None else round(connect * 1000),
            socketTimeoutMS=INDEX_BUILD_SECONDS * 1000,
            appname="hub",
        )
        try:
            await self._ensure_indexes(builder[self.db.name])
        finally:
            await builder.close()

    @staticmethod
    async def _ensure_indexes(db: AsyncDatabase[Doc]) -> None:
        existing = set(await db.list_collection_names())
        for name, indexes in INDEXES.items():
            if name not in existing:
                try:
                    await db.create_collection(name)
                except PyMongoError as error:
                    if "already exists" not in str(error):
                        raise
            for keys, options in indexes:
                try:
                    await db[name].create_index(keys, **options)
                except OperationFailure as error:
                    if error.code not in INDEX_CONFLICTS:
                        raise
                    # An index of these keys from an earlier version, with other
                    # options (not sparse yet): made again as this version has it.
                    log.warning(
                        "index replaced",
                        extra={"collection": name, "index": keys, "options": options},
                    )
                    try:
                        await db[name].drop_index(keys)
                    except OperationFailure as gone:
                        if gone.code != INDEX_NOT_FOUND:  # another hub starting dropped it
                            raise
                    await db[name].create_index(keys, **options)

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    async def close(self) -> None:
        await self.client.close()
        if self.embedded is not None:
            await self.embedded.stop()
