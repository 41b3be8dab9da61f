"""The agents' inbox at size (issue 4): list, thread and realtime latency.

    ./dev bench inbox                    # 10,000 conversations, 200,000 messages
    ./dev bench inbox --quick            # 1,000 / 20,000 and a 10 s realtime phase
    ./dev bench inbox --data-dir DIR     # keep the seeded store in DIR; a later run
                                         # with the same sizes skips the seeding

1. Seeding (bench/seed.py, shared with `bench.ingest --new-senders`): an
   embedded store is filled in bulk (`insert_many`, 5,000 documents a
   command) with contacts, their phone identities, conversations and messages in
   the shapes ingest and the outbox write, their `_id`s derived the same way, so
   a webhook from a seeded number lands in its seeded conversation. Threads have
   skewed lengths (a few hundred messages for the longest, a handful for most);
   a quarter of the conversations are open, a tenth snoozed, the rest resolved.
2. The embedded store is started by this benchmark (on a large data directory
   the engine opens more slowly than the hub waits for it: the time is printed),
   then a real hub (`hub serve` as a subprocess, the test channel as inbox
   `bench`) attaches to it as any hub command does. An admin logs in, and each
   read is timed one request at a time (a closed loop of one): the first page
   of `GET /api/conversations`, a page deep in the list (a cursor
   at a random position in the middle half), the first page with `status=open`,
   the first page of `GET /api/conversations/{id}/messages` for random
   conversations, and the first page of a search (`?q=`, words of the seeded
   texts, matched in any message). p50 and p95 of each, and the hub's and the store's CPU per
   request (from /proc/<pid>/stat).
3. With a WebSocket open as that admin, signed inbound webhooks are posted at
   `--rate` per second (open loop: each at its scheduled time, from a seeded
   customer chosen at random) and, for each, the time from its scheduled send
   to its `message.created` on the WebSocket is taken: p50, p99 and how many
   arrived.

The machine is shared (two cores for the load, the hub and its store, and
whatever else runs), so the figures are noisy: run it twice before trusting a
change of less than about 20%.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import cpu_seconds, free_port, percentile, wait_http  # noqa: E402
from bench.seed import (  # noqa: E402
    CHUNK,
    INBOX,
    MEDIUM,
    TEXTS,
    StoreProcess,
    check_empty_or_seeded,
    phone,
    seed_store,
    seeded_conversation_id,
)
from hub.services.ingest import message_id_for  # noqa: E402
from tests.support.testchannel import sign  # noqa: E402

SECRET = "bench-secret-0001"
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-0001"
TARGET_READ_MS = 100.0
TARGET_WS_MS = 250.0
TARGET_SEARCH_MS = 150.0
# Searches of the seeded texts' words (each word is in about a tenth of the
# messages, some in a third: the many-matches case of a search).
SEARCHES = ["invoice", "refunded charge", "Saturdays", "tracking link", "blue stock", "office"]


# -- the hub ------------------------------------------------------------------------------


def write_config(folder: Path, port: int, data_dir: Path) -> Path:
    config = folder / "hub.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
data_dir = "{data_dir}"

[logging]
level = "WARNING"

[[inboxes]]
id = "{INBOX}"
channel = "testchan"
secret = "{SECRET}"
medium = "{MEDIUM}"
"""
    )
    return config


class Reads:
    """Timed API reads, one at a time; CPU of the hub and the store around them."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, pids: list[int]):
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.pids = pids

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        async with self.session.get(
            f"{self.base}{path}", params=params, headers=self.headers
        ) as response:
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"GET {path} {params}: {response.status} {body}")
            return body

    async def timed(
        self, count: int, request: Callable[[int], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        await request(0)  # warm
        cpu_before = [cpu_seconds(pid) for pid in self.pids]
        latencies = []
        items = 0
        for number in range(count):
            started = time.perf_counter()
            body = await request(number)
            latencies.append(time.perf_counter() - started)
            items += len(body.get("items", []))
        cpu = [
            (cpu_seconds(pid) - before) / count
            for pid, before in zip(self.pids, cpu_before, strict=True)
        ]
        return {
            "p50": percentile(latencies, 50) * 1000,
            "p95": percentile(latencies, 95) * 1000,
            "max": max(latencies) * 1000,
            "items": items / count,
            "hub_cpu_ms": cpu[0] * 1000,
            "store_cpu_ms": cpu[1] * 1000,
        }


async def realtime(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    customers: int,
    rate: float,
    seconds: float,
    pids: list[int],
) -> dict[str, Any]:
    """Post webhooks at `rate`/s with a WebSocket open; time each one's
    `message.created` from its scheduled send."""
    url = f"{base}/webhooks/testchan/{INBOX}"
    prefix = f"WS{random.randrange(1 << 30):08x}"
    total = int(rate * seconds)
    scheduled: dict[str, float] = {}
    arrived: dict[str, float] = {}
    acks: list[float] = []
    errors = 0
    all_in = asyncio.Event()
    rng = random.Random()

    ws = await session.ws_connect(f"{base.replace('http', 'ws', 1)}/api/ws?token={token}")
    hello = await ws.receive_json(timeout=10)
    assert hello["type"] == "hello", hello

    async def read() -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            event = json.loads(message.data)
            if event["type"] == "message.created":
                ident = event["data"]["id"]
                if ident in scheduled and ident not in arrived:
                    arrived[ident] = now
                    if len(arrived) == total:
                        all_in.set()

    async def post(number: int, at: float) -> None:
        nonlocal errors
        provider_id = f"{prefix}{number:07d}"
        body = urllib.parse.urlencode(
            {
                "MessageSid": provider_id,
                "From": phone(rng.randrange(customers)),
                "Body": f"realtime probe {number}: {rng.choice(TEXTS)}",
            }
        ).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Signature": sign(SECRET, body),
        }
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status == 200:
                acks.append(time.perf_counter() - at)
            else:
                errors += 1

    reader = asyncio.create_task(read())
    tasks: set[asyncio.Task[None]] = set()
    cpu_before = [cpu_seconds(pid) for pid in pids]
    start = time.perf_counter() + 0.1
    for number in range(total):
        at = start + number / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        scheduled[message_id_for(INBOX, f"{prefix}{number:07d}")] = at
        task = asyncio.create_task(post(number, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 10)
    cpu = [
        (cpu_seconds(pid) - before) / total for pid, before in zip(pids, cpu_before, strict=True)
    ]
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await ws.close()
    latencies = [arrived[i] - scheduled[i] for i in arrived]
    # p50 per 5-second window of send time: a queue that grows shows here.
    windows: dict[int, list[float]] = {}
    for ident, at in arrived.items():
        windows.setdefault(int((scheduled[ident] - start) // 5), []).append(at - scheduled[ident])
    return {
        "windows": [percentile(windows[k], 50) * 1000 for k in sorted(windows)],
        "sent": total,
        "received": len(arrived),
        "errors": errors,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": max(latencies, default=float("nan")) * 1000,
        "ack_p50": percentile(acks, 50) * 1000,
        "ack_p99": percentile(acks, 99) * 1000,
        "hub_cpu_ms": cpu[0] * 1000,
        "store_cpu_ms": cpu[1] * 1000,
    }


async def deep_cursors(reads: Reads, conversations: int, count: int) -> list[str]:
    """`count` cursors at random positions in the middle half of the list: walk it
    once with pages of 100 and keep a cursor at each page boundary."""
    cursors: list[str] = []
    cursor: str | None = None
    position = 0
    while position < conversations * 3 // 4:
        params = {"limit": "100"}
        if cursor:
            params["cursor"] = cursor
        body = await reads.get("/api/conversations", params)
        position += len(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        if position >= conversations // 4:
            cursors.append(cursor)
    rng = random.Random(7)
    return [rng.choice(cursors) for _ in range(count)] if cursors else []


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


async def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="hub-bench-inbox-"))
    data_dir = Path(args.data_dir) if args.data_dir else folder / "data"
    print(
        f"store: {data_dir} ({args.conversations:,} conversations, {args.messages:,} messages)",
        flush=True,
    )
    fresh = check_empty_or_seeded(data_dir, args.conversations, args.messages)
    # The store is started here, not by the hub: on a large data directory the
    # engine takes longer to open than the hub waits for it. The hub then
    # attaches to it (as any hub command does to a store already running).
    store = await StoreProcess(data_dir).start()
    store_start = store.open_seconds
    uri = store.uri
    print(f"  the embedded store opened in {store_start:.1f} s", flush=True)
    hub: subprocess.Popen[bytes] | None = None
    seeding = None
    results: dict[str, dict[str, Any]] = {}
    try:
        if fresh:
            print("seeding ...", flush=True)
            seeding = await seed_store(uri, data_dir, args.conversations, args.messages)
            print(f"  seeded in {seeding:.1f} s", flush=True)
        else:
            print("  seeded by an earlier run: seeding skipped", flush=True)
        port = free_port()
        config = write_config(folder, port, data_dir)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HUB_ADMIN_EMAIL": ADMIN_EMAIL,
            "HUB_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        hub = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "bench.run_hub", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/readyz", timeout=120)
        if hub.poll() is not None:
            raise SystemExit(f"the hub exited with code {hub.returncode}")
        pids = [hub.pid, store.pid]
        connector = aiohttp.TCPConnector(limit=512)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.post(
                f"{base}/api/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            ) as response:
                login = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"login failed: {response.status} {login}")
            token = login["token"]
            reads = Reads(session, base, token, pids)
            rng = random.Random(11)
            n = args.requests
            print(f"GET /api/conversations, first page: {n} requests ...", flush=True)
            results["list"] = await reads.timed(n, lambda _i: reads.get("/api/conversations"))
            print("  finding cursors in the middle of the list ...", flush=True)
            cursors = await deep_cursors(reads, args.conversations, n + 1)
            print(f"GET /api/conversations?cursor=(deep): {n} requests ...", flush=True)
            results["deep"] = await reads.timed(
                n, lambda i: reads.get("/api/conversations", {"cursor": cursors[i]})
            )
            print(f"GET /api/conversations?status=open: {n} requests ...", flush=True)
            results["open"] = await reads.timed(
                n, lambda _i: reads.get("/api/conversations", {"status": "open"})
            )
            conv_ids = [seeded_conversation_id(index) for index in range(args.conversations)]
            picks = [rng.choice(conv_ids) for _ in range(n + 1)]
            print(f"GET /api/conversations/{{id}}/messages: {n} requests ...", flush=True)
            results["thread"] = await reads.timed(
                n, lambda i: reads.get(f"/api/conversations/{picks[i]}/messages")
            )
            print(f"GET /api/conversations?q=(words of any message): {n} requests ...", flush=True)
            words = [rng.choice(SEARCHES) for _ in range(n + 1)]
            results["search"] = await reads.timed(
                n, lambda i: reads.get("/api/conversations", {"q": words[i]})
            )
            print(
                f"realtime: webhooks at {args.rate:.0f}/s for {args.seconds:.0f} s, "
                "WebSocket open ...",
                flush=True,
            )
            results["ws"] = await realtime(
                session, base, token, args.conversations, args.rate, args.seconds, pids
            )
    finally:
        if hub is not None and hub.poll() is None:
            hub.send_signal(signal.SIGINT)
            try:
                hub.wait(timeout=60)
            except subprocess.TimeoutExpired:
                hub.kill()
        store.stop()
        if not args.data_dir:
            shutil.rmtree(folder, ignore_errors=True)

    print()
    print(
        f"The inbox on the embedded store: {args.conversations:,} conversations, "
        f"{args.messages:,} messages (shared 2-core machine: noisy)"
    )
    print(f"  the embedded store opened in               {store_start:7.1f} s")
    if seeding is not None:
        print(f"  seeding (insert_many, {CHUNK:,} a command)   {seeding:7.1f} s")
    print(f"  reads, one at a time, {args.requests} each:       p50       p95   (target p95)")
    labels = {
        "list": "GET /api/conversations (first page)",
        "deep": "  ... a page deep (cursor, middle)",
        "open": "  ... ?status=open (first page)",
        "thread": "GET /api/conversations/{id}/messages",
        "search": "GET /api/conversations?q= (any message)",
    }
    for key, label in labels.items():
        r = results[key]
        target = TARGET_SEARCH_MS if key == "search" else TARGET_READ_MS
        print(
            f"  {label:38s} {r['p50']:6.1f} ms {r['p95']:6.1f} ms   "
            f"(<= {target:.0f} ms: {verdict(r['p95'], target)})"
        )
    print("  CPU per request:                        hub        store")
    for key, label in labels.items():
        r = results[key]
        print(f"  {label:38s} {r['hub_cpu_ms']:6.1f} ms {r['store_cpu_ms']:6.1f} ms")
    ws = results["ws"]
    print(
        f"  realtime at {args.rate:.0f}/s for {args.seconds:.0f} s: webhook sent -> "
        "message.created on the WebSocket"
    )
    print(
        f"    p50 {ws['p50']:6.1f} ms   p99 {ws['p99']:6.1f} ms   max {ws['max']:6.1f} ms   "
        f"(target p99 <= {TARGET_WS_MS:.0f} ms: {verdict(ws['p99'], TARGET_WS_MS)})"
    )
    print(
        f"    received {ws['received']}/{ws['sent']}; webhook errors {ws['errors']}; "
        f"webhook ack p50 {ws['ack_p50']:.1f} ms p99 {ws['ack_p99']:.1f} ms"
    )
    print("    p50 per 5 s of sending: " + ", ".join(f"{w:.0f}" for w in ws["windows"]) + " ms")
    print(f"    CPU per message: hub {ws['hub_cpu_ms']:.2f} ms, store {ws['store_cpu_ms']:.2f} ms")
    if args.data_dir:
        print(f"  the store stays in {data_dir} (each run adds its realtime messages)")
    return 0 if ws["errors"] == 0 and ws["received"] == ws["sent"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=100, help="timed requests per read")
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="realtime phase, seconds")
    parser.add_argument("--data-dir", help="keep (and reuse) the seeded store here")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 conversations, 20,000 messages, 10 s"
    )
    args = parser.parse_args()
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).resolve())
    if args.quick:
        args.conversations, args.messages, args.seconds = 1_000, 20_000, 10.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
