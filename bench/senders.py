"""The ingest bench's senders mode (`python -m bench.ingest --new-senders`): what a
first message from a new number costs, on an empty store and on a seeded one,
beside messages from known customers. See `bench/ingest.py` for how to run it.

Four phases, each a closed loop of `--concurrency` (128) senders posting signed
webhooks for `--phase` seconds, each phase on a hub and an embedded store
started for it (the store by this benchmark, the hub attaching to it):

1. known senders, seen, empty store: a fresh empty store, a first message from
   each of `--senders` (1,000) numbers, then messages from those numbers at
   random (what the default `bench.ingest` run measures, at 128 senders);
2. known senders, seeded store, fresh hub: a copy of the seeded store, a hub just
   started; every message from a seeded contact this hub has not seen yet (a
   shuffled walk through them: its conversation is in the store, not in the
   hub's memory);
3. new senders, empty store: a fresh empty store, every message from a number
   never seen before (its contact, identity and conversation are created);
4. new senders, seeded store: the same on the hub and store of phase 2 (so it
   runs right after phase 2, before phase 3).

Before phases 2 to 4, 400 messages from other new numbers (2 s at 200/s) warm
the hub up without teaching it any seeded customer.

Per phase: throughput (the median of 10-second windows, and the slowest), ack
p50/p99 (each webhook's round trip in the closed loop), the hub's and the
store's CPU per message (from /proc/<pid>/stat at each 10-second mark: the
median of the windows) and store commands per message (the hub's
`hub_store_commands`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingest import (
    ROOT,
    Sender,
    cpu_seconds,
    free_port,
    metric,
    paced,
    percentile,
    post,
    wait_http,
    write_config,
)
from bench.seed import (
    FIRST_NUMBER,
    StoreProcess,
    copy_store,
    ensure_seeded,
    seeded_already,
    seeding_seconds,
)

TARGET_RATE = 1000.0
TARGET_P99_MS = 250.0
TARGET_STORE_RATIO = 1.2
WINDOW = 10.0

# Number blocks (+1 NPA NXX XXXX, all "possible" numbers), none overlapping the
# seeded contacts (+1 555 100 0000 on).
SEEN_FIRST = 15550000000  # phase 1's known senders (as the default bench)
NEW_FIRST = 16000000000  # each phase's new senders: its own block of ten million
WARM_FIRST = 17000000000  # the warm-ups


def new_numbers(block: int) -> Iterator[int]:
    return itertools.count(NEW_FIRST + block * 10_000_000)


def seeded_walk(contacts: int, seed: int = 12) -> Iterator[int]:
    """The seeded contacts' numbers in a shuffled order, each once, then again."""
    order = list(range(contacts))
    random.Random(seed).shuffle(order)
    while True:
        for index in order:
            yield FIRST_NUMBER + index


def random_of(numbers: list[int]) -> Iterator[int]:
    while True:
        yield random.choice(numbers)


@contextlib.asynccontextmanager
async def hub_on(data_dir: Path, folder: Path) -> AsyncIterator[dict[str, Any]]:
    """A store on `data_dir` started here and a hub attached to it; their pids
    and the hub's base URL."""
    store = await StoreProcess(data_dir).start()
    hub: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        port = free_port()
        config = write_config(folder, port, str(data_dir))
        hub = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "bench.run_hub", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/readyz", timeout=180)
        if hub.poll() is not None:
            raise SystemExit(f"the hub exited with code {hub.returncode}")
        yield {
            "base": base,
            "url": f"{base}/webhooks/testchan/bench",
            "hub_pid": hub.pid,
            "store_pid": store.pid,
            "store_open": store.open_seconds,
        }
    finally:
        if hub is not None and hub.poll() is None:
            hub.send_signal(signal.SIGINT)
            try:
                hub.wait(timeout=30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
        store.stop()


async def closed_loop(
    session: aiohttp.ClientSession,
    sender: Sender,
    seconds: float,
    concurrency: int,
    target: dict[str, Any],
) -> dict[str, Any]:
    """`concurrency` senders, each posting again as soon as it is answered, for
    `seconds`; the hub's and the store's CPU read at every 10-second mark."""
    pids = [target["hub_pid"], target["store_pid"]]
    acks: list[float] = []
    done: list[float] = []
    errors = 0
    marks: list[list[float]] = []
    commands_before = await metric(session, target["base"], "hub_store_commands")
    start = time.perf_counter()
    deadline = start + seconds

    async def sample() -> None:
        for mark in range(int(seconds // WINDOW) + 1):
            await asyncio.sleep(max(0.0, start + mark * WINDOW - time.perf_counter()))
            marks.append([cpu_seconds(pid) for pid in pids])

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                ok = await post(session, sender)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            answered = time.perf_counter()
            if ok:
                acks.append(answered - sent)
                done.append(answered - start)
            else:
                errors += 1

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await sampler
    finally:
        sampler.cancel()
    elapsed = time.perf_counter() - start
    commands = await metric(session, target["base"], "hub_store_commands") - commands_before
    windows = [0] * max(1, int(seconds // WINDOW))
    for at in done:
        if int(at // WINDOW) < len(windows):
            windows[int(at // WINDOW)] += 1
    cpu = [
        [(after[i] - before[i]) / count * 1e6 for i in range(len(pids))]
        for before, after, count in zip(marks, marks[1:], windows, strict=False)
        if count
    ]
    rates = [w / WINDOW for w in windows] if seconds >= WINDOW else [len(done) / elapsed]
    nan = float("nan")
    return {
        "messages": len(done),
        "errors": errors,
        "rate": statistics.median(rates),
        "slowest": min(rates),
        "p50": percentile(acks, 50) * 1000,
        "p99": percentile(acks, 99) * 1000,
        "hub_us": statistics.median(c[0] for c in cpu) if cpu else nan,
        "store_us": statistics.median(c[1] for c in cpu) if cpu else nan,
        "commands": commands / max(1, len(done)),
    }


async def warm_up(session: aiohttp.ClientSession, url: str, block: int) -> None:
    """400 messages from new numbers of their own (none a measured phase uses)."""
    sender = Sender(url, 1, numbers=itertools.count(WARM_FIRST + block * 1_000_000))
    await paced(session, sender, 200, 2)


async def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="hub-bench-senders-"))
    seed_dir = Path(args.data_dir) if args.data_dir else folder / "seed"
    print(
        f"seeded store: {seed_dir} ({args.contacts:,} contacts, {args.messages:,} messages)",
        flush=True,
    )
    if not seeded_already(seed_dir, args.contacts, args.messages):
        print("seeding ...", flush=True)
    seeding = await ensure_seeded(seed_dir, args.contacts, args.messages)
    if seeding is not None:
        print(f"  seeded in {seeding:.1f} s", flush=True)
    else:
        earlier = seeding_seconds(seed_dir)
        took = f" (it took {earlier:.1f} s)" if earlier else ""
        print(f"  seeded by an earlier run{took}: seeding skipped", flush=True)
    if args.seed_only:
        shutil.rmtree(folder, ignore_errors=True)
        return 0

    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, float] = {}
    seconds, concurrency = args.phase, args.concurrency
    connector = aiohttp.TCPConnector(limit=max(256, 2 * concurrency))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            print(f"known senders, empty store: first messages from {args.senders} numbers")
            async with hub_on(folder / "empty-seen", folder / "hub1") as target:
                seen = [SEEN_FIRST + i for i in range(args.senders)]
                sender = Sender(target["url"], 1, numbers=iter(seen))
                await paced(session, sender, 200, args.senders / 200)
                sender.numbers = random_of(seen)
                print(f"   ... then {concurrency} senders for {seconds:.0f} s", flush=True)
                results["seen"] = await closed_loop(session, sender, seconds, concurrency, target)

            print("known senders, seeded store, fresh hub: copying the store ...", flush=True)
            work = folder / "seeded"
            if args.data_dir:
                notes["copy"] = await asyncio.to_thread(copy_store, seed_dir, work)
            else:
                work = seed_dir  # nobody keeps it: the run writes to it
            async with hub_on(work, folder / "hub2") as target:
                notes["open"] = target["store_open"]
                print(f"   store opened in {notes['open']:.1f} s; warming up", flush=True)
                await warm_up(session, target["url"], 2)
                sender = Sender(target["url"], 1, numbers=seeded_walk(args.contacts))
                print(f"   {concurrency} seeded senders for {seconds:.0f} s", flush=True)
                results["known"] = await closed_loop(session, sender, seconds, concurrency, target)
                results["known"]["unseen"] = min(results["known"]["messages"], args.contacts)

                print(f"new senders, seeded store: {seconds:.0f} s", flush=True)
                sender = Sender(target["url"], 1, numbers=new_numbers(4))
                results["new_seeded"] = await closed_loop(
                    session, sender, seconds, concurrency, target
                )

            print(f"new senders, empty store: {seconds:.0f} s", flush=True)
            async with hub_on(folder / "empty-new", folder / "hub3") as target:
                await warm_up(session, target["url"], 3)
                sender = Sender(target["url"], 1, numbers=new_numbers(3))
                results["new_empty"] = await closed_loop(
                    session, sender, seconds, concurrency, target
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    report(args, seed_dir, seeding, notes, results)
    errors = sum(r["errors"] for r in results.values())
    return 0 if errors == 0 else 1


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    args: argparse.Namespace,
    seed_dir: Path,
    seeding: float | None,
    notes: dict[str, float],
    results: dict[str, dict[str, Any]],
) -> None:
    seen, known = results["seen"], results["known"]
    new_empty, new_seeded = results["new_empty"], results["new_seeded"]
    columns = [seen, known, new_empty, new_seeded]
    print()
    print(
        f"New customers at speed: {args.concurrency} senders in a closed loop, "
        f"{args.phase:.0f} s a phase (shared 2-core machine: noisy)"
    )
    if seeding is not None:
        how = f"seeded in {seeding:.1f} s"
    else:
        earlier = seeding_seconds(seed_dir)
        how = "seeded by an earlier run" + (f" in {earlier:.1f} s" if earlier else "")
    print(
        f"  seeded store: {args.contacts:,} contacts, {args.messages:,} messages in "
        f"{seed_dir} ({how})"
    )
    copied = f"copied in {notes['copy']:.1f} s, " if "copy" in notes else ""
    print(f"  its copy for this run: {copied}opened in {notes['open']:.1f} s")
    print()
    print(
        f"  {'':26s}{'known senders':>15s}{'known senders':>15s}"
        f"{'new senders':>15s}{'new senders':>15s}"
    )
    print(
        f"  {'':26s}{'empty, seen':>15s}{'seeded, fresh':>15s}"
        f"{'empty store':>15s}{'seeded store':>15s}"
    )

    def row(label: str, key: str, fmt: str) -> None:
        print(f"  {label:26s}" + "".join(format(c[key], fmt) for c in columns))

    row("msg/s (median 10 s)", "rate", "15.0f")
    row("  slowest 10 s window", "slowest", "15.0f")
    row("ack p50 ms", "p50", "15.1f")
    row("ack p99 ms", "p99", "15.1f")
    row("hub CPU/message us", "hub_us", "15.0f")
    row("store CPU/message us", "store_us", "15.0f")
    row("store commands/message", "commands", "15.2f")
    row("messages", "messages", "15d")
    row("errors (non-200)", "errors", "15d")
    print(
        f"  (known, seeded: {known['unseen']:,} of {known['messages']:,} messages from "
        "customers this hub had not seen)"
    )
    print()
    print("  targets")
    rate_ok = new_seeded["rate"] >= TARGET_RATE
    print(
        f"  new senders, seeded store: {new_seeded['rate']:.0f} msg/s "
        f"(slowest window {new_seeded['slowest']:.0f})   "
        f">= {TARGET_RATE:.0f}: {verdict(rate_ok)}"
    )
    p99_ok = new_seeded["p99"] <= TARGET_P99_MS
    print(
        f"  new senders, seeded store: ack p99 {new_seeded['p99']:.1f} ms   "
        f"<= {TARGET_P99_MS:.0f} ms: {verdict(p99_ok)}"
    )
    ratio = new_seeded["store_us"] / new_empty["store_us"]
    print(
        f"  store CPU per new-sender message, seeded/empty: {ratio:.2f} "
        f"({new_seeded['store_us']:.0f} / {new_empty['store_us']:.0f} us)   "
        f"<= {TARGET_STORE_RATIO}: {verdict(ratio <= TARGET_STORE_RATIO)}"
    )
    known_ok = known["rate"] >= seen["rate"] and known["p99"] <= seen["p99"]
    print(
        "  known senders, seeded store and fresh hub / seen on an empty store: "
        f"msg/s {known['rate'] / seen['rate']:.2f}x, ack p99 {known['p99'] / seen['p99']:.2f}x, "
        f"hub CPU {known['hub_us'] / seen['hub_us']:.2f}x, "
        f"store CPU {known['store_us'] / seen['store_us']:.2f}x   "
        f"no worse (msg/s >= 1, p99 <= 1): {verdict(known_ok)}"
    )
