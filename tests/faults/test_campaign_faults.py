"""A campaign through a real `hub serve` that is killed with kill -9 while it
sends: after the restart nobody gets it twice, the send that was in flight is
`unknown` (not sent again), and nobody is forgotten."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.services.accounts import Accounts, Passwords
from hub.services.contacts import new_contact_doc
from hub.store import Store
from tests.api.conftest import FAST_HASHER
from tests.faults.harness import DATABASE, DEADLINE, HubProcess, StoreReader, write_config

N = 40
PASSWORD = "campaign fault 1"


class SlowProvider:
    """The provider's API on loopback: each send takes `delay` seconds to answer,
    so a kill -9 finds some in flight. It keeps who each request was for."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: list[str] = []
        self.answered = 0
        self.ids = itertools.count(1)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.started.append(str(body["to"]))
        await asyncio.sleep(self.delay)
        self.answered += 1
        return web.json_response({"id": f"SM{next(self.ids):06d}"})

    @property
    def in_flight(self) -> int:
        return len(self.started) - self.answered

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/messages", self.messages)
        self.runner = web.AppRunner(app, handler_cancellation=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def provider() -> AsyncIterator[SlowProvider]:
    slow = SlowProvider(delay=0.4)
    await slow.start()
    yield slow
    await slow.stop()


async def wait_for(probe: Any, what: str, deadline: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await probe():
        assert loop.time() < end, f"{what}: not in {deadline} s"
        await asyncio.sleep(0.1)


async def test_kill_9_mid_campaign_sends_nobody_twice_and_forgets_nobody(
    tmp_path: Path, provider: SlowProvider
) -> None:
    config = write_config(
        tmp_path / "hub",
        inbox_lines=f'api_base = "{provider.url}"\nrate = 20.0\n',
        sections=(
            "[dispatcher]\nlease_seconds = 2\npoll_interval = 0.1\n"
            "[scheduler]\nlease_seconds = 1\n"
        ),
    )
    hub = await HubProcess(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            _, port = hub.store_info()
            store = await Store.open(
                uri=f"mongodb://127.0.0.1:{port}/?directConnection=true",
                database=DATABASE,
                data_dir=tmp_path,
            )
            try:
                await store.contacts.insert_many(
                    [
                        new_contact_doc(
                            f"c{i:04d}",
                            name=f"Customer {i}",
                            phones=[f"+1555020{i:04d}"],
                            labels=["promo"],
                        )
                        for i in range(N)
                    ]
                )
                accounts = Accounts(store)
                accounts.passwords = Passwords(FAST_HASHER)
                await accounts.create_agent(
                    email="boss@example.com", name="Boss", role="supervisor", password=PASSWORD
                )
            finally:
                await store.close()
            resp = await session.post(
                hub.url + "api/auth/login",
                json={"email": "boss@example.com", "password": PASSWORD},
            )
            assert resp.status == 200, await resp.text()
            auth = {"Authorization": f"Bearer {(await resp.json())['token']}"}
            resp = await session.post(
                hub.url + "api/campaigns",
                json={
                    "name": "Kill test",
                    "audience": {"labels": ["promo"]},
                    "message": {"text": "Hello {first_name}"},
                    "quiet_hours": {"start": "00:00", "end": "00:00"},
                },
                headers=auth,
            )
            assert resp.status == 201, await resp.text()
            cid = (await resp.json())["id"]
            resp = await session.post(hub.url + f"api/campaigns/{cid}/start", headers=auth)
            assert resp.status == 200, await resp.text()

            # Mid-send, with a send in flight: kill -9.
            async def mid_send() -> bool:
                return len(provider.started) >= 8 and provider.in_flight >= 1

            await wait_for(mid_send, "sending under way", DEADLINE)
            in_flight = set(provider.started[provider.answered :])
            await hub.kill()
            before_restart = len(provider.started)
            assert before_restart < N

            hub = await HubProcess(config).start()
            await hub.ready(session)
            _, port = hub.store_info()
            async with StoreReader(port) as reader:

                async def done() -> bool:
                    doc = await reader.db.campaigns.find_one({"_id": cid})
                    return doc is not None and doc["status"] == "completed"

                await wait_for(done, "the campaign completed after the restart", 90.0)
                records = await reader.db.campaign_sends.find({"campaign_id": cid}).to_list()
                contacts = {
                    d["_id"]: d["phones"][0] for d in await reader.db.contacts.find().to_list()
                }
            await asyncio.sleep(0.5)
            resp = await session.get(hub.url + f"api/campaigns/{cid}", headers=auth)
            stats = (await resp.json())["stats"]
    finally:
        await hub.kill()

    # Nobody twice: the provider saw each number at most once, across the kill.
    counts = Counter(provider.started)
    assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1]
    # Nobody forgotten: every recipient has a final status, sent or unknown.
    statuses = Counter(r["status"] for r in records)
    assert len(records) == N
    assert statuses["sent"] + statuses["delivered"] + statuses["unknown"] == N, statuses
    sent = {contacts[r["contact_id"]] for r in records if r["status"] in ("sent", "delivered")}
    assert sent <= set(provider.started)
    # The sends in flight at the kill are `unknown`, and not sent again after it.
    unknown = {contacts[r["contact_id"]] for r in records if r["status"] == "unknown"}
    assert in_flight and in_flight <= unknown
    assert not unknown & set(provider.started[before_restart:])
    assert stats["unknown"] == len(unknown) and stats["sent"] == N - len(unknown)
