"""Campaigns: planning a large one, and sending one through a real hub that is
killed with kill -9 half-way.

1. **Planning** (`--plan N`, default 100,000): N contacts (each with a phone, a
   conversation on an SMS inbox, attributes and one of 24 time zones) in an
   embedded store of the benchmark's own; `hub.services.campaigns.plan` resolves
   the audience (a label and an attribute comparison), picks each contact's
   channel and local hour (quiet hours on) and writes the per-recipient records,
   as the campaigns job does in the hub. Printed: seconds, records per second, the
   planning process's peak RSS and the store's RSS, and the statistics query.
2. **Sending** (`--send N`, default 4,000): a real `hub serve` with one WhatsApp
   Cloud inbox paced at 98% of 80 msg/s (Meta's default) against the WhatsApp
   simulator enforcing 80 accepted messages in any 1-second window (over it:
   error 130429, counted as a 429). A template campaign to N contacts is started
   through the API; when about half has gone the hub is killed with kill -9 and
   started again. Printed: 429s, duplicates (numbers sent to twice), recipients
   per final status, the
   sending rate in every 10-second window while a hub was sending (the windows
   spanning the kill and the restart are shown apart), and how long the restart
   took to resume.

    ./dev bench campaigns               # both, default sizes
    ./dev bench campaigns --plan 20000 --send 0
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
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.seed import StoreProcess  # noqa: E402
from channels.whatsapp.simulator import FakeWhatsApp  # noqa: E402
from hub.services import campaigns  # noqa: E402
from hub.services.accounts import Accounts  # noqa: E402
from hub.services.contacts import new_contact_doc  # noqa: E402
from hub.services.ingest import conversation_id_for, new_conversation_doc  # noqa: E402
from hub.store import Store, identity_id  # noqa: E402
from hub.store.embedded_server import INFO_NAME  # noqa: E402

ZONES = [
    "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver",
    "America/Chicago", "America/New_York", "America/Sao_Paulo", "Atlantic/South_Georgia",
    "Atlantic/Azores", "Europe/London", "Europe/Berlin", "Europe/Riga", "Europe/Moscow",
    "Asia/Dubai", "Asia/Karachi", "Asia/Dhaka", "Asia/Bangkok", "Asia/Shanghai",
    "Asia/Tokyo", "Australia/Brisbane", "Pacific/Noumea", "Pacific/Auckland",
    "Pacific/Tongatapu", "Pacific/Kiritimati",
]
CITIES = ["Riga", "Oslo", "Lisbon", "Athens", "Tallinn"]
CHUNK = 2000
PASSWORD = "bench campaigns 1"
RATE = 80.0  # the simulator's limit: accepted messages in any 1-second window
PACE = 0.98  # the inbox is paced at this share of it (as bench/pacing.py does)


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def phone(i: int) -> str:
    return f"+1555{3000000 + i:07d}"


def contact_docs(n: int, rng: random.Random, *, with_zone: bool = True) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    docs = []
    for i in range(n):
        doc = new_contact_doc(
            f"c{i:07d}",
            name=f"Customer {i}",
            phones=[phone(i)],
            labels=["promo"] if i % 10 else ["promo", "vip"],
            attributes={"city": rng.choice(CITIES), "orders": rng.randint(0, 20)},
            timezone=ZONES[i % len(ZONES)] if with_zone else None,
        )
        doc["created_at"] = now
        docs.append(doc)
    return docs


async def insert_chunks(collection: Any, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), CHUNK):
        await collection.insert_many(docs[start : start + CHUNK], ordered=False)


# -- planning --------------------------------------------------------------------------


async def bench_plan(n: int, keep: Path | None) -> dict[str, Any]:
    folder = keep or Path(tempfile.mkdtemp(prefix="bench-campaigns-"))
    process = await StoreProcess(folder / "store").start()
    # A long heartbeat timeout: on a busy machine the store answers a 5,000-document
    # insert slowly, and a missed heartbeat would cut the connection under it.
    store = await Store.open(
        uri=process.uri, database="bench", data_dir=folder, server_selection_timeout_ms=60_000
    )
    try:
        await store.ensure_indexes()
        rng = random.Random(14)
        started = time.perf_counter()
        if await store.contacts.estimated_document_count() < n:
            docs = contact_docs(n, rng)
            await insert_chunks(store.contacts, docs)
            now = datetime.now(UTC) - timedelta(days=3)
            convs = []
            for doc in docs:
                key = identity_id("phone", doc["phones"][0])
                conv = new_conversation_doc(
                    conversation_id_for("sms", "sms", key), "sms", "sms", key, doc["_id"], now
                )
                conv["last_inbound_at"] = now
                convs.append(conv)
            await insert_chunks(store.conversations, convs)
            del docs, convs
        seeded = time.perf_counter() - started
        now = datetime.now(UTC)
        doc = await campaigns.parse_campaign(
            store,
            {
                "name": "Bench",
                "audience": {"labels": ["promo"], "attributes": {"orders": {"gte": 0}}},
                "message": {"text": "Hi {first_name}, news from {city}"},
                "local_time": "10:00",
                "quiet_hours": {"start": "21:00", "end": "09:00"},
            },
            inboxes={},
            now=now,
        )
        doc = await campaigns.create(store, doc, agent_id=None)
        await store.campaigns.update_one(
            {"_id": doc["_id"]}, {"$set": {"status": "running", "started_at": now}}
        )
        rss_before = rss_mb()
        started = time.perf_counter()
        targeted = await campaigns.plan(store, doc, {"sms": ("sms",)}, now=now)
        planned = time.perf_counter() - started
        started = time.perf_counter()
        stats = await campaigns.stats(store, {**doc, "targeted": targeted})
        stats_seconds = time.perf_counter() - started
        started = time.perf_counter()
        page, _ = await campaigns.recipients(
            store, str(doc["_id"]), status="pending", cursor=None, limit=50
        )
        page_seconds = time.perf_counter() - started
        return {
            "contacts": n,
            "seed_seconds": round(seeded, 1),
            "targeted": targeted,
            "plan_seconds": round(planned, 1),
            "records_per_second": round(targeted / planned) if planned else None,
            "bench_rss_mb_before": round(rss_before),
            "bench_peak_rss_mb": round(rss_mb("self", "VmHWM")),
            "store_rss_mb": round(rss_mb(process.pid)),
            "stats_seconds": round(stats_seconds, 2),
            "stats": stats,
            "recipients_page_seconds": round(page_seconds, 3),
            "page_items": len(page),
        }
    finally:
        await store.close()
        process.stop()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


# -- sending ---------------------------------------------------------------------------


def write_config(folder: Path, sim_url: str) -> Path:
    config = folder / "hub.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2

[store]
database = "hub"
data_dir = "data"

[logging]
level = "WARNING"
format = "text"

[dispatcher]
lease_seconds = 5
poll_interval = 0.2

[scheduler]
lease_seconds = 2

[[inboxes]]
id = "wa"
channel = "whatsapp"
phone_number_id = "106540352242922"
access_token = "EAAG-test-access-token"
app_secret = "bench-whatsapp-app-secret"
verify_token = "bench-whatsapp-verify-token"
api_base = "{sim_url}"
rate = {RATE * PACE}
"""
    )
    return config


class Hub:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drain: asyncio.Task[bytes] | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        for name in ("HUB_CONFIG", "MONGODB_URI", "HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
            env.pop(name, None)
        env["PYTHONPATH"] = str(ROOT)
        log = (self.config.parent / "hub.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "serve", "--config", str(self.config),
            cwd=self.config.parent, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(120):
            while True:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    raise SystemExit(f"hub serve exited: see {self.config.parent / 'hub.log'}")
                if "inbox at http://127.0.0.1:" in line:
                    self.url = line.split("inbox at ", 1)[1].strip()
                    break
        self._drain = asyncio.create_task(self.process.stdout.read())

    def store_port(self) -> int:
        info = json.loads((self.config.parent / "data" / INFO_NAME).read_text())
        return int(info["port"])

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(BaseException):
                await self._drain

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 30)
        await self.kill()


def windows(times: list[float], start: float, end: float, width: float = 10.0) -> list[float]:
    """Messages per second in each whole `width`-second window of [start, end)."""
    out = []
    t = start
    while t + width <= end:
        out.append(sum(1 for x in times if t <= x < t + width) / width)
        t += width
    return out


async def bench_send(n: int, kill_at: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-campaign-send-"))
    sim = FakeWhatsApp(rate=RATE)
    await sim.start()
    config = write_config(folder, sim.url)
    hub = Hub(config)
    try:
        await hub.start()
        store = await Store.open(
            uri=f"mongodb://127.0.0.1:{hub.store_port()}/?directConnection=true",
            database="hub",
            data_dir=folder,
        )
        try:
            await insert_chunks(store.contacts, contact_docs(n, random.Random(7), with_zone=False))
            await Accounts(store).create_agent(
                email="boss@example.com", name="Boss", role="supervisor", password=PASSWORD
            )
        finally:
            await store.close()
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                hub.url + "api/auth/login", json={"email": "boss@example.com", "password": PASSWORD}
            )
            auth = {"Authorization": f"Bearer {(await resp.json())['token']}"}
            body = {
                "name": "Bench send",
                "audience": {"labels": ["promo"], "channels": ["whatsapp"]},
                "message": {
                    "template": {
                        "name": "order_update",
                        "language": "en_US",
                        "parameters": ["{first_name}"],
                    }
                },
                "quiet_hours": {"start": "00:00", "end": "00:00"},
            }
            resp = await session.post(hub.url + "api/campaigns", json=body, headers=auth)
            assert resp.status == 201, await resp.text()
            cid = (await resp.json())["id"]
            t0 = time.monotonic()
            resp = await session.post(hub.url + f"api/campaigns/{cid}/start", headers=auth)
            assert resp.status == 200, await resp.text()
            while len(sim.sent) < n * kill_at:  # noqa: ASYNC110 (the simulator's list)
                await asyncio.sleep(0.05)
            killed_at = time.monotonic()
            sent_before = len(sim.sent)
            await hub.kill()
            await hub.start()
            restarted_at = time.monotonic()
            resp = await session.post(
                hub.url + "api/auth/login", json={"email": "boss@example.com", "password": PASSWORD}
            )
            auth = {"Authorization": f"Bearer {(await resp.json())['token']}"}
            deadline = time.monotonic() + 30 + 3 * n / RATE
            view: dict[str, Any] = {}
            while time.monotonic() < deadline:
                resp = await session.get(hub.url + f"api/campaigns/{cid}", headers=auth)
                view = await resp.json()
                if view.get("status") == "completed":
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)
            resp = await session.get(hub.url + f"api/campaigns/{cid}", headers=auth)
            view = await resp.json()
        times = [m["at"] for m in sim.sent]
        before = [t for t in times if t < killed_at]
        after = [t for t in times if t >= killed_at]
        first_after = min(after) if after else None
        tos = Counter(str(m.get("to")) for m in sim.sent)
        w_before = windows(before, min(before), killed_at) if before else []
        w_after = windows(after, min(after), max(after)) if after else []
        return {
            "recipients": n,
            "allowed_rate": RATE,
            "status": view.get("status"),
            "stats": view.get("stats"),
            "sent_total": len(sim.sent),
            "sent_before_kill": sent_before,
            "rejected_429": sim.rejected_429,
            "duplicates": sum(c - 1 for c in tos.values() if c > 1),
            "first_send_after_start_s": round(min(times) - t0, 2) if times else None,
            "restart_s": round(restarted_at - killed_at, 1),
            "resumed_after_kill_s": round(first_after - killed_at, 1) if first_after else None,
            "windows_before_kill": [round(w, 1) for w in w_before],
            "windows_after_restart": [round(w, 1) for w in w_after],
            "min_window_share": round(min(w_before + w_after) / RATE, 3)
            if (w_before or w_after)
            else None,
        }
    finally:
        await hub.stop()
        await sim.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> int:
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if args.plan:
        result = await bench_plan(args.plan, args.keep)
        print("planning:", json.dumps(result, indent=1))
        print(
            f"plan {result['targeted']:,} recipients: {result['plan_seconds']} s "
            f"({result['records_per_second']:,}/s), peak RSS {result['bench_peak_rss_mb']} MB, "
            f"store RSS {result['store_rss_mb']} MB; stats in {result['stats_seconds']} s"
        )
    if args.send:
        result = await bench_send(args.send, args.kill_at)
        print("sending:", json.dumps(result, indent=1))
        print(
            f"send {result['recipients']:,} at {RATE:g}/s allowed: 429s {result['rejected_429']}, "
            f"duplicates {result['duplicates']}, min 10-s window {result['min_window_share']} "
            f"of the allowed rate, kill -9 -> sending again in {result['resumed_after_kill_s']} s"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=int, default=100_000, help="contacts to plan (0: skip)")
    parser.add_argument("--send", type=int, default=4_000, help="recipients to send (0: skip)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share sent before kill -9")
    parser.add_argument("--keep", type=Path, default=None, help="keep the planning store here")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
