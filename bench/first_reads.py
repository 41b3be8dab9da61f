"""What the embedded store's first reads after a start cost, on a copy of a large
seeded store.

    .venv/bin/python -m bench.first_reads --data-dir /tmp/seed100k
    .venv/bin/python -m bench.first_reads --contacts 10000   # a store seeded here

After a start the store learns, once per field, what its index can answer for
(whether a document holds an array there, or a key of a type that does not sort
as BSON does). Each read below is one a hub makes soon after it starts: the
check of every collection and index that comes before it serves, the media
sweep's look for files to fetch (at every start), a thread opened in the
inbox, the inbox's first page, a contact's conversations and identities, and
a search of the contacts by name, phone or e-mail (a `$regex`). Each
round starts the store (`bench.seed.StoreProcess`) on the copy, runs each read
once (first) and again (then), and stops it; the figures are the medians over
the rounds. A first read includes the store's empty page cache as well as what
it learns. Each read holds the store's one loop, so a slow first read stalls
every webhook waiting on the store meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.seed import MARKER, StoreProcess, copy_store, ensure_seeded, seeded_conversation_id
from hub.services.contacts import text_filter
from hub.store import CommandCounter, Store

Read = Callable[[Any], Awaitable[Any]]


def ensure_indexes(db: Any) -> Awaitable[None]:
    """What a hub's start asks of the store before it serves (`Store.ensure_indexes`)."""
    return Store(client=db.client, db=db, commands=CommandCounter()).ensure_indexes()


def reads(conversation: dict[str, Any]) -> list[tuple[str, Read]]:
    conv_id, contact_id = conversation["_id"], conversation["contact_id"]
    return [
        ("a hub's start: every collection and index", ensure_indexes),
        (
            "media sweep: messages with a file to fetch",
            lambda db: (
                db.messages.find(
                    {"media_pending": True}, {"attachments": 1, "conversation_id": 1, "inbox": 1}
                )
                .limit(200)
                .to_list()
            ),
        ),
        (
            "a thread: one conversation's messages",
            lambda db: (
                db.messages.find({"conversation_id": conv_id})
                .sort([("created_at", -1), ("seq", -1), ("_id", -1)])
                .limit(50)
                .to_list()
            ),
        ),
        (
            "the inbox: newest conversations",
            lambda db: (
                db.conversations.find({}).sort([("last_activity_at", -1)]).limit(50).to_list()
            ),
        ),
        (
            "a contact's conversations",
            lambda db: db.conversations.find({"contact_id": contact_id}).to_list(),
        ),
        (
            "a contact's identities",
            lambda db: db.identities.find({"contact_id": contact_id}).to_list(),
        ),
        (
            "a contact search no contact matches",
            lambda db: db.contacts.find(text_filter("nobody"), {"_id": 1}).limit(500).to_list(),
        ),
    ]


async def a_conversation(data_dir: Path, conversations: int) -> dict[str, Any]:
    """A seeded conversation, read in a start of its own (not timed)."""
    process = await StoreProcess(data_dir).start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(process.uri)
    try:
        found = await client.hub.conversations.find_one(
            {"_id": seeded_conversation_id(conversations // 2)}
        )
    finally:
        await client.close()
        process.stop()
    if found is None:
        raise SystemExit(f"{data_dir} holds no seeded conversation")
    return found


async def one_round(data_dir: Path, conversation: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Start the store, time each read first and then, stop it."""
    process = await StoreProcess(data_dir).start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(process.uri)
    try:
        db = client.hub
        timed: dict[str, tuple[float, float]] = {}
        for name, read in reads(conversation):
            took = []
            for _ in range(2):
                started = time.perf_counter()
                await read(db)
                took.append(time.perf_counter() - started)
            timed[name] = (took[0], took[1])
        return timed
    finally:
        await client.close()
        process.stop()


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-first-reads-"))
    try:
        if args.data_dir:
            source = Path(args.data_dir)
            marker = json.loads((source / MARKER).read_text())
        else:
            source = work / "seeded"
            marker = {"conversations": args.contacts, "messages": args.contacts * 10}
        await ensure_seeded(source, marker["conversations"], marker["messages"])
        store = work / "copy"
        seconds = copy_store(source, store)
        print(
            f"store: {marker['conversations']:,} contacts, {marker['messages']:,} messages "
            f"(copied in {seconds:.1f} s)",
            flush=True,
        )
        conversation = await a_conversation(store, marker["conversations"])
        rounds = [await one_round(store, conversation) for _ in range(args.rounds)]
        print(f"\nfirst read after a start / the same read again, ms (median of {args.rounds})")
        for name in rounds[0]:
            first = statistics.median(r[name][0] for r in rounds) * 1000
            then = statistics.median(r[name][1] for r in rounds) * 1000
            print(f"  {name:44s} {first:9.1f} {then:9.1f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="a store seeded by bench.ingest --new-senders")
    parser.add_argument("--contacts", type=int, default=10_000, help="without --data-dir")
    parser.add_argument("--rounds", type=int, default=3, help="store starts")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
