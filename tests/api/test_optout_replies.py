"""An agent's reply to a contact who opted out: refused up front on SMS (409 with
the reason, nothing queued), still sent on another channel."""

from __future__ import annotations

from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.support.waiting import eventually


async def test_sms_reply_to_an_opted_out_number_is_409_with_the_reason(api):
    agent = await make_agent(api, "admin")
    message = await inbound(api, "t1", "SMo1", "+15550009001", "STOP")
    conv = await conversation_of(api, message)
    store = hub(api).store
    assert store is not None
    contact = await eventually(
        lambda: store.contacts.find_one({"phones": "+15550009001"}),
        lambda doc: doc is not None and doc["opted_out"].get("sms") is True,
    )
    assert contact is not None
    before = await eventually(  # the customer's STOP and the one confirmation
        lambda: store.messages.count_documents({"conversation_id": conv}), lambda n: n == 2
    )
    resp = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "Hello?"}, headers=agent.auth
    )
    assert resp.status == 409, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "reply_refused"
    assert "opted out of SMS" in error["message"]
    assert await store.messages.count_documents({"conversation_id": conv}) == before
    # A private note is not a send: it still goes in.
    note = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "they said stop", "private": True},
        headers=agent.auth,
    )
    assert note.status == 201, await note.text()


async def test_sms_reply_goes_again_after_a_start_word(api):
    agent = await make_agent(api, "admin")
    conv = await conversation_of(api, await inbound(api, "t1", "SMo2", "+15550009002", "stop"))
    store = hub(api).store
    assert store is not None
    await eventually(
        lambda: store.contacts.find_one({"phones": "+15550009002"}),
        lambda doc: doc is not None and doc["opted_out"].get("sms") is True,
    )
    await inbound(api, "t1", "SMo3", "+15550009002", "START")
    await eventually(
        lambda: store.contacts.find_one({"phones": "+15550009002"}),
        lambda doc: doc is not None and doc["opted_out"].get("sms") is False,
    )
    resp = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "Welcome back"}, headers=agent.auth
    )
    assert resp.status == 201, await resp.text()
