"""Pacing against the rate-enforcing provider doubles (issue 3).

Each scenario runs a real hub (embedded store in its own process, the real channel
adapter, the dispatcher) against the fake provider in `tests/support/`, which
answers 429 (or the provider's own rate error) the moment its limit is exceeded.
A backlog larger than the run can drain is queued in bulk, then the provider's
own record of accepted requests is cut into 10-second windows:

- zero rate-limit refusals, and
- at least 95% of the provider's limit used in every window.

The hub paces each inbox at `PACE` (98%) of the provider's published limit (the
adapter's `rate` setting): a sliding-window limit refuses a send that arrives a
hair early, and network jitter makes some arrive early, so pacing exactly at the
limit would earn occasional 429s. Twilio, which queues rather than refuses, is
paced at its limit, and so is Telegram's bot: at its 30/s the hub's own cap of 30
sends in any second keeps inside the double's window, which forgives 20 ms of
jitter. The line "limit used" is the share of the provider's limit, not of the
hub's pace.

    ./dev bench pacing            # every scenario, 60 s each
    ./dev bench pacing --seconds 20 --only whatsapp
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.app import build_app  # noqa: E402
from hub.config import parse_settings  # noqa: E402
from hub.model import IdentityRef, InboundText  # noqa: E402
from hub.services.outbox import Draft, enqueue_many  # noqa: E402
from hub.services.runtime import HUB  # noqa: E402

PACE = 0.98
WINDOW = 10.0
SENDER = {"type": "campaign", "id": "bench"}


@dataclass
class Scenario:
    name: str
    limit: float  # the provider's limit, messages per second
    medium: str
    start_fake: Callable[[float], Awaitable[Any]]
    inbox: Callable[[Any, float], dict[str, Any]]
    recipients: list[IdentityRef]
    # A recipient that gets far more than its share (Telegram: one busy chat).
    hot: IdentityRef | None = None
    per_recipient_limit: float | None = None
    # The share of the limit the hub paces at (see PACE).
    pace: float = PACE
    accepted: Callable[[Any], list[dict[str, Any]]] = field(default=lambda fake: [])


def phones(count: int) -> list[IdentityRef]:
    return [IdentityRef(kind="phone", value=f"+1555{n:07d}") for n in range(count)]


def chats(count: int) -> list[IdentityRef]:
    return [IdentityRef(kind="telegram", value=str(700000 + n)) for n in range(count)]


# -- the providers ------------------------------------------------------------------------


async def start_whatsapp(limit: float) -> Any:
    from channels.whatsapp.simulator import FakeWhatsApp

    fake = FakeWhatsApp(rate=limit, rate_limit_status=429)
    await fake.start()
    return fake


def whatsapp_inbox(fake: Any, pace: float) -> dict[str, Any]:
    return {
        "id": "wa",
        "channel": "whatsapp",
        "phone_number_id": fake.phone_number_id,
        "access_token": fake.access_token,
        "app_secret": "bench-app-secret",
        "verify_token": "bench-verify-token",
        "api_base": fake.url,
        "rate": pace,
    }


async def start_telegram(limit: float) -> Any:
    from channels.telegram.simulator import FakeTelegram

    fake = FakeTelegram(global_rate=limit, per_chat_rate=1.0)
    await fake.start()
    return fake


def telegram_inbox(fake: Any, pace: float) -> dict[str, Any]:
    return {
        "id": "tg",
        "channel": "telegram",
        "token": "123456789:AAbench-token-for-the-fake-bot-api",
        "secret_token": "bench-secret-token",
        "api_base": fake.url,
        "rate": pace,
        "per_chat_rate": 0.9,  # Telegram's "about 1 per second", with room for jitter
    }


async def start_twilio(limit: float) -> Any:
    from channels.twilio.simulator import FakeTwilio

    # Twilio queues what comes faster than a sender's rate rather than refusing
    # it; the double is stricter and refuses, forgiving 50 ms of arrival noise.
    fake = FakeTwilio(rate=limit, jitter=0.05)
    await fake.start()
    return fake


def twilio_inbox(fake: Any, pace: float) -> dict[str, Any]:
    return {
        "id": "sms",
        "channel": "twilio",
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "number": "+15005550006",
        "api_base": fake.url,
        "rate": pace,
    }


def ok_requests(fake: Any) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r.get("status") in (200, 201)]


SCENARIOS = {
    "twilio": Scenario(
        "Twilio SMS, long code (1/s)",
        1.0,
        "sms",
        start_twilio,
        twilio_inbox,
        phones(5),
        # At one message a second a 10-second window holds 9 or 10 sends when
        # paced under 1/s: pace at the limit itself (Twilio queues, see above).
        pace=1.0,
        accepted=ok_requests,
    ),
    "telegram": Scenario(
        "Telegram bot (30/s overall, 1/s per chat)",
        30.0,
        "telegram",
        start_telegram,
        telegram_inbox,
        chats(60),
        hot=IdentityRef(kind="telegram", value="799999"),
        per_recipient_limit=1.0,
        # The adapter's default, 30/s: the hub never lets more than 30 go in a
        # second, and the double's window forgives 20 ms of arrival jitter.
        pace=1.0,
        accepted=lambda fake: [
            r for r in ok_requests(fake) if str(r.get("method", "")).startswith("send")
        ],
    ),
    "whatsapp": Scenario(
        "WhatsApp Cloud API (80/s)",
        80.0,
        "whatsapp",
        start_whatsapp,
        whatsapp_inbox,
        phones(400),
        accepted=ok_requests,
    ),
}


# -- one run --------------------------------------------------------------------------------


def recipient_of(record: dict[str, Any]) -> str:
    if "chat_id" in record:
        return str(record["chat_id"])
    body = record.get("body") or {}
    if isinstance(body, dict):
        return str(body.get("to") or body.get("To") or "")
    return ""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def watch_loop(lags: list[float], every: float = 0.005) -> None:
    """How late the event loop wakes a sleeper: the jitter every send inherits."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(every)
        lags.append(time.perf_counter() - start - every)


async def run(scenario: Scenario, seconds: float) -> dict[str, Any]:
    fake = await scenario.start_fake(scenario.limit)
    pace = scenario.limit * scenario.pace
    folder = Path(tempfile.mkdtemp(prefix="hub-pacing-"))
    settings = parse_settings(
        {
            "server": {"host": "127.0.0.1", "port": 0, "public_url": "http://127.0.0.1:9"},
            "store": {"data_dir": str(folder / "var")},
            "inboxes": [scenario.inbox(fake, pace)],
            "logging": {"level": "WARNING"},
            "dispatcher": {"poll_interval": 0.2},
        },
        source="bench",
        base_dir=folder,
    )
    app = build_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        hub = app[HUB]
        inbox = settings.inboxes[0].id
        everyone = [*scenario.recipients, *([scenario.hot] if scenario.hot else [])]
        results = await hub.ingest(
            [
                InboundText(
                    inbox=inbox,
                    medium=scenario.medium,  # type: ignore[arg-type]
                    provider_id=f"hello-{n}",
                    sender=ref,
                    text="hello",
                )
                for n, ref in enumerate(everyone)
            ]
        )
        conversation = {
            ref.value: result.conversation_id for ref, result in zip(everyone, results, strict=True)
        }
        # More than the run can drain; the busy chat's quarter of it goes slower.
        backlog = math.ceil(scenario.limit * (seconds + 15) * (4 / 3 if scenario.hot else 1))
        drafts = [
            Draft(
                conversation[scenario.recipients[n % len(scenario.recipients)].value],
                f"offer {n}",
                SENDER,
            )
            for n in range(backlog)
        ]
        if scenario.hot is not None:
            # One chat asks for far more than 1/s: it must be paced, the others not held.
            drafts[::4] = [
                Draft(conversation[scenario.hot.value], f"hot {n}", SENDER)
                for n in range(len(drafts[::4]))
            ]
        for start in range(0, len(drafts), 500):
            await enqueue_many(hub.store, hub.events, drafts[start : start + 500])
        assert hub.dispatcher is not None
        hub.dispatcher.wake()
        lags: list[float] = []
        watcher = asyncio.create_task(watch_loop(lags))

        while not scenario.accepted(fake):  # noqa: ASYNC110 (polling the fake's record)
            await asyncio.sleep(0.05)
        first = scenario.accepted(fake)[0]["at"]
        store_pid = hub.store.embedded.process.pid  # type: ignore[union-attr]
        store_cpu = cpu_seconds(store_pid)
        await asyncio.sleep(max(0.0, first + seconds - time.monotonic()) + 0.5)
        store_cpu = cpu_seconds(store_pid) - store_cpu
        accepted = [r for r in scenario.accepted(fake) if r["at"] < first + seconds]
        refused = fake.rejected_429
        watcher.cancel()
    finally:
        await runner.cleanup()
        await fake.stop()

    windows = []
    for k in range(int(seconds // WINDOW)):
        lo, hi = first + k * WINDOW, first + (k + 1) * WINDOW
        count = sum(1 for r in accepted if lo <= r["at"] < hi)
        windows.append(count / (scenario.limit * WINDOW))
    lags.sort()
    report: dict[str, Any] = {
        "store_cpu_share": store_cpu / seconds,
        "store_cpu_per_message_ms": 1000 * store_cpu / max(1, len(accepted)),
        "loop_lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)] if lags else 0.0,
        "loop_lag_max_ms": 1000 * lags[-1] if lags else 0.0,
        "scenario": scenario.name,
        "limit": scenario.limit,
        "pace": pace,
        "accepted": len(accepted),
        "refused": refused,
        "windows": windows,
    }
    if scenario.per_recipient_limit is not None:
        per: dict[str, list[float]] = {}
        for r in accepted:
            per.setdefault(recipient_of(r), []).append(r["at"])
        # The most any one recipient got in any 1-second window.
        busiest = 0
        for times in per.values():
            times.sort()
            j = 0
            for i, t in enumerate(times):
                while times[j] <= t - 1.0:
                    j += 1
                busiest = max(busiest, i - j + 1)
        hot = per.get(scenario.hot.value if scenario.hot else "", [])
        report["per_recipient_max_in_1s"] = busiest
        report["hot_rate"] = (len(hot) - 1) / (hot[-1] - hot[0]) if len(hot) > 1 else 0.0
        report["per_recipient_limit"] = scenario.per_recipient_limit
    return report


def show(report: dict[str, Any]) -> bool:
    windows = report["windows"]
    ok = report["refused"] == 0 and min(windows) >= 0.95
    print(f"\n{report['scenario']}")
    print(f"  provider limit        {report['limit']:.0f}/s; hub paces at {report['pace']:.2f}/s")
    print(f"  accepted              {report['accepted']}")
    print(
        f"  event-loop lag        p99 {report['loop_lag_p99_ms']:.1f} ms, "
        f"max {report['loop_lag_max_ms']:.1f} ms (hub and provider double share the loop)"
    )
    print(f"  429s / rate refusals  {report['refused']}   (target 0)")
    print(
        f"  embedded store CPU    {report['store_cpu_share']:.0%} of a core, "
        f"{report['store_cpu_per_message_ms']:.1f} ms per message sent"
    )
    shares = "  ".join(f"{w:.1%}" for w in windows)
    print(f"  limit used per 10 s   {shares}")
    print(
        f"  min / median          {min(windows):.1%} / {statistics.median(windows):.1%}"
        "   (target >= 95% in every window)"
    )
    if "per_recipient_max_in_1s" in report:
        print(
            f"  per chat              at most {report['per_recipient_max_in_1s']} in any 1 s "
            f"(limit {report['per_recipient_limit']:.0f}); the busy chat got "
            f"{report['hot_rate']:.2f}/s while the bot used {statistics.median(windows):.1%}"
        )
        ok = ok and report["per_recipient_max_in_1s"] <= report["per_recipient_limit"]
    print(f"  {'PASS' if ok else 'FAIL'}")
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    print(f"pacing: {args.seconds:.0f} s per scenario")
    passed = True
    for name in names:
        passed = show(await run(SCENARIOS[name], args.seconds)) and passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
