"""At-most-once sends (campaigns, greetings) after a crash: only a send that was
handed to the provider becomes `unknown`; one the dead hub had claimed but was
still waiting for its turn in the inbox's pace goes back to the queue and is
sent once."""

from __future__ import annotations

from typing import Any

from tests.conftest import hub_of
from tests.test_outbox import interrupted_send


async def test_a_claimed_send_never_handed_over_is_sent_once_after_a_crash(
    hub_client: Any, provider: Any
) -> None:
    doc, successor = await interrupted_send(hub_client, at_most_once=True, campaign_id="c1")
    store = hub_of(hub_client).store
    await store.outbox.update_one({"_id": doc["_id"]}, {"$set": {"handed": False}})

    assert await successor.recover_expired() == 1
    assert await successor.run_once() is True
    sent = await store.messages.find_one({"_id": doc["_id"]})
    assert sent["status"] == "sent"
    assert [r["ref"] for r in provider.sent] == [doc["_id"]]
    assert await store.outbox.count_documents({}) == 0


async def test_a_send_handed_to_the_provider_is_unknown_after_a_crash(
    hub_client: Any, provider: Any
) -> None:
    doc, successor = await interrupted_send(hub_client, at_most_once=True, campaign_id="c1")
    store = hub_of(hub_client).store
    await store.outbox.update_one({"_id": doc["_id"]}, {"$set": {"handed": True}})

    assert await successor.recover_expired() == 1
    assert await successor.run_once() is False
    unknown = await store.messages.find_one({"_id": doc["_id"]})
    assert unknown["status"] == "unknown"
    assert provider.requests == []


async def test_an_at_most_once_send_is_marked_handed_before_it_goes(
    hub_client: Any, provider: Any
) -> None:
    hub = hub_of(hub_client)
    seen: list[Any] = []
    adapter = hub.adapters["t1"]
    original = adapter.send

    async def watching(message: Any) -> Any:
        item = await hub.store.outbox.find_one({"_id": message.id})
        seen.append(item and item.get("handed"))
        return await original(message)

    adapter.send = watching  # type: ignore[method-assign]
    _, successor = await interrupted_send(hub_client, at_most_once=True, campaign_id="c1")
    await hub.store.outbox.update_many({}, {"$set": {"state": "queued", "lease_until": None}})
    assert await successor.run_once() is True
    assert seen == [True]
