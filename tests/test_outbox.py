"""hub.services.outbox and the dispatcher against a fake provider (issue 2, point 7).

Replies are queued with `enqueue`, sent by the running dispatcher through the test
channel to `FakeProvider` (a real HTTP server), and moved by status callbacks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.model import StatusUpdate, utcnow
from hub.ratelimit import KeyedRateLimiter, RateLimiter, space_together
from hub.services.dispatcher import Dispatcher
from hub.services.outbox import (
    Draft,
    OutboxError,
    enqueue,
    enqueue_many,
    record_statuses,
)
from tests.conftest import hub_of, post_inbound, signed_form
from tests.support.waiting import eventually

NUMBER = "+15551230001"
AGENT = {"type": "agent", "id": "agent-1"}
SETTLED = {"sent", "delivered", "read", "failed", "unknown"}


async def open_conversation(client: TestClient, number: str = NUMBER) -> str:
    resp = await post_inbound(client, MessageSid=f"SMin{number}", From=number, Body="hello")
    assert resp.status == 200, await resp.text()
    message = await hub_of(client).store.messages.find_one({"_id": (await resp.json())["id"]})
    return str(message["conversation_id"])


async def reply(client: TestClient, text: str = "hi back", **options: Any) -> dict[str, Any]:
    hub = hub_of(client)
    conversation_id = await open_conversation(client)
    doc = await enqueue(
        hub.store, hub.events, conversation_id=conversation_id, text=text, sender=AGENT, **options
    )
    hub.dispatcher.wake()
    return doc


async def message_when(client: TestClient, message_id: str, statuses: set[str]) -> dict[str, Any]:
    store = hub_of(client).store
    return await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and m["status"] in statuses,
    )


async def outbox_drained(client: TestClient) -> bool:
    """Wait until the outbox holds no work (it is removed just after the message
    is finished, so a test that saw the final status may be a step early)."""
    store = hub_of(client).store
    return await eventually(lambda: store.outbox.count_documents({}), lambda n: n == 0) == 0


async def post_status(client: TestClient, provider_id: str, status: str, **extra: str) -> int:
    body, headers = signed_form({"MessageSid": provider_id, "MessageStatus": status, **extra})
    resp = await client.post("/webhooks/testchan/t1/status", data=body, headers=headers)
    return resp.status


# -- the normal path -----------------------------------------------------------------


async def test_reply_is_queued_then_sent_with_provider_id_to_the_right_recipient(
    hub_client, provider
):
    doc = await reply(hub_client, "your order shipped")
    assert doc["status"] == "queued"
    assert doc["direction"] == "out"

    sent = await message_when(hub_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent"
    assert sent["error"] is None
    (request,) = provider.sent
    assert request["to"] == NUMBER
    assert request["text"] == "your order shipped"
    assert request["ref"] == doc["_id"]
    assert sent["provider_id"] == request["id"]
    hub = hub_of(hub_client)
    assert await outbox_drained(hub_client)
    conversation = await hub.store.conversations.find_one({"_id": doc["conversation_id"]})
    assert conversation["last_message"]["direction"] == "out"
    assert 'hub_messages_out_total{channel="sms"} 1.0' in hub.metrics.render().decode()


async def test_many_replies_queued_at_once_are_each_sent_once(hub_client, provider):
    hub = hub_of(hub_client)
    conversation_id = await open_conversation(hub_client)
    docs = []
    for n in range(12):
        docs.append(
            await enqueue(
                hub.store, hub.events, conversation_id=conversation_id, text=f"r{n}", sender=AGENT
            )
        )
        hub.dispatcher.wake()
    for doc in docs:
        assert (await message_when(hub_client, doc["_id"], SETTLED))["status"] == "sent"
    assert sorted(r["ref"] for r in provider.sent) == sorted(d["_id"] for d in docs)


async def test_enqueue_many_queues_each_draft_once_and_all_are_sent(hub_client, provider):
    hub = hub_of(hub_client)
    conversations = [await open_conversation(hub_client, f"+1555123{n:04d}") for n in range(5)]
    drafts = [
        Draft(c, f"promo {n}", {"type": "campaign", "id": "c1"}, True, "c1", None, f"c1-{n}")
        for n, c in enumerate(conversations * 4)
    ]
    drafts.append(Draft("no-such-conversation", "lost", AGENT))
    queued = await enqueue_many(hub.store, hub.events, drafts)
    assert sorted(queued) == sorted(f"c1-{n}" for n in range(20))
    # Queueing the same campaign again (a restart mid-way) adds nothing.
    assert await enqueue_many(hub.store, hub.events, drafts) == []
    hub.dispatcher.wake()
    await eventually(
        lambda: hub.store.messages.count_documents({"campaign_id": "c1", "status": "sent"}),
        lambda n: n == 20,
    )
    assert sorted(r["ref"] for r in provider.sent) == sorted(queued)
    # And again once they are sent: still nothing is sent twice.
    assert await enqueue_many(hub.store, hub.events, drafts) == []
    assert await hub.store.outbox.count_documents({}) == 0
    await hub.dispatcher.run_once()
    assert len(provider.sent) == 20
    summary = await hub.store.conversations.find_one({"_id": conversations[0]})
    assert summary["last_message"]["direction"] == "out"


async def test_enqueue_refuses_an_unknown_conversation_or_an_empty_message(hub_client):
    hub = hub_of(hub_client)
    with pytest.raises(OutboxError):
        await enqueue(hub.store, hub.events, conversation_id="nope", text="x", sender=AGENT)
    conversation_id = await open_conversation(hub_client)
    with pytest.raises(OutboxError):
        await enqueue(hub.store, hub.events, conversation_id=conversation_id, text="", sender=AGENT)
    assert await hub.store.outbox.count_documents({}) == 0
    assert await hub.store.messages.count_documents({"direction": "out"}) == 0


# -- status callbacks --------------------------------------------------------------------


async def test_status_callbacks_move_a_sent_message_to_delivered_then_read(hub_client):
    doc = await reply(hub_client)
    sent = await message_when(hub_client, doc["_id"], SETTLED)
    assert sent["status"] == "sent"
    store = hub_of(hub_client).store

    assert await post_status(hub_client, sent["provider_id"], "delivered") == 200
    assert (await store.messages.find_one({"_id": doc["_id"]}))["status"] == "delivered"
    assert await post_status(hub_client, sent["provider_id"], "read") == 200
    assert (await store.messages.find_one({"_id": doc["_id"]}))["status"] == "read"


async def test_status_callbacks_never_move_a_message_backwards(hub_client):
    doc = await reply(hub_client)
    sent = await message_when(hub_client, doc["_id"], SETTLED)
    store = hub_of(hub_client).store

    assert await post_status(hub_client, sent["provider_id"], "read") == 200
    assert await post_status(hub_client, sent["provider_id"], "delivered") == 200
    assert await post_status(hub_client, sent["provider_id"], "sent") == 200

    assert (await store.messages.find_one({"_id": doc["_id"]}))["status"] == "read"


async def test_failed_status_callback_records_the_providers_reason(hub_client):
    doc = await reply(hub_client)
    sent = await message_when(hub_client, doc["_id"], SETTLED)
    status = await post_status(
        hub_client, sent["provider_id"], "failed", ErrorCode="30003", ErrorMessage="Unreachable"
    )
    assert status == 200
    failed = await hub_of(hub_client).store.messages.find_one({"_id": doc["_id"]})
    assert failed["status"] == "failed"
    assert "Unreachable" in failed["error"] and "30003" in failed["error"]


async def test_status_arriving_before_the_send_recorded_its_id_is_applied_afterwards(
    hub_client, provider
):
    hub = hub_of(hub_client)
    # FakeProvider numbers its messages SM000001, SM000002...: the next send gets this id.
    early = StatusUpdate(inbox="t1", provider_id="SM000001", status="delivered")
    assert await record_statuses(hub.store, hub.events, [early]) == 0
    assert await hub.store.early_statuses.count_documents({}) == 1

    doc = await reply(hub_client)

    delivered = await message_when(hub_client, doc["_id"], {"delivered", "read", "failed"})
    assert delivered["status"] == "delivered"
    assert delivered["provider_id"] == "SM000001"
    assert await hub.store.early_statuses.count_documents({}) == 0


async def test_early_statuses_keep_the_furthest_one(hub_client, provider):
    hub = hub_of(hub_client)
    await record_statuses(
        hub.store,
        hub.events,
        [
            StatusUpdate(inbox="t1", provider_id="SM000001", status="read"),
            StatusUpdate(inbox="t1", provider_id="SM000001", status="delivered"),
        ],
    )
    doc = await reply(hub_client)
    read = await message_when(hub_client, doc["_id"], {"read", "failed"})
    assert read["status"] == "read"


# -- provider errors -----------------------------------------------------------------------


async def test_transient_500_is_retried_and_then_sent_on_the_second_attempt(hub_client, provider):
    provider.fail_next(500, "server_error", "try again")
    doc = await reply(hub_client)

    sent = await message_when(hub_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent"
    assert sent["error"] is None
    assert [r["status"] for r in provider.requests] == [500, 200]
    assert [r["attempt"] for r in provider.requests] == [1, 2]
    assert len(provider.sent) == 1
    metrics = hub_of(hub_client).metrics.render().decode()
    assert 'hub_send_errors_total{channel="sms",kind="transient"} 1.0' in metrics


async def test_429_is_retried_after_the_providers_retry_after_without_failing(hub_client, provider):
    provider.fail_next(429, "rate", "slow down", retry_after="0.3")
    doc = await reply(hub_client)

    sent = await message_when(hub_client, doc["_id"], SETTLED)

    assert sent["status"] == "sent"
    assert sent["error"] is None
    first, second = provider.requests
    assert (first["status"], second["status"]) == (429, 200)
    assert second["attempt"] == 2
    # Not sooner than the provider asked (a lower bound, not a speed test).
    assert second["at"] - first["at"] >= 0.29


async def test_permanent_400_fails_at_once_with_the_providers_reason(hub_client, provider):
    provider.fail_next(400, "invalid_number", "The 'To' number is not valid")
    doc = await reply(hub_client)

    failed = await message_when(hub_client, doc["_id"], SETTLED)

    assert failed["status"] == "failed"
    assert "The 'To' number is not valid" in failed["error"]
    assert "invalid_number" in failed["error"]
    assert await outbox_drained(hub_client)
    assert len(provider.requests) == 1  # no retry
    hub = hub_of(hub_client)
    contact = await hub.store.contacts.find_one()
    assert contact["opted_out"] == {}


async def test_unsubscribed_error_marks_the_contact_opted_out_of_that_channel(hub_client, provider):
    provider.fail_next(400, "unsubscribed", "recipient unsubscribed")
    doc = await reply(hub_client)

    failed = await message_when(hub_client, doc["_id"], SETTLED)

    assert failed["status"] == "failed"
    assert "recipient unsubscribed" in failed["error"]
    contact = await hub_of(hub_client).store.contacts.find_one()
    assert contact["opted_out"] == {"sms": True}


async def test_gives_up_after_max_attempts_transient_failures(make_settings, provider):
    settings = make_settings(dispatcher={"max_attempts": 3})
    provider.fail_next(503, "unavailable", "maintenance", times=5)
    async with TestClient(TestServer(build_app(settings))) as client:
        doc = await reply(client)
        failed = await message_when(client, doc["_id"], SETTLED)
        assert await outbox_drained(client)

    assert failed["status"] == "failed"
    assert failed["error"].startswith("gave up after 3 attempts")
    assert "maintenance" in failed["error"]
    assert [r["attempt"] for r in provider.requests] == [1, 2, 3]
    assert provider.sent == []


# -- crashes and at-most-once ------------------------------------------------------------


async def interrupted_send(client: TestClient, **options: Any) -> tuple[dict[str, Any], Any]:
    """A reply left as a hub that died mid-send leaves it: `sending`, lease expired.

    The running dispatcher is stopped first (the dead hub); the returned successor
    is a dispatcher of a new hub process on the same store, not yet started.
    """
    hub = hub_of(client)
    await hub.dispatcher.stop()
    doc = await reply(client, **options)
    await hub.store.outbox.update_one(
        {"_id": doc["_id"]},
        {
            "$set": {
                "state": "sending",
                "lease_owner": "dead-hub",
                "lease_until": utcnow() - timedelta(seconds=5),
                "attempts": 1,
            }
        },
    )
    await hub.store.messages.update_one({"_id": doc["_id"]}, {"$set": {"status": "sending"}})
    successor = Dispatcher(
        hub.store, hub.events, hub.metrics, hub.adapters, hub.settings.dispatcher, "successor"
    )
    return doc, successor


async def test_crashed_reply_is_requeued_and_sent_at_least_once(hub_client, provider):
    doc, successor = await interrupted_send(hub_client)

    assert await successor.recover_expired() == 1
    assert await successor.run_once() is True

    sent = await hub_of(hub_client).store.messages.find_one({"_id": doc["_id"]})
    assert sent["status"] == "sent"
    assert [r["ref"] for r in provider.sent] == [doc["_id"]]
    assert provider.sent[0]["attempt"] == 2
    assert await hub_of(hub_client).store.outbox.count_documents({}) == 0


async def test_crashed_at_most_once_send_becomes_unknown_and_is_never_sent(hub_client, provider):
    doc, successor = await interrupted_send(hub_client, at_most_once=True, campaign_id="c1")

    assert await successor.recover_expired() == 1
    assert await successor.run_once() is False  # nothing left to send

    unknown = await hub_of(hub_client).store.messages.find_one({"_id": doc["_id"]})
    assert unknown["status"] == "unknown"
    assert unknown["error"]
    assert provider.requests == []
    assert await hub_of(hub_client).store.outbox.count_documents({}) == 0


async def test_live_lease_is_not_taken_back(hub_client, provider):
    hub = hub_of(hub_client)
    doc, successor = await interrupted_send(hub_client)
    await hub.store.outbox.update_one(
        {"_id": doc["_id"]}, {"$set": {"lease_until": utcnow() + timedelta(minutes=5)}}
    )
    assert await successor.recover_expired() == 0
    assert await successor.run_once() is False
    assert provider.requests == []


async def test_at_most_once_send_that_got_a_5xx_becomes_unknown_and_is_not_retried(
    hub_client, provider
):
    provider.fail_next(502, "bad_gateway", "upstream timeout")
    doc = await reply(hub_client, at_most_once=True, campaign_id="c1")

    settled = await message_when(hub_client, doc["_id"], SETTLED)

    assert settled["status"] == "unknown"
    assert "upstream timeout" in settled["error"]
    assert await outbox_drained(hub_client)
    assert len(provider.requests) == 1


async def test_at_most_once_send_that_got_a_429_is_retried_and_sent(hub_client, provider):
    provider.fail_next(429, "rate", "slow down", retry_after="0.1")
    doc = await reply(hub_client, at_most_once=True, campaign_id="c1")

    settled = await message_when(hub_client, doc["_id"], SETTLED)

    assert settled["status"] == "sent"
    assert [r["status"] for r in provider.requests] == [429, 200]


async def test_item_claimed_before_enqueue_wrote_its_message_is_sent_once_it_is(
    hub_client, provider
):
    """`enqueue` writes the outbox item, then the message: a dispatcher polling in
    between must wait for the message, not drop the reply."""
    hub = hub_of(hub_client)
    doc, successor = await interrupted_send(hub_client)
    message = await hub.store.messages.find_one_and_delete({"_id": doc["_id"]})
    await hub.store.outbox.update_one(
        {"_id": doc["_id"]},
        {"$set": {"state": "queued", "attempts": 0, "next_attempt_at": utcnow()}},
    )

    assert await successor.run_once() is True  # claimed, but no message yet
    assert await hub.store.outbox.count_documents({"_id": doc["_id"]}) == 1
    await hub.store.messages.insert_one(message)

    # Due again a moment later: claimed ahead of that and sent at it.
    await eventually(successor.run_once)
    sent = await message_when(hub_client, doc["_id"], SETTLED)
    assert sent["status"] == "sent"
    assert [(r["ref"], r["attempt"]) for r in provider.sent] == [(doc["_id"], 1)]


async def test_outbox_item_whose_enqueue_failed_long_ago_is_dropped(hub_client, provider):
    hub = hub_of(hub_client)
    doc, successor = await interrupted_send(hub_client)
    await hub.store.messages.delete_one({"_id": doc["_id"]})
    await hub.store.outbox.update_one(
        {"_id": doc["_id"]},
        {"$set": {"state": "queued", "created_at": utcnow() - timedelta(hours=1)}},
    )
    assert await successor.run_once() is True
    assert await hub.store.outbox.count_documents({}) == 0
    assert provider.requests == []


async def test_a_message_that_cannot_be_built_fails_without_stopping_the_dispatcher(
    hub_client, provider
):
    hub = hub_of(hub_client)
    await hub.dispatcher.stop()
    conversation_id = await open_conversation(hub_client)
    poison, good = [
        await enqueue(hub.store, hub.events, conversation_id=conversation_id, text=t, sender=AGENT)
        for t in ("poison", "good")
    ]
    await hub.store.messages.update_one(
        {"_id": poison["_id"]}, {"$set": {"attachments": [{"bogus": True}]}}
    )
    one_worker = hub.settings.dispatcher.model_copy(update={"workers": 1})
    successor = Dispatcher(hub.store, hub.events, hub.metrics, hub.adapters, one_worker, "solo")
    successor.start()
    try:
        sent = await message_when(hub_client, good["_id"], SETTLED)
    finally:
        await successor.stop()
    assert sent["status"] == "sent"
    failed = await hub.store.messages.find_one({"_id": poison["_id"]})
    assert failed["status"] == "failed"
    assert failed["error"].startswith("internal error")
    assert [r["text"] for r in provider.sent] == ["good"]


# -- pacing ---------------------------------------------------------------------------------


async def test_dispatcher_paces_sends_below_the_providers_limit(make_settings, provider):
    """20 replies at once through an inbox paced at 10/s to a provider that
    refuses more than 15 in any second: none is refused."""
    provider.rate = 15
    settings = make_settings(inbox={"rate": 10.0, "burst": 1})
    async with TestClient(TestServer(build_app(settings))) as client:
        hub = hub_of(client)
        conversation_id = await open_conversation(client)
        docs = [
            await enqueue(
                hub.store, hub.events, conversation_id=conversation_id, text=f"{n}", sender=AGENT
            )
            for n in range(20)
        ]
        hub.dispatcher.wake()
        for doc in docs:
            assert (await message_when(client, doc["_id"], SETTLED))["status"] == "sent"
    assert provider.rejected_429 == 0
    assert len(provider.sent) == 20


def test_rate_limiter_lets_a_burst_through_then_spaces_at_the_rate():
    limiter = RateLimiter(per_second=10.0, burst=3)
    waits = [limiter.reserve(now=100.0) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


def test_rate_limiter_without_burst_spaces_every_message():
    limiter = RateLimiter(per_second=4.0)
    assert limiter.reserve(now=0.0) == 0.0
    assert limiter.reserve(now=0.0) == pytest.approx(0.25)
    assert limiter.reserve(now=0.1) == pytest.approx(0.4)  # slot at 0.5
    assert limiter.reserve(now=2.0) == 0.0  # idle long enough: no wait


def test_rate_limiter_long_run_rate_never_exceeds_per_second():
    limiter = RateLimiter(per_second=20.0, burst=5)
    # 1,000 requests arriving every millisecond (1,000/s asked for).
    slots = [t + limiter.reserve(now=t) for t in (n / 1000 for n in range(1000))]
    assert slots == sorted(slots)
    # Any window of one second holds at most burst + rate messages.
    for start in slots:
        in_window = sum(1 for s in slots if start <= s < start + 1.0)
        assert in_window <= 5 + 20
    # And the last is where the rate says: 995 spaced messages after the burst.
    assert slots[-1] == pytest.approx((1000 - 5) / 20.0)


def test_rate_limiter_refills_its_burst_after_idling():
    limiter = RateLimiter(per_second=10.0, burst=3)
    for _ in range(3):
        limiter.reserve(now=0.0)
    assert limiter.reserve(now=0.0) > 0
    assert [limiter.reserve(now=10.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_rate_limiter_schedules_no_faster_than_the_sends_it_lets_out_each_second():
    """`space` lets no more than a whole number of sends go in any second, so the
    schedule keeps to that: at 10.5/s a scheduled send is never owed more than the
    10 a second lets out, and no backlog builds up behind the cap."""
    limiter = RateLimiter(per_second=10.5)
    delays = [limiter.reserve(now=0.0) for _ in range(101)]
    assert delays[-1] == pytest.approx(10.0)
    assert RateLimiter(per_second=0.9).interval == pytest.approx(1 / 0.9)  # under 1/s: as given
    assert RateLimiter(per_second=10.5, burst=3).interval == pytest.approx(1 / 10.5)


async def test_rate_limiter_lets_waiting_sends_go_in_the_order_they_came():
    """Sends held back by `space` go first come, first served, each half an interval
    after the last at least: one that came late is not overtaken again and again
    by the sends on time."""
    limiter = RateLimiter(per_second=20.0)
    await limiter.space()
    order: list[int] = []

    async def send(number: int) -> None:
        await limiter.space()
        order.append(number)

    tasks = []
    for number in range(6):
        tasks.append(asyncio.create_task(send(number)))
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)

    assert order == list(range(6))
    used = list(limiter._used)
    assert all(b - a >= limiter.interval / 2 - 0.001 for a, b in itertools.pairwise(used))


def test_rate_limiter_refuses_a_non_positive_rate():
    with pytest.raises(ValueError):
        RateLimiter(per_second=0)


def test_keyed_rate_limiter_keeps_keys_independent():
    limiter = KeyedRateLimiter(per_second=1.0, burst=1)
    assert limiter.limiter("chat-a").reserve(now=0.0) == 0.0
    assert limiter.limiter("chat-a").reserve(now=0.0) == pytest.approx(1.0)
    assert limiter.limiter("chat-b").reserve(now=0.0) == 0.0  # not slowed by chat-a
    assert limiter.limiter("chat-a") is limiter.limiter("chat-a")


def test_keyed_rate_limiter_forgets_the_least_recently_used_key():
    limiter = KeyedRateLimiter(per_second=1.0, burst=1, max_keys=2)
    a = limiter.limiter("a")
    limiter.limiter("b")
    limiter.limiter("a")  # a is now more recent than b
    limiter.limiter("c")  # evicts b
    assert limiter.limiter("a") is a
    assert set(limiter._limiters) == {"a", "c"}


async def test_a_send_waiting_for_its_recipient_records_its_overall_use_when_it_goes():
    """A send paced overall and per chat records both uses at the moment it goes:
    recorded overall while it still waited for its chat, it would go out in what
    the overall limiter took for free time and bunch with the sends after it."""
    overall = RateLimiter(per_second=20.0)
    chat = RateLimiter(per_second=2.0)
    await space_together(overall, chat)
    first = time.monotonic()

    await space_together(overall, chat)  # the same chat: half its interval later
    went = time.monotonic()

    assert went - first >= chat.interval / 2 - 0.01
    assert overall._used[-1] >= went - 0.01
    assert chat._used[-1] == overall._used[-1]
    # Another chat's send keeps the overall spacing from it.
    await space_together(overall, RateLimiter(per_second=4.0))
    assert overall._used[-1] - overall._used[-2] >= overall.interval / 2 - 0.001


async def test_one_process_at_a_time_sends_for_an_inbox_and_another_takes_over(
    hub_client, provider
):
    """Two hubs on one store must not both pace an inbox at the provider's limit:
    the inbox's lease decides which one sends; when it stops the other goes on."""
    hub = hub_of(hub_client)
    other = Dispatcher(
        hub.store, hub.events, hub.metrics, hub.adapters, hub.settings.dispatcher, "other-hub"
    )
    doc = await reply(hub_client)
    await message_when(hub_client, doc["_id"], SETTLED)
    # The running hub holds the lease: the other one claims nothing.
    queued = await reply(hub_client, text="while the first hub runs")
    await hub.dispatcher.stop()
    lease = await hub.store.leases.find_one({"_id": "outbox:t1"})
    assert lease is None  # a clean stop hands the inbox back at once
    assert await other.run_once() in (True, False)
    await eventually(lambda: other.run_once(), lambda worked: not worked)
    sent = await hub.store.messages.find_one({"_id": queued["_id"]})
    assert sent["status"] == "sent"
    assert (await hub.store.leases.find_one({"_id": "outbox:t1"}))["owner"] == "other-hub"


async def test_a_dispatcher_without_the_inbox_lease_claims_nothing(hub_client, provider):
    hub = hub_of(hub_client)
    await reply(hub_client)  # the running dispatcher takes the lease and sends
    await eventually(lambda: hub.store.leases.find_one({"_id": "outbox:t1"}))
    other = Dispatcher(
        hub.store, hub.events, hub.metrics, hub.adapters, hub.settings.dispatcher, "other-hub"
    )
    assert await other.claim_batch() == []
    await hub.dispatcher.stop()
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=await open_conversation(hub_client),
        text="x",
        sender=AGENT,
    )
    claimed = await eventually(other.claim_batch, deadline=3)
    assert [item["_id"] for item in claimed] == [doc["_id"]]


async def test_statuses_kept_for_unknown_sends_are_forgotten_after_a_day(hub_client):
    hub = hub_of(hub_client)
    await hub.dispatcher.stop()  # its housekeeping would prune before we look
    now = utcnow()
    await hub.store.early_statuses.insert_many(
        [
            {"_id": "old", "rank": 4, "update": {}, "at": now - timedelta(days=2)},
            {"_id": "new", "rank": 4, "update": {}, "at": now - timedelta(hours=1)},
        ]
    )
    assert await hub.store.early_statuses.count_documents({}) == 2
    assert await hub.dispatcher.prune_early_statuses() == 1
    assert [d["_id"] for d in await hub.store.early_statuses.find().to_list()] == ["new"]
