"""The embedded store's CPU per message for ingest's writes, on a small store and on
a copy of a large seeded one, without a hub or HTTP in between.

    .venv/bin/python -m bench.store_writes --data-dir /tmp/seed100k
    .venv/bin/python -m bench.store_writes            # the small store only

Each store is an embedded store process (`bench.seed.StoreProcess`); this process
sends it, batch after batch of 128, what the hub's ingest sends for a batch, made
by the hub's own functions (`inbound_message_doc`, `Ingestor._summary_updates`,
`new_contact_doc`, `opened_with_summary`...):

- known senders (each one once, as to a hub that has not seen them): their
  conversations read by `_id`, the messages inserted, the summaries written;
- new senders: their conversations and identities read by `_id` (none found), then
  one insert each of contacts, identities, messages and conversations.

It prints the store process's CPU per message (user + system, from
/proc/<pid>/stat, robust to the machine's load: the median of 5 windows) per
command, the kernel's share, and the bytes the store wrote per message (its log
and the checkpoints). The small store is seeded here (`--small` contacts, ten
messages each); the large one is the seeded `--data-dir` of `bench.ingest
--new-senders`, copied (about 1.4 GB for 100,000 contacts), so it stays as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.seed import (
    INBOX,
    MARKER,
    MEDIUM,
    TEXTS,
    StoreProcess,
    copy_store,
    ensure_seeded,
    phone,
    seeded_conversation_id,
)
from hub.model import IdentityRef, InboundText
from hub.services.contacts import _identity_doc, new_contact_doc
from hub.services.ingest import (
    Ingestor,
    conversation_id_for,
    message_id_for,
    new_conversation_doc,
    opened_with_summary,
)
from hub.services.messages import inbound_message_doc
from hub.store import Store, find_by_ids, identity_id, insert_new

BATCH = 128
WINDOWS = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
NEW_NUMBERS = 16660000000  # none overlapping the seeded ones (+1 555 100 0000 on)


class Meter:
    """The store process's CPU (user, system) and bytes written, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self) -> tuple[float, float, int]:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        io = dict(
            line.split(": ") for line in Path(f"/proc/{self.pid}/io").read_text().splitlines()
        )
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(io["wchar"])


def summary_updates() -> Callable[[str, dict[str, Any], int], list[Any]]:
    """Ingest's own summary updates of a stored conversation (no bot inboxes)."""
    ingestor = Ingestor.__new__(Ingestor)  # only its summary: no store, events or loop
    ingestor.bot_inboxes = {}
    return ingestor._summary_updates


def inbound(rng: random.Random, number: str) -> InboundText:
    return InboundText(
        inbox=INBOX,
        medium=MEDIUM,
        provider_id=f"SW{rng.getrandbits(64):016x}",
        sender=IdentityRef(kind="phone", value=number),
        text=rng.choice(TEXTS),
        received_at=datetime.now(UTC),
    )


def known_batch(store: Store, rng: random.Random, customers: list[int]) -> list[Any]:
    """The commands of a batch of known senders, each a coroutine factory."""
    summarise = summary_updates()
    convs = [seeded_conversation_id(i) for i in customers]
    docs = [
        inbound_message_doc(e, message_id_for(INBOX, e.provider_id), conv)
        for e, conv in zip((inbound(rng, phone(i)) for i in customers), convs, strict=True)
    ]
    updates = [u for doc in docs for u in summarise(doc["conversation_id"], doc, 1)]
    return [
        ("read", lambda: find_by_ids(store.conversations, convs)),
        ("insert messages", lambda: insert_new(store.messages, docs)),
        ("summaries", lambda: store.conversations.bulk_write(updates, ordered=False)),
    ]


def new_batch(store: Store, rng: random.Random, first: int) -> list[Any]:
    """The commands of a batch of new senders, each a coroutine factory."""
    rows = []
    for offset in range(BATCH):
        number = f"+{NEW_NUMBERS + first + offset}"
        ref = IdentityRef(kind="phone", value=number, name=f"New {first + offset}")
        key = identity_id("phone", number)
        contact_id = f"w{first + offset:023d}"
        event = inbound(rng, number)
        conv = new_conversation_doc(
            conversation_id_for(INBOX, MEDIUM, key),
            INBOX,
            MEDIUM,
            key,
            contact_id,
            event.received_at,
        )
        message = inbound_message_doc(event, message_id_for(INBOX, event.provider_id), conv["_id"])
        rows.append(
            (
                new_contact_doc(contact_id, ref),
                _identity_doc(key, ref, contact_id),
                message,
                opened_with_summary(conv, message, 1),
            )
        )

    async def reads() -> None:
        await find_by_ids(store.conversations, [r[3]["_id"] for r in rows])
        await find_by_ids(store.identities, [r[1]["_id"] for r in rows])

    return [
        ("reads", reads),
        ("insert contacts", lambda: insert_new(store.contacts, [r[0] for r in rows])),
        ("insert identities", lambda: insert_new(store.identities, [r[1] for r in rows])),
        ("insert messages", lambda: insert_new(store.messages, [r[2] for r in rows])),
        ("insert conversations", lambda: insert_new(store.conversations, [r[3] for r in rows])),
    ]


async def measure(data_dir: Path, batches: int) -> dict[str, float]:
    """us of store CPU (and bytes written) per message, per command and in all."""
    conversations = json.loads((data_dir / MARKER).read_text())["conversations"]
    process = await StoreProcess(data_dir).start()
    store = await Store.open(uri=process.uri, database="hub", data_dir=data_dir)
    meter = Meter(process.pid)
    rng = random.Random(17)
    customers = rng.sample(range(conversations), min(conversations, batches * BATCH))
    figures: dict[str, float] = {}
    try:
        for mode in ("known", "new"):
            windows: list[dict[str, float]] = []
            per_window = max(1, batches // WINDOWS)
            for window in range(WINDOWS + 1):  # the first one warms up
                spent: dict[str, float] = {}
                first_user, first_system, first_written = meter.read()
                for number in range(per_window):
                    index = window * per_window + number
                    if mode == "known":
                        chunk = [
                            customers[(index * BATCH + k) % len(customers)] for k in range(BATCH)
                        ]
                        steps = known_batch(store, rng, chunk)
                    else:
                        steps = new_batch(store, rng, index * BATCH)
                    for name, step in steps:
                        before = sum(meter.read()[:2])
                        await step()
                        spent[name] = spent.get(name, 0.0) + sum(meter.read()[:2]) - before
                user, system, written = meter.read()
                messages = per_window * BATCH
                if window:
                    row = {f"{mode}: {k}": v / messages * 1e6 for k, v in spent.items()}
                    row[f"{mode}: all"] = (
                        (user + system - first_user - first_system) / messages * 1e6
                    )
                    row[f"{mode}: of which kernel"] = (system - first_system) / messages * 1e6
                    row[f"{mode}: KB written"] = (written - first_written) / messages / 1024
                    windows.append(row)
            for key in windows[0]:
                figures[key] = statistics.median(w[key] for w in windows)
    finally:
        await store.close()
        process.stop()
    return figures


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-store-writes-"))
    try:
        columns: dict[str, dict[str, float]] = {}
        small = work / "small"
        await ensure_seeded(small, args.small, args.small * 10)
        print(f"small store: {args.small:,} contacts, {args.small * 10:,} messages", flush=True)
        columns["small"] = await measure(small, args.batches)
        if args.data_dir:
            source = Path(args.data_dir)
            marker = json.loads((source / MARKER).read_text())
            await ensure_seeded(source, marker["conversations"], marker["messages"])
            seconds = copy_store(source, work / "large")
            print(
                f"large store: {marker['conversations']:,} contacts, "
                f"{marker['messages']:,} messages (copied in {seconds:.1f} s)",
                flush=True,
            )
            (work / "large" / MARKER).write_text(json.dumps(marker))
            columns["large"] = await measure(work / "large", args.batches)
        print(
            f"\nstore CPU per message, us (median of {WINDOWS} windows of "
            f"{args.batches // WINDOWS} batches of {BATCH})"
        )
        names = list(columns["small"])
        print(f"  {'':34s}" + "".join(f"{c:>10s}" for c in columns))
        for name in names:
            print(f"  {name:34s}" + "".join(f"{columns[c][name]:10.0f}" for c in columns))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="a store seeded by bench.ingest --new-senders")
    parser.add_argument("--small", type=int, default=1000, help="contacts of the small store")
    parser.add_argument("--batches", type=int, default=60, help="batches per mode and store")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
