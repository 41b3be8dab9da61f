"""The dispatcher claims items due within `CLAIM_AHEAD` before they are due and
holds each until its own `next_attempt_at` (issue 14: greetings leave within a
second of their local hour): never sent before it, sent just after it, put back as
due on a clean stop, and items due now go out while others wait.

A real dispatcher on the hub's store sends through the test channel to
`FakeProvider` (a loopback HTTP server that notes when each send arrived)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from hub.model import utcnow
from hub.services.dispatcher import CLAIM_AHEAD, Dispatcher
from hub.services.outbox import enqueue
from tests.conftest import hub_of, post_inbound
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually

AGENT = {"type": "agent", "id": "agent-1"}
SETTLED = {"sent", "delivered", "read", "failed", "unknown"}


def _ms(moment: datetime) -> datetime:
    """`moment` to the store's precision (milliseconds)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def queued(client: TestClient, number: str, in_seconds: float, **options: Any) -> Any:
    """A reply to `number` queued with `next_attempt_at` `in_seconds` from now;
    returns (its id, that instant)."""
    hub = hub_of(client)
    resp = await post_inbound(client, MessageSid=f"SMin{number}", From=number, Body="hello")
    assert resp.status == 200, await resp.text()
    inbound = await hub.store.messages.find_one({"_id": (await resp.json())["id"]})
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=str(inbound["conversation_id"]),
        text=f"to {number}",
        sender=AGENT,
        **options,
    )
    due = _ms(utcnow() + timedelta(seconds=in_seconds))
    await hub.store.outbox.update_one({"_id": doc["_id"]}, {"$set": {"next_attempt_at": due}})
    return doc["_id"], due


async def own_dispatcher(client: TestClient, workers: int = 4) -> Dispatcher:
    """The hub's dispatcher stopped; a new one (another process's) on its store,
    polling every 0.05 s, started."""
    hub = hub_of(client)
    await hub.dispatcher.stop()
    settings = hub.settings.dispatcher.model_copy(update={"workers": workers})
    dispatcher = Dispatcher(hub.store, hub.events, hub.metrics, hub.adapters, settings, "ahead")
    return dispatcher


def monotonic_of(moment: datetime) -> float:
    """The monotonic clock's reading at wall-clock `moment`."""
    return time.monotonic() + (moment - utcnow()).total_seconds()


def sent_at(provider: FakeProvider, message_id: str) -> float | None:
    return next((r["at"] for r in provider.sent if r.get("ref") == message_id), None)


async def left_at_its_instant(
    client: TestClient, provider: FakeProvider, message_id: str, due_monotonic: float
) -> None:
    """Once `message_id` is settled: it was sent, never before its instant (on the
    monotonic clock) and within half a second after it."""
    store = hub_of(client).store
    message = await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and m["status"] in SETTLED,
    )
    assert message["status"] == "sent"
    at = sent_at(provider, message_id)
    assert at is not None
    assert at >= due_monotonic - 0.005  # never before (clocks read apart)
    assert at <= due_monotonic + 0.5


async def claimed(client: TestClient, message_id: str) -> dict[str, Any]:
    store = hub_of(client).store
    return await eventually(
        lambda: store.outbox.find_one({"_id": message_id}),
        lambda item: item is not None and item["state"] == "sending",
    )


async def test_an_item_claimed_ahead_is_not_sent_before_its_instant_and_is_sent_just_after(
    hub_client: TestClient, provider: FakeProvider
) -> None:
    dispatcher = await own_dispatcher(hub_client)
    message_id, due = await queued(hub_client, "+15551240001", 2.0, at_most_once=True)
    due_monotonic = monotonic_of(due)
    dispatcher.start()
    try:
        item = await claimed(hub_client, message_id)
        # Claimed ahead: leased from its instant on, not yet handed to the provider.
        assert time.monotonic() < due_monotonic - 1.0
        assert item["handed"] is False
        lease = timedelta(seconds=dispatcher.settings.lease_seconds)
        assert item["lease_until"] >= due + lease - timedelta(milliseconds=1)
        assert provider.sent == []

        await left_at_its_instant(hub_client, provider, message_id, due_monotonic)
        assert [r["ref"] for r in provider.sent] == [message_id]
    finally:
        await dispatcher.stop()


async def test_a_clean_stop_puts_an_item_held_for_its_instant_back_as_it_was_due(
    hub_client: TestClient, provider: FakeProvider
) -> None:
    dispatcher = await own_dispatcher(hub_client)
    message_id, due = await queued(hub_client, "+15551240002", CLAIM_AHEAD - 2.0)
    dispatcher.start()
    await claimed(hub_client, message_id)
    await dispatcher.stop()

    store = hub_of(hub_client).store
    item = await store.outbox.find_one({"_id": message_id})
    assert item is not None
    assert item["state"] == "queued" and item["lease_owner"] is None
    assert item["next_attempt_at"] == due  # not "now": never sent early by the next one
    assert item["attempts"] == 0  # its claim was no attempt
    assert provider.sent == []

    # The next dispatcher sends it at its instant, not before, once.
    successor = Dispatcher(
        store, hub_of(hub_client).events, hub_of(hub_client).metrics,
        hub_of(hub_client).adapters, dispatcher.settings, "successor",
    )  # fmt: skip
    successor.start()
    try:
        message = await eventually(
            lambda: store.messages.find_one({"_id": message_id}),
            lambda m: m is not None and m["status"] in SETTLED,
            deadline=CLAIM_AHEAD + 5,
        )
        assert message["status"] == "sent"
        at = sent_at(provider, message_id)
        assert at is not None and at >= monotonic_of(due) - 0.005
        assert [r["ref"] for r in provider.sent] == [message_id]
    finally:
        await successor.stop()


async def test_items_due_now_go_out_while_others_wait_for_a_later_instant(
    hub_client: TestClient, provider: FakeProvider
) -> None:
    # One worker: the one held for later must not hold it up.
    dispatcher = await own_dispatcher(hub_client, workers=1)
    later_id, later = await queued(hub_client, "+15551240003", CLAIM_AHEAD - 2.0)
    dispatcher.start()
    try:
        await claimed(hub_client, later_id)
        now_id, _ = await queued(hub_client, "+15551240004", 0.0)
        queued_at = time.monotonic()
        dispatcher.wake()
        await eventually(lambda: _sent(provider, now_id), bool)
        at = sent_at(provider, now_id)
        assert at is not None and at - queued_at < 1.0
        assert sent_at(provider, later_id) is None  # still waiting for its instant

        await eventually(lambda: _sent(provider, later_id), bool, deadline=CLAIM_AHEAD + 5)
        at = sent_at(provider, later_id)
        assert at is not None and at >= monotonic_of(later) - 0.005
    finally:
        await dispatcher.stop()


async def _sent(provider: FakeProvider, message_id: str) -> bool:
    await asyncio.sleep(0)
    return sent_at(provider, message_id) is not None
