"""Fixtures for the agents' scheduled jobs (send later, snooze, reminders, SLA):
the API's hub with the scheduler's own timer off, so each test drives the jobs
with `run(now)` at the times it chooses; inbox t1 has a first-response SLA of
15 minutes escalated 30 minutes after the breach."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.api.base import API
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.services.accounts import Passwords
from hub.services.runtime import Hub
from scheduler.agents import RemindersJob, SendLaterJob, SlaJob, SnoozeJob
from tests.api.conftest import FAST_HASHER, WINDOW_REASON
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider

Client = TestClient[web.Request, web.Application]


def settings_data(uri: str, db: str, provider_url: str) -> dict[str, Any]:
    base = {"channel": "testchan", "secret": SECRET, "api_base": provider_url, "rate": 200.0}
    return {
        "store": {"uri": uri, "database": db},
        "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
        "events": {"poll_interval": 0.05},
        "scheduler": {"enabled": False},
        "inboxes": [
            {**base, "id": "t1", "first_response": "15m", "escalate_after": "30m"},
            {**base, "id": "t2"},
            {**base, "id": "w", "medium": "whatsapp", "refuse_replies": WINDOW_REASON},
        ],
    }


@pytest.fixture
def sched_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> Callable[[], Settings]:
    def make() -> Settings:
        data = settings_data(embedded_uri, db_name, provider.url)
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


async def _client(settings: Settings) -> Client:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    client: Client = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    accounts = client.app[API].accounts
    assert accounts is not None
    accounts.passwords = Passwords(FAST_HASHER)
    return client


@pytest.fixture
async def api(sched_settings: Callable[[], Settings]) -> AsyncIterator[Client]:
    client = await _client(sched_settings())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def second_hub(sched_settings: Callable[[], Settings]) -> AsyncIterator[Client]:
    """Another hub process's app on the same store."""
    client = await _client(sched_settings())
    try:
        yield client
    finally:
        await client.close()


def later(seconds: float) -> datetime:
    from datetime import timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jobs(hub: Hub) -> tuple[SendLaterJob, SnoozeJob, RemindersJob, SlaJob]:
    return SendLaterJob(hub), SnoozeJob(hub), RemindersJob(hub), SlaJob(hub)
