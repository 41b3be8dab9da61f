"""`kill -9` of a hub holding at-most-once sends (greetings) claimed ahead for
their instant, on two real `hub serve` processes sharing one store:

- killed before the group was marked handed: the other hub recovers the items
  when their lease ends (counted from the instant) and sends each once, none
  before its instant;
- killed after the mark (`outbox_handed`, a second before the instant) and before
  the sends: the other hub records every one `unknown` and sends none (it may
  have reached the provider: never twice).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from hub.model import utcnow
from hub.services.events import EventBus, Events
from hub.services.outbox import Draft, enqueue_many
from tests.multihub.conftest import Cluster
from tests.multihub.test_two_hubs import _inbound
from tests.support.waiting import eventually

SYSTEM = {"type": "system", "id": None}
AHEAD = 4.0  # seconds from queueing to the instant


async def _held_by_a(cluster: Cluster, prefix: str) -> tuple[list[str], float, str]:
    """Hub A (the inbox's sender) holding 10 at-most-once greetings due AHEAD
    seconds from now, and hub B started beside it; their ids, the instant on the
    monotonic clock, and A's instance id."""
    a = await cluster.start(cluster.hub("a", inbox_lease=2.0, lease_seconds=3.0))
    owner_a = await eventually(cluster.lease_owner, lambda o: o is not None)
    await cluster.start(cluster.hub("b", inbox_lease=2.0, lease_seconds=3.0))
    await _inbound(cluster, a, 10, prefix)
    conversations = await cluster.conversations()
    store = await cluster.store()
    due = utcnow().replace(microsecond=0) + timedelta(seconds=AHEAD)
    due_monotonic = time.monotonic() + (due - utcnow()).total_seconds()
    drafts = [
        Draft(
            conversation_id=c,
            text="Happy holiday!",
            sender=SYSTEM,
            at_most_once=True,
            next_attempt_at=due,
            recheck_opt_out=True,
        )
        for c in conversations
    ]
    ids = await enqueue_many(store, Events(store, EventBus(), "test"), drafts)
    assert len(ids) == 10

    async def held() -> int:
        return await store.outbox.count_documents(
            {"_id": {"$in": ids}, "state": "sending", "lease_owner": owner_a}
        )

    await eventually(held, lambda n: n == 10, deadline=AHEAD - 1.5, every=0.05)
    assert time.monotonic() < due_monotonic - 1.0 and cluster.provider.sent == []
    return ids, due_monotonic, owner_a


async def test_a_hub_killed_while_holding_sends_for_their_instant_leaves_them_to_be_sent_once(
    cluster: Cluster,
) -> None:
    ids, due_monotonic, _ = await _held_by_a(cluster, "SMh")
    store = await cluster.store()
    assert await store.outbox_handed.count_documents({}) == 0  # not marked yet
    await cluster.hubs[0].kill()

    await eventually(
        lambda: cluster.statuses(ids), lambda s: s["sent"] == len(ids), deadline=AHEAD + 15
    )
    await asyncio.sleep(1.0)  # time for any second send
    assert cluster.sends() == dict.fromkeys(ids, 1)
    assert min(sent["at"] for sent in cluster.provider.sent) >= due_monotonic - 0.005


async def test_a_hub_killed_after_marking_its_held_sends_handed_leaves_them_unknown(
    cluster: Cluster,
) -> None:
    ids, due_monotonic, _ = await _held_by_a(cluster, "SMu")
    store = await cluster.store()
    await eventually(
        lambda: store.outbox_handed.count_documents({}), lambda n: n >= 1, deadline=AHEAD
    )
    assert time.monotonic() < due_monotonic - 0.1
    await cluster.hubs[0].kill()
    assert cluster.provider.sent == []

    await eventually(
        lambda: cluster.statuses(ids), lambda s: s["unknown"] == len(ids), deadline=AHEAD + 15
    )
    await asyncio.sleep(1.0)
    assert cluster.provider.sent == []  # none sent by the survivor
