"""At-most-once sends (campaigns, greetings) after a crash: only a send that was
handed to the provider becomes `unknown`; one the dead hub had claimed but was
still waiting for its turn in the inbox's pace goes back to the queue and is
sent once. A group held for its instant is marked handed in one document naming
its items (`outbox_handed`), which recovery reads the same way."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hub.model import utcnow
from hub.services.dispatcher import _handed_key
from tests.conftest import hub_of
from tests.support.waiting import eventually
from tests.test_outbox import interrupted_send
from tests.test_outbox_ahead import SETTLED, claimed, own_dispatcher, queued


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


# -- a group held for its instant, marked handed in one document ------------------


async def _held_and_interrupted(hub_client: Any, named: bool) -> tuple[dict[str, Any], Any]:
    """An at-most-once send of a group a dead hub held for its instant and marked
    handed together (`outbox_handed`), the mark naming it or not."""
    doc, successor = await interrupted_send(hub_client, at_most_once=True, campaign_id="c1")
    store = hub_of(hub_client).store
    due = utcnow().replace(microsecond=0) - timedelta(seconds=10)
    held = {"handed": False, "claim": "claim-1", "held_for": due, "next_attempt_at": None}
    await store.outbox.update_one({"_id": doc["_id"]}, {"$set": held})
    ids = ["another-send", doc["_id"]] if named else ["another-send"]
    await store.outbox_handed.insert_one(
        {"_id": _handed_key({"claim": "claim-1", "held_for": due}), "ids": ids, "at": utcnow()}
    )
    return doc, successor


@pytest.mark.parametrize("named", [True, False])
async def test_a_held_send_is_unknown_after_a_crash_only_if_its_groups_mark_names_it(
    hub_client: Any, provider: Any, named: bool
) -> None:
    doc, successor = await _held_and_interrupted(hub_client, named=named)
    store = hub_of(hub_client).store

    assert await successor.recover_expired() == 1
    assert await successor.run_once() is (not named)
    message = await store.messages.find_one({"_id": doc["_id"]})
    if named:  # it may have reached the provider: never sent twice
        assert message["status"] == "unknown"
        assert provider.requests == []
    else:  # it was still waiting for its instant: sent once
        assert message["status"] == "sent"
        assert [r["ref"] for r in provider.sent] == [doc["_id"]]


async def test_a_held_group_is_marked_handed_in_one_document_before_it_goes_and_unmarked_after(
    hub_client: Any, provider: Any
) -> None:
    hub = hub_of(hub_client)
    dispatcher = await own_dispatcher(hub_client)
    message_id, due = await queued(hub_client, "+15551260001", 2.5, at_most_once=True)
    marks: list[list[Any]] = []
    adapter = hub.adapters["t1"]
    original = adapter.send

    async def watching(message: Any) -> Any:
        marks.extend([m["ids"] async for m in hub.store.outbox_handed.find({})])
        return await original(message)

    adapter.send = watching  # type: ignore[method-assign]
    dispatcher.start()
    try:
        item = await claimed(hub_client, message_id)
        # Claimed: out of the claim's range, its instant kept.
        assert item["next_attempt_at"] is None and item["held_for"] == due
        message = await eventually(
            lambda: hub.store.messages.find_one({"_id": message_id}),
            lambda m: m is not None and m["status"] in SETTLED,
        )
        assert message["status"] == "sent"
        assert marks == [[message_id]]  # the item itself was never written `handed`
        await eventually(lambda: hub.store.outbox_handed.count_documents({}), lambda n: n == 0)
    finally:
        await dispatcher.stop()
