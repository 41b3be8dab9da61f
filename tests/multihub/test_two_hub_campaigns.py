"""A campaign with two real `hub serve` processes on one store: one runs the
campaigns job (the lease `job:campaigns`), every recipient gets it once, and when
that hub is killed with kill -9 mid-send the other takes the job over and
finishes it, nobody twice and nobody forgotten."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from hub.services.contacts import new_contact_doc
from tests.faults.harness import HubProcess
from tests.multihub.conftest import Cluster

N = 60
SCHEDULER = "\n[scheduler]\nlease_seconds = 1\n"


async def wait_for(
    probe: Callable[[], Awaitable[bool]], what: str, deadline: float = 60.0
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await probe():
        assert loop.time() < end, f"{what}: not in {deadline} s"
        await asyncio.sleep(0.1)


def with_short_job_lease(hub: HubProcess) -> HubProcess:
    hub.config.write_text(hub.config.read_text() + SCHEDULER)
    return hub


async def test_two_hubs_send_a_campaign_once_and_the_survivor_finishes_it(
    cluster: Cluster,
) -> None:
    cluster.provider.delay = 0.05
    store = await cluster.store()
    a = await cluster.start(with_short_job_lease(cluster.hub("a", rate=20.0)))

    async def job_owner() -> str | None:
        lease = await store.leases.find_one({"_id": "job:campaigns"})
        return None if lease is None else str(lease["owner"])

    async def a_holds_it() -> bool:
        return await job_owner() is not None

    await wait_for(a_holds_it, "hub A runs the campaigns job")
    owner_a = await job_owner()
    b = await cluster.start(with_short_job_lease(cluster.hub("b", rate=20.0)))
    await store.contacts.insert_many(
        [
            new_contact_doc(f"m{i:04d}", name=f"Member {i}", phones=[f"+1555030{i:04d}"],
                            labels=["club"])
            for i in range(N)
        ]
    )
    token_a, token_b = await cluster.login(a), await cluster.login(b)
    async with cluster.session.post(
        a.url + "api/campaigns",
        json={
            "name": "Two hubs",
            "audience": {"labels": ["club"]},
            "message": {"text": "Hi {first_name}"},
            "quiet_hours": {"start": "00:00", "end": "00:00"},
        },
        headers={"Authorization": f"Bearer {token_a}"},
    ) as response:
        assert response.status == 201, await response.text()
        cid = (await response.json())["id"]
    async with cluster.session.post(
        b.url + f"api/campaigns/{cid}/start", headers={"Authorization": f"Bearer {token_b}"}
    ) as response:
        assert response.status == 200, await response.text()

    async def some_sent() -> bool:
        return len(cluster.provider.sent) >= 10

    await wait_for(some_sent, "sending under way")
    assert await job_owner() == owner_a  # A runs the job, B waits
    await a.kill()

    async def completed() -> bool:
        doc = await store.campaigns.find_one({"_id": cid})
        return doc is not None and doc["status"] == "completed"

    await wait_for(completed, "the survivor finished the campaign", 90.0)
    assert await job_owner() not in (None, owner_a)  # B took the job over
    assert b.process is not None and b.process.returncode is None
    records = await store.campaign_sends.find({"campaign_id": cid}).to_list()
    statuses = Counter(r["status"] for r in records)
    assert len(records) == N
    assert statuses["sent"] + statuses["delivered"] + statuses["unknown"] == N, statuses
    sent_to = Counter(str(m["to"]) for m in cluster.provider.sent)
    assert max(sent_to.values()) == 1
    assert len(sent_to) + statuses["unknown"] >= N

