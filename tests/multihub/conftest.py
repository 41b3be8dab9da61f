"""Several real `hub serve` processes on one store, and what the tests need around
them: the provider double they send to, an admin to log in as, and the test's own
client on the store.

The store is, by default, the embedded store's server run on its own
(`tests.faults.harness.SharedStore`); every hub is given its `data_dir` and
attaches to it, as the contract says a second `hub serve` on a running embedded
store does. With `MONGODB_URI` set, the tests marked `store` run the same against
that MongoDB (a replica set, typically), each in a database of its own that is
dropped afterwards: `MONGODB_URI=mongodb://... ./dev test -m store`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from hub.services.accounts import Accounts
from hub.store import Store
from tests.conftest import STORE_TEST_URI
from tests.faults.harness import INBOX, HubProcess, SharedStore, write_config
from tests.support.fakeprovider import FakeProvider

ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "multihub-password-1"


@dataclass
class Cluster:
    """Hubs on one store, a provider double, and the test's own store client."""

    root: Path
    uri: str  # the hubs' store.uri: "" for the embedded store in data_dir
    data_dir: Path
    database: str
    reader_uri: str  # where the test reads the store itself
    provider: FakeProvider
    session: aiohttp.ClientSession
    hubs: list[HubProcess] = field(default_factory=list)
    _store: Store | None = None

    def hub(
        self,
        name: str,
        *,
        inbox_lease: float = 2.0,
        lease_seconds: float = 60.0,
        rate: float = 200.0,
    ) -> HubProcess:
        """A hub (not started) on the cluster's store, sending to its provider."""
        config = write_config(
            self.root / name,
            uri=self.uri,
            database=self.database,
            data_dir=str(self.data_dir),
            inbox_lines=f'api_base = "{self.provider.url}"\nrate = {rate}\n',
            sections=(
                "\n[dispatcher]\npoll_interval = 0.1\nbackoff_base = 0.1\nbackoff_max = 0.5\n"
                f"inbox_lease_seconds = {inbox_lease}\nlease_seconds = {lease_seconds}\n"
                "\n[events]\npoll_interval = 0.05\n"
            ),
        )
        process = HubProcess(config)
        self.hubs.append(process)
        return process

    async def start(self, hub: HubProcess) -> HubProcess:
        await hub.start()
        await hub.ready(self.session)
        return hub

    async def store(self) -> Store:
        """The test's own connection to the hubs' store (hub.store.Store)."""
        if self._store is None:
            self._store = await Store.open(
                uri=self.reader_uri, database=self.database, data_dir=self.data_dir
            )
            await self._store.ensure_indexes()
        return self._store

    async def add_admin(self) -> None:
        store = await self.store()
        if await store.agents.find_one({"email": ADMIN_EMAIL}) is None:
            await Accounts(store).create_agent(
                email=ADMIN_EMAIL, name="Ops", role="admin", password=ADMIN_PASSWORD
            )

    async def login(self, hub: HubProcess) -> str:
        """An admin's token from `hub`'s own login route."""
        await self.add_admin()
        async with self.session.post(
            hub.url + "api/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        ) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["token"])

    async def lease_owner(self) -> str | None:
        store = await self.store()
        lease = await store.leases.find_one({"_id": f"outbox:{INBOX}"})
        return None if lease is None else lease.get("owner")

    async def conversations(self) -> list[str]:
        store = await self.store()
        docs = await store.conversations.find({"inbox": INBOX}, {"_id": 1}).to_list()
        return [str(doc["_id"]) for doc in docs]

    async def statuses(self, ids: list[str]) -> Counter[str]:
        store = await self.store()
        docs = await store.messages.find({"_id": {"$in": ids}}, {"status": 1}).to_list()
        return Counter(str(doc.get("status")) for doc in docs)

    def sends(self) -> Counter[str]:
        """How many times the provider took each message (by the hub's message id)."""
        return Counter(str(sent["ref"]) for sent in self.provider.sent)

    async def close(self) -> None:
        for hub in self.hubs:
            await hub.kill()
        if self._store is not None:
            await self._store.close()


@pytest.fixture(
    params=["embedded", pytest.param("mongodb", marks=pytest.mark.store)],
)
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    provider = FakeProvider()
    await provider.start()
    shared: SharedStore | None = None
    data_dir = tmp_path / "store"
    if request.param == "mongodb":
        if not STORE_TEST_URI:
            await provider.stop()
            pytest.skip("set MONGODB_URI to run the two-hub tests against a MongoDB")
        uri = reader_uri = STORE_TEST_URI
        database = "hubtest" + secrets.token_hex(4)
    else:
        shared = await SharedStore(data_dir).start()
        uri, reader_uri, database = "", shared.uri, "hub"
    async with aiohttp.ClientSession() as session:
        running = Cluster(
            root=tmp_path,
            uri=uri,
            data_dir=data_dir,
            database=database,
            reader_uri=reader_uri,
            provider=provider,
            session=session,
        )
        try:
            yield running
        finally:
            await running.close()
            if request.param == "mongodb":
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
                try:
                    await client.drop_database(database)
                finally:
                    await client.close()
            if shared is not None:
                await shared.stop()
            await provider.stop()
