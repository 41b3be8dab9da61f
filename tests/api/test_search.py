"""Search across every message of a conversation (issue 15, point 5): words in
any message (notes and e-mail subjects included), any case, the matching message
as `match`, only inboxes the agent sees, paged; the contact search still works."""

from __future__ import annotations

from tests.api.conftest import conversation_of, hub, inbound, make_agent

A = "+15551240001"
B = "+15551240002"
C = "+15551240003"


async def _search(api, agent, q, extra=""):
    resp = await api.get(f"/api/conversations?q={q}{extra}", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_words_of_an_older_message_find_the_conversation_with_the_match(api):
    old = await inbound(api, "t1", "SX1", A, "My parcel tracking number is broken")
    conv = await conversation_of(api, old)
    await inbound(api, "t1", "SX2", A, "hello again")  # the last message says nothing of it
    await inbound(api, "t1", "SX3", B, "something else entirely")
    admin = await make_agent(api, "admin")
    body = await _search(api, admin, "PARCEL%20tracking")
    assert [c["id"] for c in body["items"]] == [conv]
    assert body["items"][0]["match"] == {
        "message_id": old,
        "text": "My parcel tracking number is broken",
    }
    assert (await _search(api, admin, "parcel%20nothing"))["items"] == []  # every word
    assert (await _search(api, admin, "parc"))["items"] == []  # whole words


async def test_private_notes_and_email_subjects_are_searched(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SN1", A, "hi"))
    admin = await make_agent(api, "admin")
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "Customer is a Zebra enthusiast", "private": True},
        headers=admin.auth,
    )
    assert resp.status == 201
    note = (await resp.json())["id"]
    found = (await _search(api, admin, "zebra"))["items"]
    assert [(c["id"], c["match"]["message_id"]) for c in found] == [(conv, note)]
    store = hub(api).store
    await store.messages.update_one({"_id": note}, {"$set": {"email": {"subject": "Invoice"}}})
    assert [c["id"] for c in (await _search(api, admin, "invoice"))["items"]] == [conv]
    await store.messages.delete_one({"_id": note})  # the index follows deletes
    assert (await _search(api, admin, "zebra"))["items"] == []


async def test_search_is_limited_to_the_inboxes_the_agent_sees(api):
    one = await conversation_of(api, await inbound(api, "t1", "SV1", A, "refund please"))
    await inbound(api, "t2", "SV2", B, "refund now")
    agent = await make_agent(api, inboxes=["t1"])
    assert [c["id"] for c in (await _search(api, agent, "refund"))["items"]] == [one]


async def test_search_pages_newest_match_first_and_shows_each_conversation_once(api):
    convs = []
    for n, sender in enumerate((A, B, C)):
        first = await inbound(api, "t1", f"SP{n}a", sender, f"banana number {n}")
        convs.append(await conversation_of(api, first))
    await inbound(api, "t1", "SP0b", A, "banana again")  # A matches twice, newest now
    admin = await make_agent(api, "admin")
    seen, cursor = [], None
    while True:
        extra = "&limit=1" + (f"&cursor={cursor}" if cursor else "")
        body = await _search(api, admin, "banana", extra)
        seen += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [convs[0], convs[2], convs[1]]


async def test_contact_search_still_lists_the_contact_conversations(api):
    conv = await conversation_of(
        api, await inbound(api, "t1", "SC1", A, "hi", ProfileName="Quentin")
    )
    admin = await make_agent(api, "admin")
    body = await _search(api, admin, "quentin")
    assert [(c["id"], c["match"]) for c in body["items"]] == [(conv, None)]
