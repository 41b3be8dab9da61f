from tests.conftest import hub_of, post_inbound


async def test_inbound_message_is_stored_once_and_reply_is_sent(hub_client, provider):
    resp = await post_inbound(hub_client, MessageSid="SM1", From="+15551230001", Body="hi")
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    resp = await post_inbound(hub_client, MessageSid="SM1", From="+15551230001", Body="hi")
    assert (await resp.json())["duplicate"] is True
    hub = hub_of(hub_client)
    assert await hub.store.messages.count_documents({}) == 1
    assert first["duplicate"] is False


async def test_reply_goes_out_and_status_callback_moves_it(hub_client, provider):
    import asyncio

    from hub.services.outbox import enqueue
    from tests.conftest import signed_form

    resp = await post_inbound(hub_client, MessageSid="SM2", From="+15551230002", Body="hello")
    conv_id = (await hub_client.app[__import__("hub.app").app.HUB].store.messages.find_one())[
        "conversation_id"
    ]
    hub = hub_of(hub_client)
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=conv_id,
        text="hi back",
        sender={"type": "agent", "id": "a1"},
    )
    hub.dispatcher.wake()
    for _ in range(100):
        msg = await hub.store.messages.find_one({"_id": doc["_id"]})
        if msg["status"] == "sent":
            break
        await asyncio.sleep(0.05)
    assert msg["status"] == "sent", msg
    assert provider.sent[0]["to"] == "+15551230002"
    body, headers = signed_form({"MessageSid": msg["provider_id"], "MessageStatus": "delivered"})
    resp = await hub_client.post("/webhooks/testchan/t1/status", data=body, headers=headers)
    assert resp.status == 200
    msg = await hub.store.messages.find_one({"_id": doc["_id"]})
    assert msg["status"] == "delivered"
