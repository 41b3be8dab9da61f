"""What the hub gives channel adapters beyond ingest: threading, opt-outs, the
call screen-pop, system texts, contact enrichment, per-recipient pacing and the
reply window (issue 3's adapters stand on these)."""

from __future__ import annotations

import itertools
import time

import pytest

from hub.model import EmailInfo, IdentityRef, InboundEmail, InboundText
from hub.services.dispatcher import outbound_message
from hub.services.outbox import OutboxError, provider_key
from hub.services.runtime import ChannelServices
from tests.conftest import hub_of
from tests.support.waiting import eventually, next_event, of_type

NUMBER = "+15551230001"
AGENT = {"type": "agent", "id": "a1"}


def phone(number: str = NUMBER, name: str | None = None) -> IdentityRef:
    return IdentityRef(kind="phone", value=number, name=name)


def sent_by(provider):
    async def probe() -> list:
        return list(provider.sent)

    return probe


def email_from(address: str, provider_id: str, **info: object) -> InboundEmail:
    return InboundEmail(
        inbox="t1",
        medium="email",
        provider_id=provider_id,
        sender=IdentityRef(kind="email", value=address),
        text="body",
        email=EmailInfo(message_id=provider_id, **info),  # type: ignore[arg-type]
    )


async def test_find_thread_knows_inbound_message_ids_and_outbound_sends(hub_client):
    hub = hub_of(hub_client)
    (first,) = await hub.ingest([email_from("ann@example.com", "m1@example.com", subject="Hi")])
    assert (
        await ChannelServices(hub).find_thread("t1", ["<m1@example.com>"]) == first.conversation_id
    )
    assert await ChannelServices(hub).find_thread("t1", ["other@x", "nope@x"]) is None
    assert await ChannelServices(hub).find_thread("t2", ["m1@example.com"]) is None

    # An outbound send is found by the Message-ID its adapter returned.
    await hub.store.messages.update_one(
        {"_id": first.message_id},
        {"$set": {"provider_key": provider_key("t1", "sent-1@hub.example")}},
    )
    assert (
        await ChannelServices(hub).find_thread("t1", ["<sent-1@hub.example>"])
        == first.conversation_id
    )


async def test_ingest_stores_a_message_in_the_hinted_conversation_of_its_inbox(hub_client):
    hub = hub_of(hub_client)
    (first,) = await hub.ingest([email_from("ann@example.com", "m1@example.com")])
    # A colleague answers in the same thread from another address.
    threaded = email_from("bob@example.com", "m2@example.com", in_reply_to="m1@example.com")
    threaded = threaded.model_copy(update={"conversation_id": first.conversation_id})
    (second,) = await hub.ingest([threaded])
    assert second.conversation_id == first.conversation_id
    assert await hub.store.conversations.count_documents({}) == 1

    # A hint that is no conversation of this inbox is not followed.
    stray = email_from("bob@example.com", "m3@example.com").model_copy(
        update={"conversation_id": "not-a-conversation"}
    )
    (third,) = await hub.ingest([stray])
    assert third.conversation_id not in (first.conversation_id, "not-a-conversation")


async def test_a_reply_to_an_email_carries_the_thread_headers_and_subject(hub_client):
    hub = hub_of(hub_client)
    (result,) = await hub.ingest(
        [email_from("ann@example.com", "m2@x", subject="Order 5", references=("m1@x",))]
    )
    doc = await hub.reply(result.conversation_id, text="On its way", sender=AGENT)
    item = await hub.store.outbox.find_one({"_id": doc["_id"]})
    conversation = await hub.store.conversations.find_one({"_id": result.conversation_id})
    outbound = outbound_message(item, doc, conversation)
    assert outbound.in_reply_to == "m2@x"
    assert outbound.references == ("m1@x", "m2@x")
    assert outbound.subject == "Order 5"
    assert outbound.last_inbound_at is not None


async def test_opt_out_marks_the_contact_and_announces_it(hub_client):
    hub = hub_of(hub_client)
    sub = hub.bus.subscribe()
    contact_id = await ChannelServices(hub).opt_out(phone(), "sms", True)
    contact = await hub.store.contacts.find_one({"_id": contact_id})
    assert contact["opted_out"] == {"sms": True}
    event = await next_event(sub, of_type("contact.updated"))
    assert event.data == {"id": contact_id, "opted_out": {"sms": True}}
    assert await ChannelServices(hub).opt_out(phone(), "sms", False) == contact_id
    assert (await hub.store.contacts.find_one({"_id": contact_id}))["opted_out"] == {"sms": False}


async def test_call_incoming_publishes_the_callers_card_at_once(hub_client):
    hub = hub_of(hub_client)
    await hub.ingest(
        [
            InboundText(
                inbox="t1", medium="sms", provider_id="s1", sender=phone(name="Ann"), text="hi"
            )
        ]
    )
    sub = hub.bus.subscribe()
    contact_id = await ChannelServices(hub).call_incoming("t1", phone(), "CA1")
    event = await next_event(sub, of_type("call.incoming"))
    assert event.data["call_id"] == "CA1"
    assert event.data["from"] == NUMBER
    assert event.data["contact"]["id"] == contact_id
    assert event.data["contact"]["name"] == "Ann"
    assert event.data["contact"]["phones"] == [NUMBER]
    # The voice conversation it names exists, so the screen can open it.
    assert await hub.store.conversations.find_one({"_id": event.data["conversation_id"]})


async def test_send_text_opens_the_conversation_and_the_dispatcher_sends_it(hub_client, provider):
    hub = hub_of(hub_client)
    message_id = await ChannelServices(hub).send_text(
        "t1", "sms", phone(), "Sorry we missed your call"
    )
    assert message_id is not None
    sent = await eventually(sent_by(provider), lambda s: len(s) == 1)
    assert sent[0]["text"] == "Sorry we missed your call"
    assert sent[0]["to"] == NUMBER
    message = await hub.store.messages.find_one({"_id": message_id})
    assert message["sender"] == {"type": "system", "id": None}
    with pytest.raises(ValueError, match="no inbox"):
        await ChannelServices(hub).send_text("nowhere", "sms", phone(), "x")


async def test_send_text_skips_a_contact_who_opted_out(hub_client, provider):
    hub = hub_of(hub_client)
    await ChannelServices(hub).opt_out(phone(), "sms", True)
    assert await ChannelServices(hub).send_text("t1", "sms", phone(), "promo") is None
    assert await hub.store.outbox.count_documents({}) == 0
    assert await hub.store.messages.count_documents({"direction": "out"}) == 0


async def test_update_contact_links_free_identities_names_once_and_sets_attributes(hub_client):
    hub = hub_of(hub_client)
    taken = await ChannelServices(hub).update_contact(
        IdentityRef(kind="email", value="taken@example.com")
    )
    mine = await ChannelServices(hub).update_contact(phone())
    contact_id = await ChannelServices(hub).update_contact(
        phone(),
        also=[
            IdentityRef(kind="email", value="lead@example.com"),
            IdentityRef(kind="email", value="taken@example.com"),
        ],
        name="Lead One",
        attributes={"plan": "pro", "$where": "1", "a.b": "c"},
    )
    assert contact_id == mine != taken  # the first identity known decides
    contact = await hub.store.contacts.find_one({"_id": contact_id})
    assert contact["name"] == "Lead One"
    assert contact["emails"] == ["lead@example.com"]
    assert contact["attributes"] == {"plan": "pro", "_where": "1", "a_b": "c"}
    owner = await hub.store.identities.find_one({"_id": "email:taken@example.com"})
    assert owner["contact_id"] == taken
    # A second submission does not rename the contact.
    await ChannelServices(hub).update_contact(phone(), name="Someone Else")
    assert (await hub.store.contacts.find_one({"_id": contact_id}))["name"] == "Lead One"


async def test_reply_is_refused_with_the_adapters_reason_and_nothing_is_queued(make_settings):
    from aiohttp.test_utils import TestClient, TestServer

    from hub.app import build_app

    settings = make_settings(inbox={"refuse_replies": "outside the window: use a template"})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        (result,) = await hub.ingest(
            [InboundText(inbox="t1", medium="sms", provider_id="s1", sender=phone(), text="x")]
        )
        with pytest.raises(OutboxError, match="use a template"):
            await hub.reply(result.conversation_id, text="late", sender=AGENT)
        assert await hub.store.outbox.count_documents({}) == 0


async def test_dispatcher_paces_each_recipient_while_others_go_on(make_settings, provider):
    from aiohttp.test_utils import TestClient, TestServer

    from hub.app import build_app

    settings = make_settings(inbox={"rate": 100.0, "per_recipient": 4.0})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        for n in range(4):
            await ChannelServices(hub).send_text("t1", "sms", phone("+15551230001"), f"a{n}")
            await ChannelServices(hub).send_text("t1", "sms", phone("+15551230002"), f"b{n}")
        await eventually(sent_by(provider), lambda s: len(s) == 8)
    for number in ("+15551230001", "+15551230002"):
        times = sorted(r["at"] for r in provider.sent if r["to"] == number)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.25 * 0.9, gaps  # 4 per second per recipient
    # The two recipients were served side by side, not one after the other.
    first_b = min(r["at"] for r in provider.sent if r["to"] == "+15551230002")
    last_a = max(r["at"] for r in provider.sent if r["to"] == "+15551230001")
    assert first_b < last_a


async def test_send_text_with_a_key_queues_once_however_often_it_is_asked(hub_client, provider):
    hub = hub_of(hub_client)
    first = await ChannelServices(hub).send_text(
        "t1", "sms", phone(), "We missed you", key="CA1:missed"
    )
    again = await ChannelServices(hub).send_text(
        "t1", "sms", phone(), "We missed you", key="CA1:missed"
    )
    assert first == again
    await eventually(sent_by(provider), lambda s: len(s) == 1)
    # Asked again after it was sent (a late webhook retry): still not sent twice.
    assert (
        await ChannelServices(hub).send_text(
            "t1", "sms", phone(), "We missed you", key="CA1:missed"
        )
        == first
    )
    other = await ChannelServices(hub).send_text(
        "t1", "sms", phone(), "We missed you", key="CA2:missed"
    )
    assert other != first
    await eventually(sent_by(provider), lambda s: len(s) == 2)
    await hub.dispatcher.run_once()
    assert [r["ref"] for r in provider.sent] == [first, other]
    # The provider has the second send a moment before the dispatcher records it.
    await eventually(lambda: hub.store.outbox.count_documents({}), lambda n: n == 0)


async def test_update_contact_finds_the_contact_by_any_identity_it_is_given(hub_client):
    hub = hub_of(hub_client)
    known = await ChannelServices(hub).update_contact(
        IdentityRef(kind="email", value="ann@example.com")
    )
    found = await ChannelServices(hub).update_contact(
        phone(), also=[IdentityRef(kind="email", value="ann@example.com")], name="Ann"
    )
    assert found == known
    contact = await hub.store.contacts.find_one({"_id": known})
    assert contact["phones"] == [NUMBER]
    assert contact["emails"] == ["ann@example.com"]
    assert await hub.store.contacts.count_documents({}) == 1


async def test_a_busy_recipient_waits_in_the_queue_not_in_the_batch(make_settings, provider):
    from aiohttp.test_utils import TestClient, TestServer

    from hub.app import build_app

    settings = make_settings(inbox={"rate": 100.0, "per_recipient": 2.0})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        busy, calm = phone("+15551230001"), phone("+15551230002")
        for n in range(6):
            await ChannelServices(hub).send_text("t1", "sms", busy, f"busy {n}")
        for n in range(3):
            await ChannelServices(hub).send_text("t1", "sms", calm, f"calm {n}")
        calm_queued = time.monotonic()  # the provider double's clock
        await eventually(sent_by(provider), lambda s: len(s) == 9, deadline=20)
    busy_times = sorted(r["at"] for r in provider.sent if r["to"] == busy.value)
    calm_times = sorted(r["at"] for r in provider.sent if r["to"] == calm.value)
    assert min(b - a for a, b in itertools.pairwise(busy_times)) >= 0.5 * 0.9
    # The calm recipient did not wait behind the busy one: its first text went as
    # soon as it was queued (the busy one's later texts still waiting their turn),
    # and its last before the busy one's last. Timed from when the calm texts were
    # all queued, so a slow machine's queueing time does not count against it.
    assert calm_times[0] - calm_queued < 0.5
    assert calm_times[-1] < busy_times[-1]
    # Deferred messages were not counted as attempts.
    assert {r["attempt"] for r in provider.requests} == {1}
