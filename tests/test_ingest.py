"""hub.services.ingest: the one path every inbound message takes (issue 2, point 6).

Through the test channel's signed webhook where the HTTP edge matters, and through
`Hub.ingest` with model objects where only the hub's own types matter.
"""

from __future__ import annotations

import asyncio
import json
import typing
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient

from hub.app import build_app
from hub.model import (
    KIND_OF_INBOUND,
    Attachment,
    ButtonReply,
    CallInfo,
    EmailInfo,
    IdentityRef,
    InboundButton,
    InboundCall,
    InboundEmail,
    InboundEvent,
    InboundLocation,
    InboundMedia,
    InboundSharedContact,
    InboundText,
    InboundVoicemail,
    Location,
    SharedContact,
    utcnow,
)
from hub.services.ingest import PIPELINE_MIN, message_id_for
from hub.services.messages import inbound_message_doc
from hub.shapes import conversation_view, message_view
from tests.conftest import SECRET, hub_of, post_inbound, signed_form
from tests.support.testchannel import sign
from tests.support.waiting import drain, eventually

NUMBER = "+15551230001"


def phone(number: str = NUMBER) -> IdentityRef:
    return IdentityRef(kind="phone", value=number)


async def counts(store: Any) -> dict[str, int]:
    return {
        name: await getattr(store, name).count_documents({})
        for name in ("contacts", "identities", "conversations", "messages", "events")
    }


# -- a new sender -------------------------------------------------------------------


async def test_first_message_from_new_number_creates_contact_conversation_and_message(
    hub_client,
):
    resp = await post_inbound(
        hub_client, MessageSid="SMnew1", From="+1 (555) 123-0001", Body="hello", ProfileName="Ada"
    )
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["duplicate"] is False
    store = hub_of(hub_client).store

    (contact,) = await store.contacts.find().to_list()
    assert contact["phones"] == [NUMBER]
    assert contact["name"] == "Ada"
    identity = await store.identities.find_one({"_id": f"phone:{NUMBER}"})
    assert identity is not None and identity["contact_id"] == contact["_id"]

    (conversation,) = await store.conversations.find().to_list()
    (message,) = await store.messages.find().to_list()
    assert message["_id"] == answer["id"]
    assert message["conversation_id"] == conversation["_id"]
    assert message["kind"] == "text"
    assert message["text"] == "hello"
    assert message["direction"] == "in"
    assert message["status"] == "received"
    assert message["provider_id"] == "SMnew1"
    assert message["channel"] == "sms"
    assert message["sender"]["type"] == "contact"

    assert conversation["contact_id"] == contact["_id"]
    assert conversation["inbox"] == "t1"
    assert conversation["channel"] == "sms"
    assert conversation["status"] == "open"
    assert conversation["unread"] == 1
    assert conversation["last_message"]["id"] == message["_id"]
    assert conversation["last_message"]["text"] == "hello"
    assert conversation["last_message"]["direction"] == "in"
    assert conversation["last_inbound_at"] == message["created_at"]
    assert conversation["last_activity_at"] == message["created_at"]


async def test_second_message_from_known_number_reuses_contact_and_conversation(hub_client):
    first = await (await post_inbound(hub_client, MessageSid="SMk1", From=NUMBER, Body="a")).json()
    second = await (await post_inbound(hub_client, MessageSid="SMk2", From=NUMBER, Body="b")).json()
    store = hub_of(hub_client).store
    assert first["id"] != second["id"]
    assert await store.contacts.count_documents({}) == 1
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["unread"] == 2
    assert conversation["last_message"]["text"] == "b"


# -- provider retries -----------------------------------------------------------------


async def test_provider_retry_is_acknowledged_stored_once_and_not_republished(hub_client):
    hub = hub_of(hub_client)
    first = await post_inbound(hub_client, MessageSid="SMretry", From=NUMBER, Body="once")
    assert first.status == 200
    first_answer = await first.json()
    before = await counts(hub.store)
    sub = hub.bus.subscribe()

    retry = await post_inbound(hub_client, MessageSid="SMretry", From=NUMBER, Body="once")

    assert retry.status == 200
    answer = await retry.json()
    assert answer["duplicate"] is True
    assert answer["id"] == first_answer["id"]
    assert await counts(hub.store) == before  # no message, no event document
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == 1
    # Events are delivered locally before the webhook is answered, so none came.
    assert drain(sub) == []
    metrics = hub.metrics.render().decode()
    assert 'hub_messages_duplicate_total{channel="sms"} 1.0' in metrics


async def test_retry_after_a_failure_between_message_and_summary_repairs_the_summary(
    hub_client,
):
    # The store went away after the message was written and before its
    # conversation was updated: the provider got a 5xx and retries.
    hub = hub_of(hub_client)
    assert (await post_inbound(hub_client, MessageSid="SMa", From=NUMBER, Body="a")).status == 200
    (conversation,) = await hub.store.conversations.find().to_list()
    lost = InboundText(
        inbox="t1", medium="sms", provider_id="SMb", sender=phone(), text="lost summary"
    )
    await hub.store.messages.insert_one(
        inbound_message_doc(lost, message_id_for("t1", "SMb"), conversation["_id"])
    )

    retry = await post_inbound(hub_client, MessageSid="SMb", From=NUMBER, Body="lost summary")

    assert (await retry.json())["duplicate"] is True
    repaired = await hub.store.conversations.find_one({"_id": conversation["_id"]})
    assert repaired["last_message"]["text"] == "lost summary"
    assert repaired["last_message"]["id"] == message_id_for("t1", "SMb")
    assert repaired["unread"] == 2
    # A second retry finds the summary already there and changes nothing.
    await post_inbound(hub_client, MessageSid="SMb", From=NUMBER, Body="lost summary")
    again = await hub.store.conversations.find_one({"_id": conversation["_id"]})
    assert again == repaired


async def test_retry_of_a_first_message_whose_summary_was_lost_repairs_the_new_conversation(
    hub_client,
):
    """The store hung during a new customer's first message: the conversation was
    opened (after the message arrived) and the message stored, the summary not,
    and the webhook got a 503. The provider's retry must bring the summary up."""
    hub = hub_of(hub_client)
    first = InboundText(
        inbox="t1",
        medium="sms",
        provider_id="SMfirst",
        sender=phone(),
        text="first words",
        received_at=utcnow() - timedelta(seconds=2),
    )
    conv_id, _ = await hub.ingestor.open_conversation("t1", "sms", phone())
    await hub.store.messages.insert_one(
        inbound_message_doc(first, message_id_for("t1", "SMfirst"), conv_id)
    )

    retry = await post_inbound(hub_client, MessageSid="SMfirst", From=NUMBER, Body="first words")

    assert (await retry.json())["duplicate"] is True
    repaired = await hub.store.conversations.find_one({"_id": conv_id})
    assert repaired["last_message"]["id"] == message_id_for("t1", "SMfirst")
    assert repaired["unread"] == 1
    assert repaired["last_inbound_at"] is not None
    await post_inbound(hub_client, MessageSid="SMfirst", From=NUMBER, Body="first words")
    assert await hub.store.conversations.find_one({"_id": conv_id}) == repaired


async def test_retry_whose_summary_was_lost_after_a_later_reply_counts_it_unread_only(
    hub_client,
):
    """A lost inbound summary is repaired even when an agent's reply came after
    it; the reply stays the conversation's last message."""
    hub = hub_of(hub_client)
    assert (await post_inbound(hub_client, MessageSid="SMr1", From=NUMBER, Body="a")).status == 200
    (conversation,) = await hub.store.conversations.find().to_list()
    lost = InboundText(
        inbox="t1",
        medium="sms",
        provider_id="SMr2",
        sender=phone(),
        text="lost",
        received_at=utcnow(),
    )
    await hub.store.messages.insert_one(
        inbound_message_doc(lost, message_id_for("t1", "SMr2"), conversation["_id"])
    )
    reply = await hub.reply(conversation["_id"], text="on it", sender={"type": "agent", "id": None})

    await post_inbound(hub_client, MessageSid="SMr2", From=NUMBER, Body="lost")

    repaired = await hub.store.conversations.find_one({"_id": conversation["_id"]})
    assert repaired["last_message"]["id"] == reply["_id"]
    assert repaired["unread"] == 2
    assert repaired["last_inbound_at"] > conversation["last_inbound_at"]


async def test_duplicates_inside_one_batch_are_stored_once(hub_client):
    hub = hub_of(hub_client)
    original = InboundText(inbox="t1", medium="sms", provider_id="B1", sender=phone(), text="x")
    copy = InboundText(inbox="t1", medium="sms", provider_id="B1", sender=phone(), text="x")
    other = InboundText(inbox="t1", medium="sms", provider_id="B2", sender=phone(), text="y")

    results = await hub.ingest([original, copy, other])

    assert [r.duplicate for r in results] == [False, True, False]
    assert results[0].message_id == results[1].message_id
    assert await hub.store.messages.count_documents({}) == 2
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == 2


async def test_concurrent_retries_of_one_message_store_it_once(hub_client):
    hub = hub_of(hub_client)
    responses = await asyncio.gather(
        *(post_inbound(hub_client, MessageSid="SMsame", From=NUMBER, Body="x") for _ in range(20))
    )
    answers = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 20
    assert sorted(a["duplicate"] for a in answers) == [False] + [True] * 19
    assert len({a["id"] for a in answers}) == 1
    assert await hub.store.messages.count_documents({}) == 1
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == 1


def text(provider_id: str, body: str = "x") -> InboundText:
    return InboundText(inbox="t1", medium="sms", provider_id=provider_id, sender=phone(), text=body)


def hold_second_stage(hub: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the ingest writer's second stage (conversations, events, answers) of
    the next batch until released; (entered, release)."""
    entered, release = asyncio.Event(), asyncio.Event()
    publish = hub.events.publish

    async def held_publish(events: list[Any], **options: Any) -> None:
        if not release.is_set():
            entered.set()
            await release.wait()
        await publish(events, **options)

    hub.events.publish = held_publish
    return entered, release


async def test_the_next_batch_is_stored_while_the_last_is_finished_and_answered_after_it(
    hub_client,
):
    hub = hub_of(hub_client)
    sub = hub.bus.subscribe()
    entered, release = hold_second_stage(hub)
    first = asyncio.create_task(hub.ingest([text("P1", "a")]))
    await asyncio.wait_for(entered.wait(), 10)
    texts = [f"b{n:02d}" for n in range(PIPELINE_MIN)]
    second = asyncio.create_task(hub.ingest([text(t, t) for t in texts]))
    # The second batch's messages are stored while the first batch is held...
    await eventually(
        lambda: hub.store.messages.count_documents({}), lambda n: n == 1 + PIPELINE_MIN
    )
    await asyncio.sleep(0.05)
    # ...but neither is answered before the first batch's conversation is updated.
    assert not first.done() and not second.done()
    release.set()
    (one,), results = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [r.duplicate for r in [one, *results]] == [False] * (1 + PIPELINE_MIN)
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == 1 + PIPELINE_MIN
    created = [e.data["text"] for e in drain(sub) if e.type == "message.created"]
    assert created == ["a", *texts]


async def test_the_next_batch_is_stored_while_the_last_creates_its_new_senders(hub_client):
    """A batch's new contacts are created in a stage of their own: the next batch's
    messages are stored meanwhile, and its own new senders wait for that stage."""
    hub = hub_of(hub_client)
    sub = hub.bus.subscribe()
    entered, release = asyncio.Event(), asyncio.Event()
    prepare = hub.ingestor._prepare

    async def held(missing: Any, read: Any) -> Any:
        if not release.is_set():
            entered.set()
            await release.wait()
        return await prepare(missing, read)

    hub.ingestor._prepare = held
    first = asyncio.create_task(hub.ingest([from_number("C1", "+15554441000", "a")]))
    await asyncio.wait_for(entered.wait(), 10)
    texts = [f"b{n:02d}" for n in range(PIPELINE_MIN)]
    second = asyncio.create_task(
        hub.ingest([from_number(f"C2-{n}", f"+1555444{2000 + n}", t) for n, t in enumerate(texts)])
    )
    await eventually(
        lambda: hub.store.messages.count_documents({}), lambda n: n == 1 + PIPELINE_MIN
    )
    await asyncio.sleep(0.05)
    assert await hub.store.contacts.count_documents({}) == 0
    assert not first.done() and not second.done()
    release.set()
    (one,), results = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert len({one.contact_id, *(r.contact_id for r in results)}) == 1 + PIPELINE_MIN
    assert await hub.store.contacts.count_documents({}) == 1 + PIPELINE_MIN
    created = [e.data["text"] for e in drain(sub) if e.type == "message.created"]
    assert created == ["a", *texts]


async def test_a_small_batch_waits_for_the_last_one_and_is_stored_after_it(hub_client):
    hub = hub_of(hub_client)
    entered, release = hold_second_stage(hub)
    first = asyncio.create_task(hub.ingest([text("W1", "a")]))
    await asyncio.wait_for(entered.wait(), 10)
    second = asyncio.create_task(hub.ingest([text("W2", "b")]))
    await asyncio.sleep(0.2)
    assert await hub.store.messages.count_documents({}) == 1  # waits, and grows meanwhile
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert await hub.store.messages.count_documents({}) == 2


async def test_a_retry_stored_while_its_original_is_finished_is_counted_once(hub_client):
    hub = hub_of(hub_client)
    entered, release = hold_second_stage(hub)
    original = asyncio.create_task(hub.ingest([text("R1", "a")]))
    await asyncio.wait_for(entered.wait(), 10)
    inserts = hub.store.commands.on[("insert", "messages")]
    # The retry comes in a batch big enough to be stored at once.
    others = [text(f"X{n}") for n in range(PIPELINE_MIN - 1)]
    retry = asyncio.create_task(hub.ingest([text("R1", "a"), *others]))
    await eventually(
        lambda: asyncio.sleep(0, hub.store.commands.on[("insert", "messages")]),
        lambda n: n == inserts + 1,
    )
    release.set()
    (first,), (again, *_) = await asyncio.wait_for(asyncio.gather(original, retry), 10)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert await hub.store.messages.count_documents({}) == PIPELINE_MIN
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == PIPELINE_MIN  # the original and the others, once each


async def test_fifty_concurrent_first_messages_from_one_number_make_one_contact(hub_client):
    hub = hub_of(hub_client)
    responses = await asyncio.gather(
        *(
            post_inbound(hub_client, MessageSid=f"SMc{n:03d}", From=NUMBER, Body=f"m{n}")
            for n in range(50)
        )
    )
    assert [r.status for r in responses] == [200] * 50
    answers = [await r.json() for r in responses]
    assert not any(a["duplicate"] for a in answers)

    assert await hub.store.contacts.count_documents({}) == 1
    assert await hub.store.identities.count_documents({}) == 1
    assert await hub.store.conversations.count_documents({}) == 1
    assert await hub.store.messages.count_documents({}) == 50
    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["unread"] == 50
    assert {m["conversation_id"] async for m in hub.store.messages.find()} == {conversation["_id"]}


async def test_concurrent_first_messages_from_many_numbers_make_one_contact_each(hub_client):
    hub = hub_of(hub_client)
    numbers = [f"+1555987{n:04d}" for n in range(10)]
    responses = await asyncio.gather(
        *(
            post_inbound(hub_client, MessageSid=f"SMm{n}-{k}", From=number, Body="hi")
            for n, number in enumerate(numbers)
            for k in range(3)
        )
    )
    assert {r.status for r in responses} == {200}
    assert await hub.store.contacts.count_documents({}) == 10
    assert await hub.store.conversations.count_documents({}) == 10
    async for conversation in hub.store.conversations.find():
        assert conversation["unread"] == 3


async def test_first_messages_from_one_number_on_two_hubs_at_once_make_one_contact(
    make_settings,
):
    """Two hub processes on one store, each taking first messages from the same new
    numbers at the same moment: one contact and one conversation per number."""
    numbers = [f"+1555876{n:04d}" for n in range(8)]
    async with (
        TestClient(TestServer(build_app(make_settings()))) as a,
        TestClient(TestServer(build_app(make_settings()))) as b,
    ):
        responses = await asyncio.gather(
            *(
                post_inbound(client, MessageSid=f"SM2h-{n}-{k}-{side}", From=number, Body="hi")
                for n, number in enumerate(numbers)
                for k in range(3)
                for side, client in (("a", a), ("b", b))
            )
        )
        assert {r.status for r in responses} == {200}
        store = hub_of(a).store
        assert await store.contacts.count_documents({}) == len(numbers)
        assert await store.identities.count_documents({}) == len(numbers)
        assert await store.conversations.count_documents({}) == len(numbers)
        async for conversation in store.conversations.find():
            identity = await store.identities.find_one({"_id": conversation["identity"]})
            assert identity["contact_id"] == conversation["contact_id"]
            assert conversation["unread"] == 6


def from_number(provider_id: str, number: str, body: str = "hi") -> InboundText:
    return InboundText(
        inbox="t1", medium="sms", provider_id=provider_id, sender=phone(number), text=body
    )


async def test_a_batch_of_new_senders_costs_the_same_few_commands_and_no_conversation_update(
    hub_client,
):
    """Forty first messages in one batch: the conversations and identities are read
    by `_id` once each, contacts, identities, messages and conversations inserted
    in one command each (the conversations with their summaries), one event
    document; no conversation is updated after it is opened."""
    hub = hub_of(hub_client)
    await hub.ingest([from_number("warm", "+15550000001")])  # the first batch opens the rest
    before = dict(hub.store.commands.on)
    numbers = [f"+1555444{n:04d}" for n in range(40)]
    results = await hub.ingest(
        [from_number(f"N{n}", num, f"hello {n}") for n, num in enumerate(numbers)]
    )
    sent = {key: n - before.get(key, 0) for key, n in hub.store.commands.on.items()}
    ingest = {"contacts", "identities", "conversations", "messages"}  # and its event document
    sent = {k: n for k, n in sent.items() if n and (k[1] in ingest or k == ("insert", "events"))}
    assert sent == {
        ("find", "conversations"): 1,
        ("find", "identities"): 1,
        ("insert", "contacts"): 1,
        ("insert", "identities"): 1,
        ("insert", "messages"): 1,
        ("insert", "conversations"): 1,
        ("insert", "events"): 1,
    }
    assert len({r.contact_id for r in results}) == 40
    for n, result in enumerate(results):
        conversation = await hub.store.conversations.find_one({"_id": result.conversation_id})
        assert conversation["contact_id"] == result.contact_id
        assert conversation["last_message"]["text"] == f"hello {n}"
        assert (conversation["unread"], conversation["inbound"]) == (1, 1)
        assert conversation["last_inbound_at"] == conversation["last_message"]["at"]
        assert conversation["status"] == "open"


async def test_first_messages_from_one_number_in_two_batches_at_once_make_one_contact(
    hub_client,
):
    """The second batch is stored while the first, which prepared the new sender's
    conversation, is still finishing: it leaves the opening to the first and
    adds its own messages to the summary after it."""
    hub = hub_of(hub_client)
    number = "+15554440999"
    entered, release = hold_second_stage(hub)
    first = asyncio.create_task(hub.ingest([from_number("T1", number, "first")]))
    await asyncio.wait_for(entered.wait(), 10)
    second = asyncio.create_task(
        hub.ingest([from_number(f"T2-{n}", number, f"then {n}") for n in range(PIPELINE_MIN)])
    )
    await eventually(
        lambda: hub.store.messages.count_documents({}), lambda n: n == 1 + PIPELINE_MIN
    )
    assert await hub.store.conversations.count_documents({}) == 0  # opened by the first
    release.set()
    (one,), others = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert {one.contact_id} == {r.contact_id for r in others}
    assert await hub.store.contacts.count_documents({}) == 1
    assert await hub.store.identities.count_documents({}) == 1
    (conversation,) = await hub.store.conversations.find().to_list()
    assert (conversation["unread"], conversation["inbound"]) == (1 + PIPELINE_MIN, 1 + PIPELINE_MIN)
    assert conversation["last_message"]["text"] == f"then {PIPELINE_MIN - 1}"


async def test_a_new_senders_conversation_is_opened_by_the_next_batch_when_its_own_failed(
    hub_client,
):
    """The batch that prepared a new sender's conversation fails before opening it
    (the store went away: its webhooks are answered 503, the provider retries);
    the batch stored behind it opens it, and the retry counts the lost message in."""
    from pymongo.errors import AutoReconnect

    from hub.ports import StoreUnavailable

    hub = hub_of(hub_client)
    number = "+15554440888"
    entered, release = asyncio.Event(), asyncio.Event()
    publish = hub.events.publish
    failed = False

    async def failing_once(events: list[Any], **options: Any) -> None:
        nonlocal failed
        if not failed:
            failed = True
            entered.set()
            await release.wait()
            options["alongside"].close()  # its summary write never reaches the store
            raise AutoReconnect("the store went away")
        await publish(events, **options)

    hub.events.publish = failing_once
    first = asyncio.create_task(hub.ingest([from_number("F1", number, "lost")]))
    await asyncio.wait_for(entered.wait(), 10)
    second = asyncio.create_task(
        hub.ingest([from_number(f"F2-{n}", number, f"kept {n}") for n in range(PIPELINE_MIN)])
    )
    await eventually(
        lambda: hub.store.messages.count_documents({}), lambda n: n == 1 + PIPELINE_MIN
    )
    release.set()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(first, 10)
    kept = await asyncio.wait_for(second, 10)
    (conversation,) = await hub.store.conversations.find().to_list()
    assert (conversation["unread"], conversation["inbound"]) == (PIPELINE_MIN, PIPELINE_MIN)
    assert conversation["contact_id"] == kept[0].contact_id

    (retry,) = await hub.ingest([from_number("F1", number, "lost")])
    assert retry.duplicate
    (conversation,) = await hub.store.conversations.find().to_list()
    assert (conversation["unread"], conversation["inbound"]) == (1 + PIPELINE_MIN,) * 2
    assert await hub.store.contacts.count_documents({}) == 1


async def test_one_new_number_on_two_channels_in_one_batch_is_one_contact(make_settings):
    """SMS and WhatsApp from one new number, stored in one batch: two conversations
    (one per channel), one contact."""
    async with TestClient(TestServer(build_app(make_settings()))) as client:
        hub = hub_of(client)
        sender = phone("+15558760999")
        events = [
            InboundText(inbox="t1", medium="sms", provider_id="SM1b", sender=sender, text="a"),
            InboundText(inbox="t1", medium="whatsapp", provider_id="WA1b", sender=sender, text="b"),
        ]
        results = await hub.ingest(events)
        assert results[0].conversation_id != results[1].conversation_id
        assert results[0].contact_id == results[1].contact_id
        assert await hub.store.contacts.count_documents({}) == 1
        assert await hub.store.conversations.count_documents({}) == 2


async def test_one_poisoned_event_in_a_batch_costs_no_other_message(hub_client):
    """An event the store cannot hold (built past the model's checks, as a new
    adapter bug might) shares a batch with 30 good ones: it alone is refused, as
    UnstorableEvent (a 400 at the webhook); the 30 are stored and answered."""
    from hub.model import CallInfo, InboundCall
    from hub.ports import UnstorableEvent

    hub = hub_of(hub_client)
    good = [
        InboundText(
            inbox="t1",
            medium="sms",
            provider_id=f"SMok{n}",
            sender=phone(f"+1555333{n:04d}"),
            text=f"hi {n}",
        )
        for n in range(30)
    ]
    poison = InboundCall.model_construct(
        inbox="t1",
        medium="voice",
        provider_id="CApoison",
        sender=phone("+15553339999"),
        received_at=utcnow(),
        text="Call",
        conversation_id=None,
        extra={},
        type="call",
        call=CallInfo.model_construct(
            direction="in", status="completed", duration=10**20, recording_url=None, call_id=None
        ),
    )
    results = await asyncio.gather(
        *(hub.ingest([event]) for event in [*good[:15], poison, *good[15:]]),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], UnstorableEvent)
    stored = [r[0] for r in results if not isinstance(r, BaseException)]
    assert len(stored) == 30 and not any(r.duplicate for r in stored)
    assert await hub.store.messages.count_documents({}) == 30
    assert await hub.store.messages.find_one({"provider_id": "CApoison"}) is None


async def test_a_lone_surrogate_in_a_customers_text_is_stored_as_a_replacement_character(
    hub_client,
):
    # JSON can carry one (Telegram, WhatsApp: "\\ud800"); the model every adapter
    # builds replaces it, so the message is kept.
    hub = hub_of(hub_client)
    (result,) = await hub.ingest(
        [
            InboundText(
                inbox="t1", medium="sms", provider_id="SMsur", sender=phone(), text="a\ud800b"
            )
        ]
    )
    stored = await hub.store.messages.find_one({"_id": result.message_id})
    assert stored["text"] == "a\ufffdb"


# -- conversation state ---------------------------------------------------------------


async def test_new_message_reopens_a_resolved_conversation(hub_client):
    hub = hub_of(hub_client)
    await post_inbound(hub_client, MessageSid="SMo1", From=NUMBER, Body="problem")
    (conversation,) = await hub.store.conversations.find().to_list()
    await hub.store.conversations.update_one(
        {"_id": conversation["_id"]}, {"$set": {"status": "resolved", "unread": 0}}
    )

    resp = await post_inbound(hub_client, MessageSid="SMo2", From=NUMBER, Body="again")

    assert resp.status == 200
    reopened = await hub.store.conversations.find_one({"_id": conversation["_id"]})
    assert reopened["status"] == "open"
    assert reopened["unread"] == 1
    assert reopened["last_message"]["text"] == "again"
    assert await hub.store.conversations.count_documents({}) == 1


async def test_new_message_wakes_a_snoozed_conversation(hub_client):
    hub = hub_of(hub_client)
    await post_inbound(hub_client, MessageSid="SMz1", From=NUMBER, Body="later")
    (conversation,) = await hub.store.conversations.find().to_list()
    await hub.store.conversations.update_one(
        {"_id": conversation["_id"]},
        {"$set": {"status": "snoozed", "snooze_until": utcnow() + timedelta(days=1)}},
    )
    await post_inbound(hub_client, MessageSid="SMz2", From=NUMBER, Body="now please")
    woken = await hub.store.conversations.find_one({"_id": conversation["_id"]})
    assert woken["status"] == "open"
    assert woken["snooze_until"] is None


async def test_batch_summary_and_event_name_the_same_newest_message(hub_client):
    """Messages of one batch may carry provider times out of order: the stored
    summary and the published event must both name the newest one."""
    hub = hub_of(hub_client)
    sub = hub.bus.subscribe()
    now = utcnow()
    newest = InboundText(
        inbox="t1", medium="sms", provider_id="O1", sender=phone(), text="newest", received_at=now
    )
    older = InboundText(
        inbox="t1",
        medium="sms",
        provider_id="O2",
        sender=phone(),
        text="older",
        received_at=now - timedelta(minutes=1),
    )
    await hub.ingest([newest, older])

    (conversation,) = await hub.store.conversations.find().to_list()
    assert conversation["last_message"]["text"] == "newest"
    (updated,) = [e for e in drain(sub) if e.type == "conversation.updated"]
    assert updated.data["last_message"]["text"] == "newest"
    assert updated.data["unread_added"] == 2


async def test_a_batch_from_known_senders_reads_their_conversations_in_one_command(hub_client):
    hub = hub_of(hub_client)
    senders = [phone(f"+1555123{n:04d}") for n in range(20)]
    first = [
        InboundText(inbox="t1", medium="sms", provider_id=f"A{n}", sender=s, text="hi")
        for n, s in enumerate(senders)
    ]
    await hub.ingest(first)
    hub.ingestor.forget_conversations()  # as a freshly started process knows none
    before = hub.store.commands.on[("find", "conversations")]
    again = [
        InboundText(inbox="t1", medium="sms", provider_id=f"B{n}", sender=s, text="again")
        for n, s in enumerate(senders)
    ]
    await hub.ingest(again)
    assert hub.store.commands.on[("find", "conversations")] - before == 1
    assert await hub.store.conversations.count_documents({}) == 20
    assert await hub.store.messages.count_documents({}) == 40


async def test_identities_are_read_beside_the_conversations_only_while_new_senders_come(
    hub_client,
):
    """Known senders a process meets for the first time cost one read (their
    conversations); their identities are read beside it only after a batch
    found a conversation missing, and a new sender among known ones is still
    found or created once, its identity read when it is prepared."""
    hub = hub_of(hub_client)
    senders = [phone(f"+1555123{n:04d}") for n in range(20)]

    async def batch(tag: str, people: list[IdentityRef]) -> dict[tuple[str, str], int]:
        before = dict(hub.store.commands.on)
        await hub.ingest(
            [
                InboundText(inbox="t1", medium="sms", provider_id=f"{tag}{n}", sender=s, text=tag)
                for n, s in enumerate(people)
            ]
        )
        reads = (("find", "conversations"), ("find", "identities"), ("insert", "contacts"))
        return {key: hub.store.commands.on[key] - before.get(key, 0) for key in reads}

    await batch("A", senders)  # new senders: their identities are read beside
    hub.ingestor.forget_conversations()  # as a freshly started process knows none
    await batch("B", senders)  # after new ones, read beside again, all found
    hub.ingestor.forget_conversations()
    known = await batch("C", senders)
    assert known == {
        ("find", "conversations"): 1,
        ("find", "identities"): 0,
        ("insert", "contacts"): 0,
    }
    hub.ingestor.forget_conversations()
    newcomer = phone("+15559870001")
    mixed = await batch("D", [*senders[:5], newcomer])
    assert mixed == {
        ("find", "conversations"): 1,
        ("find", "identities"): 1,  # the newcomer's, when it is prepared
        ("insert", "contacts"): 1,
    }
    assert len(await hub.store.contacts.distinct("_id")) == 21
    assert await hub.store.messages.count_documents({"conversation_id": {"$exists": True}}) == 66


# -- what is stored for each kind of event ------------------------------------------------


async def test_media_message_stores_its_attachments(hub_client):
    hub = hub_of(hub_client)
    resp = await post_inbound(
        hub_client,
        MessageSid="SMmedia",
        From=NUMBER,
        Body="look",
        MediaUrl0="https://media.example/1.jpg",
        MediaContentType0="image/jpeg",
    )
    assert resp.status == 200
    message = await hub.store.messages.find_one({"provider_id": "SMmedia"})
    assert message["kind"] == "media"
    assert message["text"] == "look"
    # Stored pending with the provider's reference; the media fetcher downloads it
    # after the webhook was answered (tests/test_media.py).
    (item,) = message["attachments"]
    assert item == {
        "id": item["id"],
        "url": f"/api/media/{item['id']}",
        "content_type": "image/jpeg",
        "name": None,
        "size": None,
        "status": "pending",
        "error": None,
        "ref": "https://media.example/1.jpg",
    }


def one_of_each_inbound_type() -> list[Any]:
    email = IdentityRef(kind="email", value="ada@example.com")
    common: dict[str, Any] = {"inbox": "t1", "sender": phone()}
    return [
        InboundText(**common, medium="sms", provider_id="K-text", text="plain"),
        InboundMedia(
            **common,
            medium="whatsapp",
            provider_id="K-media",
            attachments=(Attachment(url="https://m.example/a.pdf", name="a.pdf", size=10),),
        ),
        InboundLocation(
            **common,
            medium="whatsapp",
            provider_id="K-location",
            location=Location(latitude=52.52, longitude=13.405, name="Berlin"),
        ),
        InboundSharedContact(
            **common,
            medium="whatsapp",
            provider_id="K-contact",
            contact=SharedContact(name="Bob", phones=("+15550001111",)),
        ),
        InboundButton(
            **common,
            medium="whatsapp",
            provider_id="K-button",
            text="Yes",
            button=ButtonReply(payload="confirm", title="Yes"),
        ),
        InboundCall(
            **common,
            medium="voice",
            provider_id="K-call",
            call=CallInfo(status="missed", call_id="CA1"),
        ),
        InboundVoicemail(
            **common,
            medium="voice",
            provider_id="K-voicemail",
            call=CallInfo(status="completed", duration=12, recording_url="https://r.example/1"),
        ),
        InboundEmail(
            inbox="t1",
            sender=email,
            medium="email",
            provider_id="K-email",
            text="body",
            email=EmailInfo(subject="Hello", message_id="<m1@example.com>"),
        ),
    ]


# The field each type keeps beside the text, and a value it must hold.
TYPE_PAYLOAD = {
    "media": ("attachments", lambda v: v[0]["name"] == "a.pdf"),
    "location": ("location", lambda v: v["latitude"] == 52.52 and v["name"] == "Berlin"),
    "contact": ("contact", lambda v: v["phones"] == ["+15550001111"]),
    "button": ("button", lambda v: v["payload"] == "confirm"),
    "call": ("call", lambda v: v["status"] == "missed" and v["call_id"] == "CA1"),
    "voicemail": ("call", lambda v: v["recording_url"] == "https://r.example/1"),
    "email": ("email", lambda v: v["subject"] == "Hello"),
}


async def test_every_inbound_type_is_stored_with_its_kind_and_payload(hub_client):
    hub = hub_of(hub_client)
    events = one_of_each_inbound_type()
    union = typing.get_args(typing.get_args(InboundEvent)[0])
    assert {type(e) for e in events} == set(union), "a type of the union is not tested"
    assert {e.type for e in events} == set(KIND_OF_INBOUND)

    results = await hub.ingest(events)

    assert not any(r.duplicate for r in results)
    for event, result in zip(events, results, strict=True):
        message = await hub.store.messages.find_one({"_id": result.message_id})
        assert message is not None, event.type
        assert message["kind"] == KIND_OF_INBOUND[event.type], event.type
        assert message["channel"] == event.medium
        assert message["direction"] == "in"
        if event.type in TYPE_PAYLOAD:
            name, check = TYPE_PAYLOAD[event.type]
            assert check(message[name]), (event.type, message[name])
    # The phone is one contact across SMS, WhatsApp and voice; the e-mail another.
    assert await hub.store.contacts.count_documents({}) == 2
    assert await hub.store.conversations.count_documents({}) == 4  # sms, whatsapp, voice, email


# -- events and the bot hook --------------------------------------------------------------


async def test_new_message_publishes_message_created_and_conversation_updated(hub_client):
    hub = hub_of(hub_client)
    sub = hub.bus.subscribe()
    resp = await post_inbound(hub_client, MessageSid="SMev", From=NUMBER, Body="ping")
    answer = await resp.json()
    (conversation,) = await hub.store.conversations.find().to_list()

    # Delivered before the webhook was answered: no waiting needed.
    events = drain(sub)
    assert [e.type for e in events] == ["message.created", "conversation.updated"]
    created, updated = events
    assert created.data["id"] == answer["id"]
    assert created.data["text"] == "ping"
    assert created.data["direction"] == "in"
    assert created.data["conversation_id"] == conversation["_id"]
    stored_message = await hub.store.messages.find_one({"_id": answer["id"]})
    assert created.data == message_view(stored_message)  # the event is what the store holds
    assert updated.data["id"] == conversation["_id"]
    assert updated.data["contact"]["id"] == conversation["contact_id"]
    assert updated.data["last_message"]["text"] == "ping"
    assert updated.data["unread_added"] == 1
    stored = await hub.store.events.find().to_list()
    assert [e["type"] for doc in stored for e in json.loads(doc["events"])] == [
        "message.created",
        "conversation.updated",
    ]


async def test_conversation_updated_event_never_contradicts_the_stored_conversation(hub_client):
    """An assigned, labelled conversation with unread messages gets a new one: the
    event must not announce it unassigned, unlabelled or with a wrong unread."""
    hub = hub_of(hub_client)
    await post_inbound(hub_client, MessageSid="SMa1", From=NUMBER, Body="first")
    (conversation,) = await hub.store.conversations.find().to_list()
    await hub.store.conversations.update_one(
        {"_id": conversation["_id"]},
        {"$set": {"assignee_id": "agent-7", "labels": ["vip"], "unread": 4}},
    )
    sub = hub.bus.subscribe()

    await post_inbound(hub_client, MessageSid="SMa2", From=NUMBER, Body="second")

    (updated,) = [e for e in drain(sub) if e.type == "conversation.updated"]
    stored = conversation_view(await hub.store.conversations.find_one({"_id": conversation["_id"]}))
    assert stored["assignee"] == "agent-7" and stored["unread"] == 5
    for key, value in updated.data.items():
        if key == "contact":
            assert value["id"] == stored["contact"]["id"]
        elif key != "unread_added":
            assert value == stored[key], key
    assert updated.data["unread_added"] == 1
    assert updated.data["last_message"]["text"] == "second"


class RecordingBot:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        self.calls.append((message["provider_id"], conversation["_id"]))


async def test_bot_hook_is_called_once_per_new_message_and_never_for_a_retry(make_settings):
    bot = RecordingBot()
    async with TestClient(TestServer(build_app(make_settings(), bot=bot))) as client:
        await post_inbound(client, MessageSid="SMb1", From=NUMBER, Body="1")
        await post_inbound(client, MessageSid="SMb1", From=NUMBER, Body="1")
        await post_inbound(client, MessageSid="SMb2", From=NUMBER, Body="2")
        # Bot calls run as tasks in the order they were made: once the last one
        # is seen, a call for the retry would have been seen too.
        await eventually(lambda: asyncio.sleep(0, bot.calls), lambda c: len(c) >= 2)
        (conversation,) = await hub_of(client).store.conversations.find().to_list()
    assert bot.calls == [("SMb1", conversation["_id"]), ("SMb2", conversation["_id"])]


# -- bad input ---------------------------------------------------------------------------


async def test_wrong_signature_is_403_and_writes_nothing(hub_client):
    body, headers = signed_form({"MessageSid": "SMbad", "From": NUMBER}, secret="not-the-secret")
    resp = await hub_client.post("/webhooks/testchan/t1", data=body, headers=headers)
    assert resp.status == 403
    assert set((await counts(hub_of(hub_client).store)).values()) == {0}


async def test_missing_signature_is_403_and_writes_nothing(hub_client):
    resp = await hub_client.post(
        "/webhooks/testchan/t1",
        data=b"MessageSid=SMx&From=%2B15551230001",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 403
    assert set((await counts(hub_of(hub_client).store)).values()) == {0}


async def test_missing_message_sid_is_400_and_writes_nothing(hub_client):
    resp = await post_inbound(hub_client, From=NUMBER, Body="no id")
    assert resp.status == 400
    assert "MessageSid" in await resp.text()
    assert set((await counts(hub_of(hub_client).store)).values()) == {0}


async def test_body_that_is_not_a_form_is_400_and_writes_nothing(hub_client):
    for body in (b'{"MessageSid": "SMjson"}', b"\xff\xfe\x00garbage"):
        resp = await hub_client.post(
            "/webhooks/testchan/t1",
            data=body,
            headers={"Content-Type": "application/json", "X-Signature": sign(SECRET, body)},
        )
        assert resp.status == 400, body
    assert set((await counts(hub_of(hub_client).store)).values()) == {0}


async def test_unparseable_sender_is_400_and_writes_nothing(hub_client):
    resp = await post_inbound(hub_client, MessageSid="SMnum", From="not a number", Body="x")
    assert resp.status == 400
    assert set((await counts(hub_of(hub_client).store)).values()) == {0}


# -- the store goes down -------------------------------------------------------------------


async def test_store_down_answers_503_and_never_acknowledges_an_unstored_message(
    make_settings, private_store
):
    settings = make_settings(store={"uri": private_store.uri, "server_selection_timeout_ms": 500})
    async with TestClient(TestServer(build_app(settings))) as client:
        ok = await post_inbound(client, MessageSid="SMup", From=NUMBER, Body="kept")
        assert ok.status == 200

        await private_store.stop()

        # Same sender (its conversation is known to this process) and a new one.
        for sid, number in (("SMdown1", NUMBER), ("SMdown2", "+15551239999")):
            resp = await post_inbound(client, MessageSid=sid, From=number, Body="lost?")
            assert resp.status == 503, await resp.text()
            error = (await resp.json())["error"]
            assert error["code"] == "store_unavailable"
            assert isinstance(error["message"], str) and error["message"]

    uri = await private_store.restart()
    reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        stored = await reader[settings.store.database].messages.find().to_list()
    finally:
        await reader.close()
    assert [m["provider_id"] for m in stored] == ["SMup"]


async def test_store_gone_between_message_and_summary_fails_the_batch_and_delivers_nothing(
    make_settings, private_store
):
    from channels.base import StoreUnavailable

    settings = make_settings(store={"uri": private_store.uri, "server_selection_timeout_ms": 500})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        sub = hub.bus.subscribe()
        entered, release = hold_second_stage(hub)
        pending = asyncio.create_task(hub.ingest([text("G1", "stored, summary lost")]))
        await asyncio.wait_for(entered.wait(), 10)
        await private_store.stop()  # the message is in; the summary and events are not
        release.set()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(pending, 30)
        delivered = [e.type for e in drain(sub)]
        assert "message.created" not in delivered and "conversation.updated" not in delivered
    uri = await private_store.restart()
    reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        db = reader[settings.store.database]
        assert [m["provider_id"] for m in await db.messages.find().to_list()] == ["G1"]
        # A new sender's conversation is opened with its summary, which was lost.
        assert await db.conversations.count_documents({}) == 0
        (contact,) = await db.contacts.find().to_list()
        # The provider's retry, to a hub started afresh, opens it and summarises it.
        await retry_on_a_fresh_hub_opens_it(make_settings, uri, db, "G1", "stored, summary lost")
        assert (await db.contacts.find_one())["_id"] == contact["_id"]
    finally:
        await reader.close()


async def retry_on_a_fresh_hub_opens_it(
    make_settings: Any, uri: str, db: Any, provider_id: str, body: str
) -> None:
    """The provider's retry of a new sender's first message, stored and not
    summarised, to a hub started afresh on the store at `uri`: answered as a
    duplicate, and the sender then has one contact and a conversation that
    shows the message and counts it once."""
    settings = make_settings(store={"uri": uri, "server_selection_timeout_ms": 500})
    async with TestClient(TestServer(build_app(settings))) as client:
        retry = await post_inbound(client, MessageSid=provider_id, From=NUMBER, Body=body)
        assert (await retry.json())["duplicate"] is True
    (contact,) = await db.contacts.find().to_list()
    (conversation,) = await db.conversations.find().to_list()
    assert conversation["contact_id"] == contact["_id"]
    assert conversation["last_message"]["id"] == message_id_for("t1", provider_id)
    assert (conversation["unread"], conversation["inbound"]) == (1, 1)


async def test_a_first_message_stored_while_its_sender_was_being_found_is_summarised_by_the_retry(
    make_settings, private_store
):
    """A batch stores its messages while it finds (or creates) its senders: the
    store went away after a new customer's message was in and before the sender
    was found. The webhook gets a 503; the provider's retry makes one contact
    and opens the conversation with the message counted."""
    from channels.base import StoreUnavailable

    settings = make_settings(store={"uri": private_store.uri, "server_selection_timeout_ms": 500})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        entered, release = asyncio.Event(), asyncio.Event()
        look_up = hub.ingestor._look_up

        async def held(wanted: Any, *, senders: bool) -> Any:
            entered.set()
            await release.wait()
            return await look_up(wanted, senders=senders)

        hub.ingestor._look_up = held
        pending = asyncio.create_task(hub.ingest([text("F1", "first words")]))
        await asyncio.wait_for(entered.wait(), 10)
        try:
            await eventually(lambda: hub.store.messages.count_documents({}))
            await private_store.stop()  # the message is in; its sender is not found
        finally:
            release.set()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(pending, 30)
    uri = await private_store.restart()
    reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        db = reader[settings.store.database]
        assert [m["provider_id"] for m in await db.messages.find().to_list()] == ["F1"]
        assert await db.conversations.count_documents({}) == 0
        assert await db.identities.count_documents({}) == 0
        await retry_on_a_fresh_hub_opens_it(make_settings, uri, db, "F1", "first words")
    finally:
        await reader.close()


async def test_a_small_batch_lingers_for_more_and_a_full_one_goes_at_once(hub_client, monkeypatch):
    import hub.services.ingest as ingest_module

    hub = hub_of(hub_client)
    monkeypatch.setattr(ingest_module, "LINGER_SECONDS", 1.0)  # long enough to see on any machine
    # The first message since start follows a silence and goes at once; the
    # ones right behind it arrive often enough to wait for company.
    await asyncio.wait_for(hub.ingest([text("L0")]), 10)
    inserts = hub.store.commands.on[("insert", "messages")]
    first = asyncio.create_task(hub.ingest([text("L1")]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(hub.ingest([text("L2")]))
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert hub.store.commands.on[("insert", "messages")] == inserts + 1  # one batch, both

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(hub.ingest([text(f"F{n}") for n in range(ingest_module.LINGER_MIN)]), 10)
    assert loop.time() - started < 1.0  # a full batch does not wait

    # A lingering batch goes as soon as it is full.
    inserts = hub.store.commands.on[("insert", "messages")]
    started = loop.time()
    lone = asyncio.create_task(hub.ingest([text("W0")]))
    await asyncio.sleep(0.05)
    rest = [text(f"W{n}") for n in range(1, ingest_module.LINGER_MIN)]
    await asyncio.wait_for(asyncio.gather(lone, hub.ingest(rest)), 10)
    assert loop.time() - started < 1.0
    assert hub.store.commands.on[("insert", "messages")] == inserts + 1


async def test_nothing_to_ingest_is_answered_with_nothing(hub_client):
    hub = hub_of(hub_client)
    inserts = hub.store.commands.on[("insert", "messages")]
    assert await asyncio.wait_for(hub.ingest([]), 10) == []
    assert hub.store.commands.on[("insert", "messages")] == inserts
    (result,) = await asyncio.wait_for(hub.ingest([text("E1")]), 10)  # still writing
    assert not result.duplicate


async def test_a_message_after_a_silence_longer_than_the_linger_is_not_held(
    hub_client, monkeypatch
):
    import hub.services.ingest as ingest_module

    hub = hub_of(hub_client)
    linger = 1.0  # long enough to tell apart on any machine
    monkeypatch.setattr(ingest_module, "LINGER_SECONDS", linger)
    loop = asyncio.get_running_loop()

    async def took(sid: str) -> float:
        started = loop.time()
        await asyncio.wait_for(hub.ingest([text(sid)]), 10)
        return loop.time() - started

    assert await took("Q1") < linger  # the first since start
    assert await took("Q2") >= linger * 0.95  # right behind it: waits for company
    await asyncio.sleep(linger * 1.2)
    assert await took("Q3") < linger  # after a silence longer than the linger


async def test_many_messages_in_one_call_do_not_count_as_frequent(hub_client, monkeypatch):
    import hub.services.ingest as ingest_module

    hub = hub_of(hub_client)
    monkeypatch.setattr(ingest_module, "LINGER_SECONDS", 1.0)
    monkeypatch.setattr(ingest_module, "GAP_CAP", 5.0)  # the mean can show rare calls
    loop = asyncio.get_running_loop()
    for call in range(3):  # a batch of 12 every 1.2 s: rare calls, each written at once
        started = loop.time()
        await asyncio.wait_for(hub.ingest([text(f"M{call}-{n}") for n in range(12)]), 10)
        assert loop.time() - started < 1.0
        await asyncio.sleep(1.2)


async def test_a_full_batch_smaller_than_the_linger_minimum_does_not_wait(
    make_settings, monkeypatch
):
    import hub.services.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "LINGER_SECONDS", 1.0)
    settings = make_settings(ingest={"max_batch": 4})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        await asyncio.wait_for(hub.ingest([text("S0")]), 10)  # the first: at once
        loop = asyncio.get_running_loop()
        started = loop.time()
        lone = asyncio.create_task(hub.ingest([text("S1")]))  # lingers for company
        await asyncio.sleep(0.05)
        await asyncio.wait_for(
            asyncio.gather(lone, hub.ingest([text("S2"), text("S3"), text("S4")])), 10
        )
        assert loop.time() - started < 1.0  # four make a full batch: it goes
