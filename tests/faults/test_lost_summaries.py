"""A message stored whose conversation summary was not written (the store went
away, or hung, or the hub was killed, between the two writes; the webhook got a
503) is repaired by the provider's retry, however late the retry comes.

The fault tests in test_store_faults.py produce this state for real; these tests
make it by hand, one case each, in process and in well under a second. The first
failed before the repair counted messages (it went by time alone): a retry that
came after the customer's next message was summarised was taken for one whose
summary was written, and `unread` stayed one short.
"""

from __future__ import annotations

from typing import Any

from hub.model import IdentityRef, InboundText, utcnow
from hub.services.ingest import message_id_for
from hub.services.messages import inbound_message_doc
from tests.conftest import hub_of, post_inbound

NUMBER = "+15551230001"


async def lose_summary(hub: Any, conversation_id: str, sid: str) -> None:
    """Store `sid` as its first attempt did before the store went away: the
    message is in, its conversation's summary is not."""
    lost = InboundText(
        inbox="t1",
        medium="sms",
        provider_id=sid,
        sender=IdentityRef(kind="phone", value=NUMBER),
        text=f"lost {sid}",
        received_at=utcnow(),
    )
    await hub.store.messages.insert_one(
        inbound_message_doc(lost, message_id_for("t1", sid), conversation_id)
    )


async def post(client: Any, sid: str) -> dict[str, Any]:
    response = await post_inbound(client, MessageSid=sid, From=NUMBER, Body=f"lost {sid}")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def only_conversation(hub: Any) -> dict[str, Any]:
    (conversation,) = await hub.store.conversations.find().to_list()
    return dict(conversation)


async def test_a_retry_after_the_customers_next_message_still_counts_the_lost_one(hub_client):
    hub = hub_of(hub_client)
    await post(hub_client, "A1")
    conversation = await only_conversation(hub)
    await lose_summary(hub, conversation["_id"], "A2")
    await post(hub_client, "A3")  # the customer writes again before the retry

    retry = await post(hub_client, "A2")

    assert retry["duplicate"] is True
    repaired = await only_conversation(hub)
    assert repaired["unread"] == 3
    assert repaired["last_message"]["id"] == message_id_for("t1", "A3")
    # Another retry of it changes nothing.
    await post(hub_client, "A2")
    assert await only_conversation(hub) == repaired


async def test_a_retry_counts_every_lost_message_and_shows_the_newest(hub_client):
    hub = hub_of(hub_client)
    await post(hub_client, "B1")
    conversation = await only_conversation(hub)
    await lose_summary(hub, conversation["_id"], "B2")
    await lose_summary(hub, conversation["_id"], "B3")

    await post(hub_client, "B2")  # the older one's retry comes first

    repaired = await only_conversation(hub)
    assert repaired["unread"] == 3
    assert repaired["last_message"]["id"] == message_id_for("t1", "B3")
    await post(hub_client, "B3")
    assert await only_conversation(hub) == repaired


async def test_an_ordinary_retry_changes_nothing(hub_client):
    hub = hub_of(hub_client)
    await post(hub_client, "C1")
    await post(hub_client, "C2")
    before = await only_conversation(hub)

    for sid in ("C2", "C1"):  # the newest, then an older one
        assert (await post(hub_client, sid))["duplicate"] is True

    assert await only_conversation(hub) == before
    assert before["unread"] == 2


async def test_a_conversation_opened_before_the_count_was_kept_is_repaired_by_time(hub_client):
    hub = hub_of(hub_client)
    await post(hub_client, "D1")
    conversation = await only_conversation(hub)
    # As a conversation opened by an earlier version is: no count from the start.
    await hub.store.conversations.update_one(
        {"_id": conversation["_id"]}, {"$unset": {"inbound": "", "counts_inbound": ""}}
    )
    await lose_summary(hub, conversation["_id"], "D2")

    await post(hub_client, "D2")

    repaired = await only_conversation(hub)
    assert repaired["unread"] == 2
    assert repaired["last_message"]["id"] == message_id_for("t1", "D2")
    await post(hub_client, "D2")
    assert (await only_conversation(hub))["unread"] == 2
