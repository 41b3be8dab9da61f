"""Shared fixtures: one embedded store for the session (a real child process
over a real connection), a fresh database per test, and a running hub app."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient

import tests.support.testchannel  # noqa: F401  (registers the test channel)
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.services.runtime import HUB, Hub
from hub.store import Store
from hub.store.embedded import EmbeddedStore
from tests.support.fakeprovider import FakeProvider
from tests.support.testchannel import sign

# The tests choose their own store and config: the developer's environment must
# not point them at another (a real MongoDB, a production config). Only the tests
# marked `store` (tests/multihub, `./dev test -m store`) use a MongoDB named here.
STORE_TEST_URI = os.environ.get("MONGODB_URI", "")
for _name in ("HUB_CONFIG", "MONGODB_URI"):
    os.environ.pop(_name, None)

SECRET = "test-secret-123"


@pytest.fixture(scope="session")
async def embedded_uri(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    embedded = EmbeddedStore(tmp_path_factory.mktemp("store"))
    uri = await embedded.start()
    yield uri
    await embedded.stop()


@dataclass
class PrivateStore:
    """An embedded store of a test's own, which the test may stop and restart."""

    data_dir: Path
    embedded: EmbeddedStore
    uri: str = ""

    async def stop(self) -> None:
        await self.embedded.stop()

    async def restart(self) -> str:
        """Start a new store process on the same data directory; return its URI."""
        await self.embedded.stop()
        self.embedded = EmbeddedStore(self.data_dir)
        self.uri = await self.embedded.start()
        return self.uri


@pytest.fixture
async def private_store(tmp_path: Path) -> AsyncIterator[PrivateStore]:
    private = PrivateStore(tmp_path / "private-store", EmbeddedStore(tmp_path / "private-store"))
    private.uri = await private.embedded.start()
    yield private
    await private.embedded.stop()


@pytest.fixture
async def db_name(embedded_uri: str) -> AsyncIterator[str]:
    """A fresh database name, dropped after the test.

    Dropping matters beyond tidiness: the embedded engine's writes slow down with
    every collection the whole store holds (about 1 ms per left-over test
    database), so a suite that kept them would get slower test by test.
    """
    name = "t" + secrets.token_hex(6)
    yield name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(embedded_uri)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture
async def store(embedded_uri: str, db_name: str, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(uri=embedded_uri, database=db_name, data_dir=tmp_path)
    await opened.ensure_indexes()
    yield opened
    await opened.client.drop_database(db_name)
    await opened.close()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def make_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        inbox = {
            "id": "t1",
            "channel": "testchan",
            "secret": SECRET,
            "api_base": provider.url,
            "rate": 200.0,
        }
        inbox.update(overrides.pop("inbox", {}))
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [inbox],
        }
        for key, value in overrides.items():
            data.setdefault(key, {}).update(value)
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def hub_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(make_settings())
    async with TestClient(TestServer(app)) as client:
        yield client


def hub_of(client: TestClient[web.Request, web.Application]) -> Hub:
    return client.app[HUB]


def signed_form(fields: dict[str, str], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = urllib.parse.urlencode(fields).encode()
    return body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Signature": sign(secret, body),
    }


async def post_inbound(
    client: TestClient[web.Request, web.Application], inbox: str = "t1", **fields: str
) -> Any:
    body, headers = signed_form(fields)
    return await client.post(f"/webhooks/testchan/{inbox}", data=body, headers=headers)
