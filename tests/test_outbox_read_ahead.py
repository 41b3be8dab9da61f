"""A group held for its instant has what its sends need read about a second
before it (`READ_LEAD`): for a greeting's opt-out re-check, the contacts whose
opt-outs changed since it was queued (one read by an index, not one contact per
recipient), so that at the instant the dispatcher only books, sends and records.
An opt-out while the greeting is held, before that read, still cancels it; the
read is never before the claim, and nothing is sent before the instant.

A real dispatcher on the hub's store sends through the test channel to
`FakeProvider` (a loopback HTTP server)."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient

from hub.services.contacts import set_opt_out
from hub.services.dispatcher import READ_LEAD
from tests.conftest import hub_of
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually
from tests.test_outbox_ahead import (
    SETTLED,
    claimed,
    left_at_its_instant,
    monotonic_of,
    own_dispatcher,
    queued,
)


async def test_a_held_greetings_opt_out_recheck_is_read_before_its_instant_and_it_leaves_at_it(
    hub_client: TestClient, provider: FakeProvider
) -> None:
    dispatcher = await own_dispatcher(hub_client)
    hub = hub_of(hub_client)
    # Another customer opted out a moment ago: the one change the re-check reads.
    other_id, _ = await queued(hub_client, "+15551250009", 3600.0)
    other = await hub.store.messages.find_one({"_id": other_id})
    other_conversation = await hub.store.conversations.find_one({"_id": other["conversation_id"]})
    channel = other_conversation["channel"]
    await set_opt_out(hub.store, hub.events, other_conversation["contact_id"], channel)
    message_id, due = await queued(hub_client, "+15551250001", 3.0, at_most_once=True)
    await hub.store.outbox.update_one(
        {"_id": message_id}, {"$set": {"recheck_opt_out": True}}
    )  # as a greeting is queued
    due_monotonic = monotonic_of(due)
    dispatcher.start()
    try:
        await claimed(hub_client, message_id)
        assert message_id not in dispatcher._contact_ahead  # not read at the claim
        # Read READ_LEAD before the instant, not sent yet.
        await asyncio.sleep(max(0.0, due_monotonic - READ_LEAD + 0.4 - time.monotonic()))
        assert time.monotonic() < due_monotonic
        changed = dispatcher._contact_ahead[message_id]
        assert list(changed) == [other_conversation["contact_id"]]
        assert changed[other_conversation["contact_id"]]["opted_out"] == {channel: True}
        assert provider.sent == []

        await left_at_its_instant(hub_client, provider, message_id, due_monotonic)
        assert message_id not in dispatcher._contact_ahead  # forgotten once sent
    finally:
        await dispatcher.stop()


async def test_an_opt_out_while_a_greeting_is_held_cancels_it(
    hub_client: TestClient, provider: FakeProvider
) -> None:
    dispatcher = await own_dispatcher(hub_client)
    message_id, due = await queued(hub_client, "+15551250002", 4.0, at_most_once=True)
    await hub_of(hub_client).store.outbox.update_one(
        {"_id": message_id}, {"$set": {"recheck_opt_out": True}}
    )  # as a greeting is queued
    dispatcher.start()
    try:
        await claimed(hub_client, message_id)
        store = hub_of(hub_client).store
        hub = hub_of(hub_client)
        message = await store.messages.find_one({"_id": message_id})
        conversation = await store.conversations.find_one({"_id": message["conversation_id"]})
        # Held, well before its contact is read ahead.
        assert time.monotonic() < monotonic_of(due) - READ_LEAD - 1.0
        await set_opt_out(store, hub.events, conversation["contact_id"], conversation["channel"])

        message = await eventually(
            lambda: store.messages.find_one({"_id": message_id}),
            lambda m: m is not None and m["status"] in SETTLED | {"cancelled"},
        )
        assert message["status"] == "cancelled"
        assert message["error"] == "opted out before it was sent"
        assert provider.sent == []
    finally:
        await dispatcher.stop()
