"""A seeded embedded store for the benchmarks (`bench.ingest --seeded`, `bench.inbox`).

Contacts, each with a phone identity and a conversation on the bench inbox, and
messages in those conversations, written in bulk (`insert_many`, 5,000
documents a command) in the shapes the hub writes them, made by the hub's own
functions (`new_contact_doc`, the identity document `resolve_many` writes,
`new_conversation_doc`, `inbound_message_doc`, `outbound_message_doc`) and with
their `_id`s derived the same way (`identity_id`, `conversation_id_for`,
`message_id_for`): a webhook from a seeded number lands in its seeded
conversation. Contact `i` has the number `phone(i)` (+1 555 100 0000 + i).

Threads have skewed lengths (a few hundred messages for the longest, a handful
for most; 6 in 10 inbound, the first always); a quarter of the conversations
are open, a tenth snoozed, the rest resolved.

A data directory once seeded holds a marker with its sizes (`MARKER`): a later
run asking for the same sizes reuses it (`seeded_already`) instead of seeding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hub.addresses import normalize_phone  # noqa: E402
from hub.model import IdentityRef, InboundText  # noqa: E402
from hub.services.contacts import _identity_doc, new_contact_doc  # noqa: E402
from hub.services.ingest import (  # noqa: E402
    conversation_id_for,
    message_id_for,
    new_conversation_doc,
)
from hub.services.messages import inbound_message_doc, outbound_message_doc  # noqa: E402
from hub.services.outbox import provider_key  # noqa: E402
from hub.store import INDEXES, Store, identity_id  # noqa: E402

INBOX = "bench"
MEDIUM = "sms"
MARKER = "bench-seed.json"
OLD_MARKER = "bench-inbox.json"  # what bench.inbox called it before this module
CHUNK = 5_000
FIRST_NUMBER = 15551000000
AGENT = {"type": "agent", "id": "a0000000000000000000000"}

TEXTS = [
    "Hi, where is my order?",
    "Thanks, that helps a lot.",
    "Can I change the delivery address to my office?",
    "We have shipped it this morning; the tracking link is in your e-mail.",
    "Is the blue one back in stock?",
    "I was charged twice for the same order, can you check?",
    "Sure, I have refunded the second charge.",
    "What time do you open on Saturdays?",
    "Perfect, see you then!",
    "Could you send me the invoice as a PDF?",
]


def ms(at: datetime) -> datetime:
    """`at` to the millisecond, as the store keeps it."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def phone(index: int) -> str:
    """The number of seeded contact `index`, as the hub stores it (E.164)."""
    return normalize_phone(f"+{FIRST_NUMBER + index}")


def seeded_conversation_id(index: int) -> str:
    return conversation_id_for(INBOX, MEDIUM, identity_id("phone", phone(index)))


# -- the documents ------------------------------------------------------------------------


def thread_lengths(rng: random.Random, conversations: int, messages: int) -> list[int]:
    """A length per conversation, at least 1 each, summing to `messages`; skewed
    like a real inbox (most threads short, a few long)."""
    weights = [rng.paretovariate(1.6) for _ in range(conversations)]
    spare = messages - conversations
    total = sum(weights)
    lengths = [1 + int(spare * w / total) for w in weights]
    for index in rng.sample(range(conversations), messages - sum(lengths)):
        lengths[index] += 1
    return lengths


def seed_documents(
    conversations: int, messages: int, seed: int = 4
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[list[int]]]:
    """Contacts, identities and conversations, one of each per customer, and the
    plan of the threads ([customer, length]); the messages are made per chunk by
    `message_chunks` (a million at once would be a lot of memory)."""
    if messages < conversations:
        raise ValueError("at least one message per conversation")
    rng = random.Random(seed)
    now = ms(datetime.now(UTC))
    contacts, identities, convs = [], [], []
    lengths = thread_lengths(rng, conversations, messages)
    plan = []
    for index, length in enumerate(lengths):
        number = phone(index)
        ref = IdentityRef(kind="phone", value=number, name=f"Customer {index:05d}")
        contact_id = f"c{index:023d}"
        key = identity_id("phone", number)
        created = ms(now - timedelta(days=60 * rng.random() + 0.01))
        contact = new_contact_doc(contact_id, ref)
        contact["created_at"] = created
        contacts.append(contact)
        identity = _identity_doc(key, ref, contact_id)
        identity["created_at"] = created
        identities.append(identity)
        roll = rng.random()
        status = "open" if roll < 0.25 else "snoozed" if roll < 0.35 else "resolved"
        conv = new_conversation_doc(
            conversation_id_for(INBOX, MEDIUM, key), INBOX, MEDIUM, key, contact_id, created
        )
        conv.update(
            status=status,
            unread=rng.randrange(1, 4) if status == "open" else 0,
            snooze_until=now + timedelta(days=2) if status == "snoozed" else None,
            resolved_at=None,
        )
        convs.append(conv)
        plan.append([index, length])
    return contacts, identities, convs, plan


def message_chunks(
    convs: list[dict[str, Any]], plan: list[list[int]], seed: int = 4
) -> Iterator[list[dict[str, Any]]]:
    """Yield lists of about CHUNK message documents; fill in each conversation's
    summary (last message, last activity, last inbound) as its thread is made."""
    rng = random.Random(seed + 1)
    now = ms(datetime.now(UTC))
    chunk: list[dict[str, Any]] = []
    for index, length in plan:
        conv = convs[index]
        sender = IdentityRef(kind="phone", value=conv["identity"].split(":", 1)[1])
        span = (now - conv["created_at"]).total_seconds()
        times = sorted(
            ms(conv["created_at"] + timedelta(seconds=span * rng.random())) for _ in range(length)
        )
        last_in = None
        inbound_count = 0
        for number, at in enumerate(times):
            inbound = number == 0 or rng.random() < 0.6
            text = rng.choice(TEXTS)
            if inbound:
                provider_id = f"SEED{index:06d}{number:05d}"
                event = InboundText(
                    inbox=INBOX,
                    medium=MEDIUM,
                    provider_id=provider_id,
                    sender=sender,
                    received_at=at,
                    text=text,
                )
                doc = inbound_message_doc(event, message_id_for(INBOX, provider_id), conv["_id"])
                last_in = at
                inbound_count += 1
            else:
                provider_id = f"OUT{index:06d}{number:05d}"
                doc = outbound_message_doc(
                    f"o{index:011d}{number:012d}", conv, text=text, sender=AGENT, now=at
                )
                doc.update(
                    status="delivered",
                    provider_id=provider_id,
                    provider_key=provider_key(INBOX, provider_id),
                )
            chunk.append(doc)
        last = chunk[-1]
        conv["last_message"] = {
            "id": last["_id"],
            "text": last["text"],
            "kind": "text",
            "direction": last["direction"],
            "at": last["created_at"],
        }
        conv["last_activity_at"] = last["created_at"]
        conv["last_inbound_at"] = last_in
        conv["inbound"] = inbound_count  # what its summary has taken in, as ingest counts
        if conv["status"] == "resolved":
            conv["resolved_at"] = last["created_at"]
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def insert_chunks(collection: Any, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), CHUNK):
        await collection.insert_many(docs[start : start + CHUNK], ordered=False)


async def seed_store(uri: str, data_dir: Path, conversations: int, messages: int) -> float:
    """Fill the fresh store at `uri` (serving `data_dir`); write the marker;
    return the seconds it took."""
    started = time.perf_counter()
    # A generous timeout: the driver's heartbeats share the store's one thread
    # with the bulk inserts, and one of 5,000 documents may outlast the hub's 3 s.
    store = await Store.open(
        uri=uri, database="hub", data_dir=data_dir, server_selection_timeout_ms=120_000
    )
    try:
        await store.ensure_indexes()
        contacts, identities, convs, plan = seed_documents(conversations, messages)
        await insert_chunks(store.contacts, contacts)
        await insert_chunks(store.identities, identities)
        written, report = 0, 100_000
        for chunk in message_chunks(convs, plan):
            await store.messages.insert_many(chunk, ordered=False)
            written += len(chunk)
            if written >= report:
                report += 100_000
                took = time.perf_counter() - started
                print(f"  {written:,} messages ({took:.0f} s) ...", flush=True)
        await insert_chunks(store.conversations, convs)
        counts = {
            name: await store.db[name].estimated_document_count()
            for name in ("contacts", "identities", "conversations", "messages")
        }
    finally:
        await store.close()
    elapsed = time.perf_counter() - started
    (data_dir / MARKER).write_text(
        json.dumps(
            {
                "conversations": conversations,
                "messages": messages,
                "counts": counts,
                "seconds": round(elapsed, 1),
                "indexes": indexes_signature(),
            }
        )
    )
    print(f"  stored: {counts}", flush=True)
    return elapsed


def seeded_already(data_dir: Path, conversations: int, messages: int) -> bool:
    for name in (MARKER, OLD_MARKER):
        with contextlib.suppress(OSError, ValueError):
            marker = json.loads((data_dir / name).read_text())
            return bool(
                marker.get("conversations") == conversations and marker.get("messages") == messages
            )
    return False


def seeding_seconds(data_dir: Path) -> float | None:
    """How long the run that seeded `data_dir` took to seed it, if it said."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return float(json.loads((data_dir / MARKER).read_text())["seconds"])
    return None


def check_empty_or_seeded(data_dir: Path, conversations: int, messages: int) -> bool:
    """Whether `data_dir` must be seeded (False: seeded already with these sizes);
    refuse a directory that holds anything else."""
    if seeded_already(data_dir, conversations, messages):
        return False
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} holds something else: give an empty or new directory")
    return True


# -- the store process --------------------------------------------------------------------


class StoreProcess:
    """An embedded store started by the benchmark, not by the hub: on a large data
    directory the engine takes longer to open than a hub waits for it. A hub
    given the same data directory attaches to it, as any hub command does to a
    store already running. `pid` is the process whose CPU is the store's."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.uri = ""
        self.open_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> StoreProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "hub.store.embedded_server", "--data-dir", str(self.data_dir)],
            cwd=ROOT,
            stdin=subprocess.PIPE,  # the store exits when this process does
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = (await asyncio.to_thread(self.process.stdout.readline)).decode().strip()
        if not line.startswith("READY "):
            raise SystemExit(f"the embedded store did not start: {line!r}")
        self.open_seconds = time.perf_counter() - started
        self.uri = f"mongodb://127.0.0.1:{line.split()[1]}/?directConnection=true"
        return self

    def stop(self, timeout: float = 60) -> None:
        """Stop it and wait (the data directory is then free to copy or reopen)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # Its stdin closing is its stop signal (it ignores SIGTERM while a parent
        # holds that pipe): it closes the engine cleanly, so the files can be copied.
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def indexes_signature() -> str:
    """A digest of the indexes the hub makes at start (`hub.store.INDEXES`)."""
    return hashlib.blake2b(repr(sorted(INDEXES.items())).encode(), digest_size=8).hexdigest()


async def update_indexes(data_dir: Path) -> float | None:
    """Give a seeded store the indexes the hub has now, once (a store seeded
    before an index was added would otherwise build it in every run's copy,
    inside the hub's start, longer than a hub waits for a command); the seconds
    it took, or None when they were there already."""
    path = data_dir / MARKER
    marker = json.loads(path.read_text())
    if marker.get("indexes") == indexes_signature():
        return None
    print("  adding the indexes the hub has gained since the seeding ...", flush=True)
    started = time.perf_counter()
    process = await StoreProcess(data_dir).start()
    try:
        # An index over a million messages is built in one command that holds the
        # store's one thread for many minutes: the driver's heartbeats must not
        # give up on it meanwhile (their timeout is the connect timeout).
        store = await Store.open(
            uri=process.uri,
            database="hub",
            data_dir=data_dir,
            server_selection_timeout_ms=7_200_000,
        )
        try:
            await store.ensure_indexes()
        finally:
            await store.close()
    finally:
        process.stop(timeout=7200)
    marker["indexes"] = indexes_signature()
    path.write_text(json.dumps(marker))
    took = time.perf_counter() - started
    print(f"  indexes added in {took:.1f} s", flush=True)
    return took


async def ensure_seeded(data_dir: Path, conversations: int, messages: int) -> float | None:
    """Seed `data_dir` unless it holds these sizes already (then None, after
    bringing its indexes up to date); the store used to seed is stopped again.
    Return the seconds seeding took."""
    if not check_empty_or_seeded(data_dir, conversations, messages):
        if (data_dir / MARKER).exists():
            await update_indexes(data_dir)
        return None
    store = await StoreProcess(data_dir).start()
    try:
        return await seed_store(store.uri, data_dir, conversations, messages)
    finally:
        store.stop()


def copy_store(source: Path, target: Path) -> float:
    """Copy a stopped store's files (the SQLite database and its journal), so a
    run can write to the copy and leave the seeded store as it was; seconds."""
    started = time.perf_counter()
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name.startswith("hub.sqlite3"):
            shutil.copyfile(path, target / path.name)
    return time.perf_counter() - started
