"""Fixtures for the agents' API: a hub with three test-channel inboxes (t1, t2,
and w, whose channel refuses replies like WhatsApp outside its 24-hour window),
agents of each role, and logging in."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from hub.api.base import API
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.services.accounts import Accounts, Passwords
from hub.services.runtime import HUB, Hub
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse 1"
WINDOW_REASON = "the 24-hour window is closed; send a template"

# Cheap argon2 parameters: the tests log in often; the hashes are still argon2id.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def api_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> Callable[..., Settings]:
    def make() -> Settings:
        base = {"channel": "testchan", "secret": SECRET, "api_base": provider.url, "rate": 200.0}
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [
                {**base, "id": "t1"},
                {**base, "id": "t2"},
                {**base, "id": "w", "medium": "whatsapp", "refuse_replies": WINDOW_REASON},
            ],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def api(api_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    app = build_app(api_settings())
    async with TestClient(TestServer(app)) as client:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        yield client


def hub(client: Client) -> Hub:
    return client.app[HUB]


def accounts(client: Client) -> Accounts:
    found = client.app[API].accounts
    assert found is not None
    return found


@dataclass
class Agent:
    id: str
    email: str
    role: str
    token: str
    csrf: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


_counter = iter(range(1_000_000))


async def make_agent(
    client: Client,
    role: str = "agent",
    inboxes: list[str] | None = None,
    teams: list[str] | None = None,
) -> Agent:
    """Create an agent in the store and log it in through the API."""
    email = f"{role}{next(_counter)}@example.com"
    doc = await accounts(client).create_agent(
        email=email, name=role.title(), role=role, password=PASSWORD, inboxes=inboxes, teams=teams
    )
    resp = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # The test client keeps cookies; tests choose per request how they authenticate.
    client.session.cookie_jar.clear()
    return Agent(str(doc["_id"]), email, role, body["token"], body["csrf_token"])


async def inbound(
    client: Client, inbox: str, sid: str, sender: str, text: str, **extra: str
) -> str:
    """A customer's message through the test channel's signed webhook; its id."""
    from tests.conftest import post_inbound

    resp = await post_inbound(client, inbox, MessageSid=sid, From=sender, Body=text, **extra)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["id"])


async def conversation_of(client: Client, message_id: str) -> str:
    store = hub(client).store
    assert store is not None
    doc = await store.messages.find_one({"_id": message_id})
    assert doc is not None
    return str(doc["conversation_id"])
