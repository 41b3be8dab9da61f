"""The conversations API: inbox access per role, filters, cursors, edits, replies
through the channel, private notes, the reply-window refusal, and input that
tries to be a query operator (issue 4, points 1 and 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.shapes import iso
from tests.api.conftest import (
    WINDOW_REASON,
    conversation_of,
    hub,
    inbound,
    make_agent,
)
from tests.support.waiting import drain, eventually, next_event, of_type

A = "+15551230001"
B = "+15551230002"


async def _two_inboxes(api):
    one = await conversation_of(
        api, await inbound(api, "t1", "SM1", A, "on one", ProfileName="Ann")
    )
    two = await conversation_of(
        api, await inbound(api, "t2", "SM2", B, "on two", ProfileName="Bob")
    )
    return one, two


async def _ids(api, agent, query=""):
    resp = await api.get(f"/api/conversations{query}", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    return [c["id"] for c in (await resp.json())["items"]]


# -- who sees what -----------------------------------------------------------------------


async def test_agent_lists_only_the_conversations_of_its_inboxes(api):
    one, two = await _two_inboxes(api)
    agent = await make_agent(api, inboxes=["t1"])
    supervisor = await make_agent(api, "supervisor")
    admin = await make_agent(api, "admin")
    assert await _ids(api, agent) == [one]
    assert set(await _ids(api, supervisor)) == {one, two}
    assert set(await _ids(api, admin)) == {one, two}
    nobody = await make_agent(api)
    assert await _ids(api, nobody) == []


async def test_agent_sees_the_inboxes_of_its_team(api):
    one, two = await _two_inboxes(api)
    admin = await make_agent(api, "admin")
    resp = await api.post("/api/teams", json={"name": "Two", "inboxes": ["t2"]}, headers=admin.auth)
    assert resp.status == 201
    team = (await resp.json())["id"]
    agent = await make_agent(api, inboxes=["t1"], teams=[team])
    assert set(await _ids(api, agent)) == {one, two}


async def test_agent_gets_403_on_another_inbox_and_nothing_changes(api, provider):
    _, two = await _two_inboxes(api)
    agent = await make_agent(api, inboxes=["t1"])
    store = hub(api).store
    before = await store.conversations.find_one({"_id": two})
    assert (await api.get(f"/api/conversations/{two}", headers=agent.auth)).status == 403
    assert (await api.get(f"/api/conversations/{two}/messages", headers=agent.auth)).status == 403
    assert (await api.get("/api/conversations?inbox=t2", headers=agent.auth)).status == 403
    patch = await api.patch(
        f"/api/conversations/{two}",
        json={"status": "resolved", "assignee_id": agent.id, "labels": ["x"]},
        headers=agent.auth,
    )
    assert patch.status == 403
    assert (await patch.json())["error"]["code"] == "forbidden"
    for body in ({"text": "hi"}, {"text": "note", "private": True}):
        reply = await api.post(f"/api/conversations/{two}/messages", json=body, headers=agent.auth)
        assert reply.status == 403
    assert await store.conversations.find_one({"_id": two}) == before
    assert await store.messages.count_documents({"conversation_id": two}) == 1
    assert await store.outbox.count_documents({}) == 0
    assert provider.requests == []


async def test_unknown_conversation_is_404(api):
    agent = await make_agent(api, "admin")
    resp = await api.get("/api/conversations/nope", headers=agent.auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


# -- operators from outside -------------------------------------------------------------


async def test_operator_payloads_are_rejected_with_400_and_change_nothing(api):
    one, _ = await _two_inboxes(api)
    admin = await make_agent(api, "admin")
    store = hub(api).store
    before = await store.conversations.find_one({"_id": one})
    for body in (
        {"status": {"$ne": "open"}},
        {"$set": {"status": "resolved"}},
        {"assignee_id": {"$gt": ""}},
        {"labels": ["$where"]},
        {"labels": {"$each": ["a"]}},
        {"labels": ["a.b"]},
        {"status": "resolved", "unknown": 1},
        ["status", "resolved"],
    ):
        resp = await api.patch(f"/api/conversations/{one}", json=body, headers=admin.auth)
        assert resp.status == 400, body
        assert set((await resp.json())["error"]) == {"code", "message"}
    assert await store.conversations.find_one({"_id": one}) == before
    for query in (
        "?status[$ne]=open",
        "?status=%7B%22%24ne%22%3A1%7D",
        "?assignee=%24ne",
        "?inbox=%7B%24gt%3A%22%22%7D",
        "?limit=0",
        "?cursor=garbage",
        "?status=open&status=resolved",
    ):
        resp = await api.get(f"/api/conversations{query}", headers=admin.auth)
        assert resp.status == 400, query
    bad = await api.post(
        f"/api/conversations/{one}/messages", json={"text": {"$gt": ""}}, headers=admin.auth
    )
    assert bad.status == 400
    not_json = await api.patch(
        f"/api/conversations/{one}",
        data=b"{nope",
        headers={**admin.auth, "Content-Type": "application/json"},
    )
    assert not_json.status == 400


# -- the list ---------------------------------------------------------------------------


async def test_the_list_pages_by_cursor_newest_activity_first(api):
    for n in range(7):
        await inbound(api, "t1", f"SMp{n}", f"+1555123100{n}", f"message {n}")
    admin = await make_agent(api, "admin")
    seen: list[dict] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.get(f"/api/conversations{query}", headers=admin.auth)
        body = await resp.json()
        seen += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [c["last_message"]["text"] for c in seen] == [f"message {n}" for n in range(6, -1, -1)]
    assert len({c["id"] for c in seen}) == 7
    item = seen[0]
    assert set(item) >= {
        "id",
        "status",
        "inbox",
        "channel",
        "contact",
        "assignee",
        "last_message",
        "unread",
    }
    assert item["unread"] == 1 and item["channel"] == "sms"


async def test_cursor_pages_conversations_with_the_same_activity_time_by_id(api):
    for n in range(5):
        await inbound(api, "t1", f"SMs{n}", f"+1555123200{n}", "same")
    store = hub(api).store
    same = datetime(2024, 1, 1, tzinfo=UTC)
    await store.conversations.update_many({}, {"$set": {"last_activity_at": same}})
    admin = await make_agent(api, "admin")
    ids, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = await (await api.get(f"/api/conversations{query}", headers=admin.auth)).json()
        ids += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5


async def test_filters_by_status_assignee_and_search(api):
    one, two = await _two_inboxes(api)
    admin = await make_agent(api, "admin")
    resp = await api.patch(
        f"/api/conversations/{one}", json={"assignee_id": admin.id}, headers=admin.auth
    )
    assert resp.status == 200
    await api.patch(f"/api/conversations/{two}", json={"status": "resolved"}, headers=admin.auth)
    assert await _ids(api, admin, "?assignee=me") == [one]
    assert await _ids(api, admin, "?assignee=none") == [two]
    assert await _ids(api, admin, f"?assignee={admin.id}") == [one]
    assert await _ids(api, admin, "?status=resolved") == [two]
    assert await _ids(api, admin, "?status=open") == [one]
    assert await _ids(api, admin, "?inbox=t2") == [two]
    assert await _ids(api, admin, "?q=bob") == [two]  # contact name
    assert await _ids(api, admin, "?q=%2B15551230001") == [one]  # phone
    assert await _ids(api, admin, "?q=555-123-0002") == [two]  # phone, written another way
    assert await _ids(api, admin, "?q=%28555%29%20123-0002") == [two]  # (555) 123-0002
    assert await _ids(api, admin, "?q=ON%20ONE") == [one]  # text
    assert await _ids(api, admin, "?q=.*") == []  # a regex is text, not a pattern


# -- one conversation ----------------------------------------------------------------------


async def test_patch_snoozes_assigns_labels_and_publishes_conversation_updated(api):
    one, _ = await _two_inboxes(api)
    agent = await make_agent(api, inboxes=["t1"])
    sub = hub(api).bus.subscribe()
    until = datetime.now(UTC) + timedelta(hours=2)
    resp = await api.patch(
        f"/api/conversations/{one}",
        json={
            "status": "snoozed",
            "snooze_until": until.isoformat(),
            "assignee_id": agent.id,
            "labels": ["vip", "vip", "billing"],
            "unread": 0,
        },
        headers=agent.auth,
    )
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["status"] == "snoozed"
    assert view["snooze_until"] == iso(until)
    assert view["assignee"] == agent.id
    assert view["labels"] == ["vip", "billing"]
    assert view["unread"] == 0
    event = await next_event(sub, of_type("conversation.updated", id=one))
    assert event.data["status"] == "snoozed" and event.data["inbox"] == "t1"
    again = await (await api.get(f"/api/conversations/{one}", headers=agent.auth)).json()
    assert again["status"] == "snoozed" and again["assignee"] == agent.id
    # Opening it again clears the snooze; null unassigns.
    resp = await api.patch(
        f"/api/conversations/{one}",
        json={"status": "open", "assignee_id": None},
        headers=agent.auth,
    )
    view = await resp.json()
    assert view["status"] == "open" and view["snooze_until"] is None and view["assignee"] is None


async def test_patch_refuses_bad_snoozes_and_assignees(api):
    one, _ = await _two_inboxes(api)
    agent = await make_agent(api, inboxes=["t1"])
    other = await make_agent(api, inboxes=["t2"])
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body, status in [
        ({"status": "snoozed"}, 400),
        ({"status": "snoozed", "snooze_until": past}, 400),
        ({"status": "snoozed", "snooze_until": "2099-01-01T00:00:00"}, 400),
        ({"snooze_until": "2099-01-01T00:00:00Z"}, 400),
        ({"status": "closed"}, 400),
        ({"assignee_id": "nobody"}, 400),
        ({"assignee_id": other.id}, 422),
    ]:
        resp = await api.patch(f"/api/conversations/{one}", json=body, headers=agent.auth)
        assert resp.status == status, body
    doc = await hub(api).store.conversations.find_one({"_id": one})
    assert doc["status"] == "open" and doc["assignee_id"] is None


# -- messages ------------------------------------------------------------------------------


async def test_messages_newest_first_paged_with_before(api):
    ids = [await inbound(api, "t1", f"SMm{n}", A, f"m{n}") for n in range(5)]
    conv = await conversation_of(api, ids[0])
    agent = await make_agent(api, inboxes=["t1"])
    texts, before = [], None
    while True:
        query = "?limit=2" + (f"&before={before}" if before else "")
        resp = await api.get(f"/api/conversations/{conv}/messages{query}", headers=agent.auth)
        body = await resp.json()
        texts += [m["text"] for m in body["items"]]
        before = body["next_cursor"]
        if before is None:
            break
    assert texts == ["m4", "m3", "m2", "m1", "m0"]
    first = body["items"][-1]
    assert first["direction"] == "in" and first["kind"] == "text"
    assert first["sender"]["type"] == "contact" and first["status"] == "received"
    other = await conversation_of(api, await inbound(api, "t1", "SMo", B, "x"))
    resp = await api.get(f"/api/conversations/{other}/messages?before={ids[0]}", headers=agent.auth)
    assert resp.status == 400


async def test_reply_is_queued_then_sent_through_the_channel(api, provider):
    conv = await conversation_of(api, await inbound(api, "t1", "SMr1", A, "hello?"))
    agent = await make_agent(api, inboxes=["t1"])
    resp = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "Hi Ann!"}, headers=agent.auth
    )
    assert resp.status == 201, await resp.text()
    message = await resp.json()
    assert message["status"] == "queued"
    assert message["direction"] == "out" and message["kind"] == "text"
    assert message["sender"] == {"type": "agent", "id": agent.id}
    await eventually(lambda: _async(provider.sent), lambda s: len(s) == 1)
    assert provider.sent[0]["to"] == A and provider.sent[0]["text"] == "Hi Ann!"
    store = hub(api).store
    stored = await eventually(
        lambda: store.messages.find_one({"_id": message["id"]}), lambda d: d["status"] == "sent"
    )
    assert stored["provider_id"] == provider.sent[0]["id"]
    listed = await (await api.get(f"/api/conversations/{conv}/messages", headers=agent.auth)).json()
    assert listed["items"][0]["id"] == message["id"]


async def test_private_note_is_stored_and_never_sent(api, provider):
    conv = await conversation_of(api, await inbound(api, "t1", "SMn1", A, "hello?"))
    agent = await make_agent(api, inboxes=["t1"])
    sub = hub(api).bus.subscribe()
    note = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "customer is angry", "private": True},
        headers=agent.auth,
    )
    assert note.status == 201
    view = await note.json()
    assert view["kind"] == "note" and view["text"] == "customer is angry"
    assert view["sender"] == {"type": "agent", "id": agent.id}
    event = await next_event(sub, of_type("message.created", id=view["id"]))
    assert event.data["kind"] == "note"
    # A reply after it is sent; by then the note would have been too, were it queued.
    reply = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "ok"}, headers=agent.auth
    )
    assert reply.status == 201
    await eventually(lambda: _async(provider.sent), lambda s: len(s) == 1)
    store = hub(api).store
    assert [m["text"] for m in provider.requests] == ["ok"]
    assert await store.outbox.find_one({"_id": view["id"]}) is None
    assert (await store.messages.find_one({"_id": view["id"]}))["kind"] == "note"
    drain(sub)


async def test_reply_outside_the_window_is_refused_with_the_channel_reason(api, provider):
    conv = await conversation_of(api, await inbound(api, "w", "SMw1", A, "hi"))
    agent = await make_agent(api, inboxes=["w"])
    resp = await api.post(
        f"/api/conversations/{conv}/messages", json={"text": "late"}, headers=agent.auth
    )
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "reply_refused"
    assert error["message"] == WINDOW_REASON
    store = hub(api).store
    assert await store.messages.count_documents({"conversation_id": conv}) == 1
    assert await store.outbox.count_documents({}) == 0
    # A private note is still fine there.
    note = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "n", "private": True},
        headers=agent.auth,
    )
    assert note.status == 201
    assert provider.requests == []


async def test_empty_reply_is_400(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMe1", A, "hi"))
    agent = await make_agent(api, inboxes=["t1"])
    for body in ({}, {"text": ""}, {"text": "   "}, {"text": "x", "private": "yes please"}):
        resp = await api.post(f"/api/conversations/{conv}/messages", json=body, headers=agent.auth)
        assert resp.status == 400, body


async def _async(value):
    return value


async def test_resolving_records_when_and_reopening_clears_it(api):
    one, _ = await _two_inboxes(api)
    admin = await make_agent(api, "admin")
    store = hub(api).store
    await api.patch(f"/api/conversations/{one}", json={"status": "resolved"}, headers=admin.auth)
    resolved = await store.conversations.find_one({"_id": one})
    assert resolved["resolved_at"] is not None
    await api.patch(f"/api/conversations/{one}", json={"status": "open"}, headers=admin.auth)
    assert (await store.conversations.find_one({"_id": one}))["resolved_at"] is None
