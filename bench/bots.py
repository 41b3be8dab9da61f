"""Bot benchmark: a customer's first message -> the bot's answer accepted by the provider.

    .venv/bin/python -m bench.bots            # 60 s per phase (about 2.5 minutes)
    .venv/bin/python -m bench.bots --quick    # 15 s per phase

Each phase starts a real `hub serve` process (embedded store in its own child
process, the test channel as the inbox, pointed at a provider double served by
this process on loopback) and opens `--rate` (100) new conversations a second,
open loop, for `--duration` seconds: each from a new number, one signed webhook.
The latency of a message is from its scheduled send time to the moment the
provider double accepted the bot's answer to that number (so a stall is not
hidden). Printed per phase: p50 and p99, lost (a message acknowledged that got
no answer within `--settle` seconds of the end) and double answers (a number
answered more than once).

1. a flow bot (a menu with four options, answered as a numbered list: the
   channel has no buttons); target p99 <= 250 ms;
2. an external bot (`kind = "http"`): an aiohttp server in this process that
   answers each signed POST after 50 ms; target p99 <= 350 ms.

The machine is shared and noisy: figures are medians of what they measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.ingest import cpu_seconds, free_port, metric, percentile, wait_http

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0001"
BOT_SECRET = "bench-bot-secret-0001"

FLOW = """
start = "menu"
handoff_words = ["agent", "operator"]
[steps.menu]
say = "Hi! This is Corner Coffee. How can I help?"
options = [
  { label = "Menu and prices", match = ["menu", "price"], go = "prices" },
  { label = "Opening hours", match = ["hours"], go = "hours" },
  { label = "Leave your e-mail", match = ["email"], go = "email" },
  { label = "Talk to a person", match = ["person"], go = "person" },
]
[steps.prices]
say = "Espresso 2.50 EUR, cappuccino 3.20 EUR."
go = "menu"
[steps.hours]
say = "We are open 9:00 to 20:00."
go = "menu"
[steps.email]
ask = "What is your e-mail?"
save = "email"
validate = "email"
go = "person"
[steps.person]
say = "A person will answer you shortly."
handoff = "asked for a person"
"""


@dataclass
class Provider:
    """The provider double: accepts the hub's sends, notes when each arrived."""

    answered: dict[str, float] = field(default_factory=dict)  # number -> first answer
    answers: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _runner: web.AppRunner | None = None
    _ids: int = 0

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.monotonic()
        to = str(body.get("to"))
        self.answers[to] += 1
        self.answered.setdefault(to, now)
        self._ids += 1
        return web.json_response({"id": f"SM{self._ids:08d}"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/messages", self.messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class ExternalBot:
    """An external bot answering each signed POST after `delay` seconds."""

    delay: float = 0.05
    calls: int = 0
    bad_signatures: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.calls += 1
        expected = "sha256=" + hmac.new(BOT_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=403)
        await asyncio.sleep(self.delay)
        text = json.loads(raw)["message"]["text"]
        return web.json_response({"actions": [{"type": "reply", "text": f"You said: {text}"}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hub", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hub"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def child_pid(pid: int) -> int | None:
    """The hub's embedded store: its child process (None if it has none)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def write_config(folder: Path, port: int, provider: str, bot: str) -> Path:
    (folder / "flow.toml").write_text(FLOW)
    config = folder / "hub.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
data_dir = "data"

[logging]
level = "WARNING"

[[inboxes]]
id = "bench"
channel = "testchan"
secret = "{SECRET}"
medium = "sms"
api_base = "{provider}"
rate = 1000.0
burst = 100

[[bots]]
id = "bench-bot"
inboxes = ["bench"]
{bot}
"""
    )
    return config


def signed(sid: str, number: str) -> tuple[bytes, dict[str, str]]:
    body = urllib.parse.urlencode(
        {"MessageSid": sid, "From": number, "To": "+15005550006", "Body": "hello"}
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Signature": signature}


async def drive(url: str, provider: Provider, rate: float, seconds: float, settle: float) -> dict:
    """Open loop: `rate` first messages a second from new numbers."""
    prefix = f"{random.randrange(10_000, 99_999)}"
    base = random.randrange(10_000_000)
    scheduled: dict[str, float] = {}
    acked: set[str] = set()
    acks: list[float] = []  # webhook acknowledgement latencies
    errors = 0
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int, at: float) -> None:
            nonlocal errors
            number = f"+1555{(base + index) % 10_000_000:07d}"
            scheduled[number] = at
            body, headers = signed(f"SMB{prefix}{index:07d}", number)
            for _ in range(5):  # a provider retries what was not acknowledged
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status == 200:
                            acked.add(number)
                            acks.append(time.monotonic() - at)
                            return
                except aiohttp.ClientError:
                    pass
                errors += 1
                await asyncio.sleep(0.5)

        start = time.monotonic()
        for index in range(total):
            at = start + index / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        end = time.monotonic() + settle
        while time.monotonic() < end and not acked <= provider.answered.keys():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    latencies = [provider.answered[n] - scheduled[n] for n in acked if n in provider.answered]
    return {
        "sent": total,
        "acknowledged": len(acked),
        "answered": len(latencies),
        "lost": len(acked - provider.answered.keys()),
        "double": sum(1 for n in acked if provider.answers[n] > 1),
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "ack_p50_ms": percentile(acks, 50) * 1000,
        "ack_p99_ms": percentile(acks, 99) * 1000,
    }


async def phase(name: str, bot: str, args: argparse.Namespace, provider: Provider) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="hub-bench-bots-"))
    port = free_port()
    config = write_config(folder, port, provider.url, bot)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hub = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "bench.run_hub", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/readyz")
        await asyncio.sleep(1.0)  # the hub's start-up work (indexes, the sweep) settles
        print(f"-- {name}: {args.rate:g} new conversations/s for {args.duration:g} s", flush=True)
        async with aiohttp.ClientSession() as session:
            commands = await metric(session, base, "hub_store_commands")
        cpu = cpu_seconds(hub.pid)
        store_pid = child_pid(hub.pid)
        store_cpu = cpu_seconds(store_pid) if store_pid else 0.0
        result = await drive(
            f"{base}/webhooks/testchan/bench", provider, args.rate, args.duration, args.settle
        )
        async with aiohttp.ClientSession() as session:
            commands = await metric(session, base, "hub_store_commands") - commands
        answered = max(1, result["answered"])
        result["commands"] = commands / answered
        result["cpu_ms"] = (cpu_seconds(hub.pid) - cpu) / answered * 1000
        result["store_cpu_ms"] = (
            (cpu_seconds(store_pid) - store_cpu) / answered * 1000 if store_pid else float("nan")
        )
    finally:
        hub.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            hub.wait(timeout=30)
        if hub.poll() is None:
            hub.kill()
    print(
        f"   sent {result['sent']}, acknowledged {result['acknowledged']}, "
        f"answered {result['answered']}, lost {result['lost']}, "
        f"double answers {result['double']}, webhook retries {result['errors']}"
    )
    print(f"   inbound -> answer accepted by the provider: p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms")  # fmt: skip
    print(f"   webhook acknowledged: p50 {result['ack_p50_ms']:.0f} ms, "
          f"p99 {result['ack_p99_ms']:.0f} ms")  # fmt: skip
    print(f"   per conversation: {result['commands']:.1f} store commands, "
          f"{result['cpu_ms']:.2f} ms of the hub's CPU, "
          f"{result['store_cpu_ms']:.2f} ms of the store's")  # fmt: skip
    return result


async def run(args: argparse.Namespace) -> int:
    provider = Provider()
    await provider.start()
    external = ExternalBot(delay=0.05)
    await external.start()
    skipped = {"p50_ms": float("nan"), "p99_ms": float("nan"), "lost": 0, "double": 0}
    flow = http = skipped
    try:
        if args.only in (None, "flow"):
            flow = await phase('flow bot', 'kind = "flow"\nflow = "flow.toml"', args, provider)
        provider.answered.clear()
        provider.answers.clear()
        http_bot = (
            f'kind = "http"\nurl = "{external.url}"\nsecret = "{BOT_SECRET}"\ntimeout_seconds = 5'
        )
        if args.only in (None, "http"):
            http = await phase("external bot answering in 50 ms", http_bot, args, provider)
    finally:
        await external.stop()
        await provider.stop()
    print()
    print(f"flow bot:     p50 {flow['p50_ms']:.0f} ms, p99 {flow['p99_ms']:.0f} ms "
          f"(target <= 250), lost {flow['lost']}, double {flow['double']}")  # fmt: skip
    print(f"external bot: p50 {http['p50_ms']:.0f} ms, p99 {http['p99_ms']:.0f} ms "
          f"(target <= 350), lost {http['lost']}, double {http['double']}, "
          f"bot calls {external.calls}, bad signatures {external.bad_signatures}")  # fmt: skip
    ok = (
        flow["p99_ms"] <= 250
        and http["p99_ms"] <= 350
        and not (flow["lost"] or flow["double"] or http["lost"] or http["double"])
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s per phase")
    parser.add_argument("--rate", type=float, default=100.0, help="new conversations a second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--only", choices=["flow", "http"], help="run one phase")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait for answers")
    args = parser.parse_args()
    if args.quick:
        args.duration = 15.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
