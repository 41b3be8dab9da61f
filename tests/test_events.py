"""hub.services.events: the in-process bus and delivery across processes through the store
(issue 2, point 8)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.model import Event
from hub.services.events import EventBus, Events
from tests.conftest import hub_of, post_inbound
from tests.support.waiting import drain, eventually, next_event, of_type


def instance(store, name: str, **options) -> Events:
    return Events(store, EventBus(), name, poll_interval=0.02, **options)


async def test_publish_delivers_locally_at_once_and_stores_one_document_per_batch(store):
    events = instance(store, "a")
    sub = events.bus.subscribe()
    batch = [Event("message.created", {"id": "m1"}), Event("conversation.updated", {"id": "c1"})]

    await events.publish(batch)

    assert drain(sub) == batch
    (doc,) = await store.events.find().to_list()
    assert doc["origin"] == "a"
    assert json.loads(doc["events"]) == [e.as_dict() for e in batch]


async def test_events_that_are_not_json_are_stored_as_documents_and_still_relayed(store):
    a, b = instance(store, "a"), instance(store, "b")
    sub_b = b.bus.subscribe()
    b.start()
    try:
        at = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
        await a.publish([Event("internal", {"at": at})])
        (doc,) = await store.events.find().to_list()
        assert isinstance(doc["events"], list)
        got = await next_event(sub_b, of_type("internal"))
        assert got.data["at"].replace(tzinfo=UTC) == at
    finally:
        await b.stop()


async def test_publishing_nothing_stores_nothing(store):
    events = instance(store, "a")
    await events.publish([])
    assert await store.events.count_documents({}) == 0


async def test_every_subscriber_gets_every_event_and_a_closed_one_none(store):
    events = instance(store, "a")
    first, second, closed = (events.bus.subscribe() for _ in range(3))
    closed.close()
    await events.publish([Event("e", {"n": 1})])
    assert [e.data for e in drain(first)] == [{"n": 1}]
    assert [e.data for e in drain(second)] == [{"n": 1}]
    assert drain(closed) == []


async def test_a_full_subscriber_drops_events_instead_of_blocking_the_publisher(store):
    events = instance(store, "a")
    slow = events.bus.subscribe(maxsize=2)
    await events.publish([Event("e", {"n": n}) for n in range(5)])
    assert [e.data["n"] for e in drain(slow)] == [0, 1]
    assert slow.dropped == 3


async def test_another_instance_sees_events_through_the_store_and_not_its_own(store):
    a = instance(store, "a")
    b = instance(store, "b")
    sub_b = b.bus.subscribe()

    await a.publish([Event("from.a", {"n": 1}), Event("from.a", {"n": 2})])
    await b.publish([Event("from.b", {"n": 3})])

    assert await b.poll_once() == 2
    assert [(e.type, e.data["n"]) for e in drain(sub_b)] == [
        ("from.b", 3),  # local, at once
        ("from.a", 1),  # through the store, in order
        ("from.a", 2),
    ]
    assert await b.poll_once() == 0  # each stored batch is delivered once
    assert drain(sub_b) == []

    sub_a = a.bus.subscribe()
    assert await a.poll_once() == 1
    assert [e.type for e in drain(sub_a)] == ["from.b"]


async def test_events_already_stored_when_an_instance_starts_are_not_replayed(store):
    a = instance(store, "a")
    b = instance(store, "b")
    sub_b = b.bus.subscribe()
    await a.publish([Event("before", {})])
    b.start()
    try:
        # Published while b's first look at the store may still be running: it
        # is new to b and must arrive.
        await a.publish([Event("after", {})])
        first = await next_event(sub_b, lambda e: True)
        await a.publish([Event("later", {})])
        second = await next_event(sub_b, lambda e: True)
    finally:
        await b.stop()
    assert [first.type, second.type] == ["after", "later"]
    assert drain(sub_b) == []


async def test_a_malformed_event_document_does_not_stop_the_relay(store):
    a = instance(store, "a")
    b = instance(store, "b")
    sub_b = b.bus.subscribe()
    b.start()
    try:
        await a.publish([Event("ready", {})])
        await next_event(sub_b, of_type("ready"))  # the relay is past its start-up
        key = f"{time.time_ns():020d}-x-00000000"
        await store.events.insert_one(
            {"_id": key, "key": key, "origin": "x", "events": [{"no": "type"}]}
        )
        await a.publish([Event("good", {})])
        await next_event(sub_b, of_type("good"))
    finally:
        await b.stop()


async def test_prune_removes_events_older_than_retention_and_keeps_recent_ones(store):
    events = instance(store, "a", retention_seconds=60)
    old_key = f"{time.time_ns() - 120 * 1_000_000_000:020d}-old-00000000"
    await store.events.insert_one({"_id": old_key, "key": old_key, "origin": "old", "events": []})
    # One stored before events carried their key in a field of its own.
    await store.events.insert_one({"_id": old_key + "x", "origin": "older", "events": []})
    await events.publish([Event("recent", {})])

    await events.prune()
    remaining = await store.events.find().to_list()
    assert sorted(d["origin"] for d in remaining) == ["a", "older"]

    await events.prune(unkeyed=True)
    remaining = await store.events.find().to_list()
    assert [d["origin"] for d in remaining] == ["a"]


async def test_stop_ends_the_relay_and_start_stop_can_repeat(store):
    events = instance(store, "a")
    events.start()
    await events.stop()
    assert events._task is None
    await events.stop()  # a second stop is harmless
    events.start()
    await events.stop()


async def test_two_hub_apps_on_one_database_share_events(make_settings):
    """An inbound message stored through hub A is announced on hub B's bus."""
    app_a = build_app(make_settings())
    app_b = build_app(make_settings())
    async with TestClient(TestServer(app_a)) as a, TestClient(TestServer(app_b)) as b:
        hub_a, hub_b = hub_of(a), hub_of(b)
        assert hub_a.instance_id != hub_b.instance_id
        assert hub_a.settings.store.database == hub_b.settings.store.database
        sub_b = hub_b.bus.subscribe()

        resp = await post_inbound(a, MessageSid="SMshared", From="+15551230001", Body="hi")
        assert resp.status == 200
        message_id = (await resp.json())["id"]

        created = await next_event(sub_b, of_type("message.created", id=message_id))
        assert created.data["text"] == "hi"
        updated = await next_event(sub_b, of_type("conversation.updated"))
        assert updated.data["id"] == created.data["conversation_id"]

        # And B's own store view agrees: one database, one message.
        stored = await eventually(lambda: hub_b.store.messages.find_one({"_id": message_id}))
        assert stored["text"] == "hi"


async def test_a_merge_on_one_hub_updates_what_every_hub_ingests_under(make_settings):
    """After a merge, new messages of the merged contact's conversations carry the
    kept contact on both hubs, though each had remembered the old one."""
    from hub.model import IdentityRef, InboundText
    from hub.services.ingest import conversation_id_for

    def text(provider_id: str, number: str) -> InboundText:
        sender = IdentityRef(kind="phone", value=number)
        return InboundText(
            inbox="t1", medium="sms", provider_id=provider_id, sender=sender, text=provider_id
        )

    def change_of(provider_id: str) -> Callable[[Event], bool]:
        """The `conversation.updated` of that message's ingest (not an earlier one
        relayed late from the other hub)."""
        return lambda event: (
            event.type == "conversation.updated"
            and (event.data.get("last_message") or {}).get("text") == provider_id
        )

    app_a = build_app(make_settings())
    app_b = build_app(make_settings())
    async with TestClient(TestServer(app_a)) as a, TestClient(TestServer(app_b)) as b:
        hub_a, hub_b = hub_of(a), hub_of(b)
        sub_b = hub_b.bus.subscribe()
        (kept,) = await hub_a.ingest([text("m1", "+15551230001")])
        (other,) = await hub_b.ingest([text("m2", "+15551230002")])
        (seen_on_a,) = await hub_a.ingest([text("m3", "+15551230002")])
        assert seen_on_a.contact_id == other.contact_id != kept.contact_id

        await hub_a.merge_contacts(kept.contact_id, other.contact_id)
        merged = await next_event(sub_b, of_type("contact.merged"))
        assert merged.data == {"id": kept.contact_id, "merged_id": other.contact_id}

        for hub, provider_id in ((hub_a, "m4"), (hub_b, "m5")):
            sub = hub.bus.subscribe()
            (result,) = await hub.ingest([text(provider_id, "+15551230002")])
            assert result.contact_id == kept.contact_id
            assert result.conversation_id == conversation_id_for("t1", "sms", "phone:+15551230002")
            event = await next_event(sub, change_of(provider_id))
            assert event.data["contact"] == {"id": kept.contact_id}
            sub.close()


def test_a_failing_listener_does_not_stop_delivery():
    bus = EventBus()
    calls: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.listen("x", broken)
    bus.listen("x", lambda event: calls.append(event.data["n"]))
    sub = bus.subscribe()
    bus.deliver([Event("x", {"n": "1"}), Event("y", {"n": "2"})])
    assert calls == ["1"]
    assert [e.type for e in drain(sub)] == ["x", "y"]
