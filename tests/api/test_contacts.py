"""The contacts API: create, read, edit, search, page, merge (issue 4, point 6)."""

from __future__ import annotations

from tests.api.conftest import conversation_of, hub, inbound, make_agent

A = "+15551230001"
B = "+15551230002"


async def _create(api, agent, **body):
    resp = await api.post("/api/contacts", json=body, headers=agent.auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_create_then_get_a_contact_with_normalised_identities(api):
    agent = await make_agent(api)
    created = await _create(
        api,
        agent,
        name="Ann Lee",
        phones=["(555) 123-0001"],
        emails=["Ann@Example.COM"],
        birthday={"month": 2, "day": 29},
        timezone="Europe/Paris",
        locale="fr-FR",
        labels=["vip"],
        attributes={"plan": "gold"},
    )
    assert created["phones"] == [A]
    assert created["emails"] == ["ann@example.com"]
    got = await (await api.get(f"/api/contacts/{created['id']}", headers=agent.auth)).json()
    assert got["name"] == "Ann Lee"
    assert got["birthday"] == {"month": 2, "day": 29, "year": None}
    assert got["timezone"] == "Europe/Paris"
    assert got["attributes"] == {"plan": "gold"}
    assert got["opted_out"] == {}
    assert {(i["kind"], i["value"]) for i in got["identities"]} == {
        ("phone", A),
        ("email", "ann@example.com"),
    }
    # The same number again belongs to Ann: 409, not a second owner.
    resp = await api.post("/api/contacts", json={"phones": [A]}, headers=agent.auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "identity_taken"


async def test_create_rejects_bad_values_and_operator_keys(api):
    agent = await make_agent(api)
    for body in (
        {"phones": ["not a number"]},
        {"emails": ["nope"]},
        {"timezone": "Mars/Olympus"},
        {"birthday": {"month": 13, "day": 1}},
        {"attributes": {"$gt": "x"}},
        {"attributes": {"a.b": "x"}},
        {"attributes": {"plan": {"$ne": 1}}},
        {"labels": ["$x"]},
        {"name": {"$regex": ".*"}},
        {"_id": "mine"},
    ):
        resp = await api.post("/api/contacts", json=body, headers=agent.auth)
        assert resp.status == 400, body
    assert await hub(api).store.contacts.count_documents({}) == 0


async def test_patch_edits_fields_identities_and_opt_outs(api):
    agent = await make_agent(api)
    contact = await _create(api, agent, name="Bo", phones=[A], attributes={"a": "1", "b": "2"})
    sub = hub(api).bus.subscribe()
    resp = await api.patch(
        f"/api/contacts/{contact['id']}",
        json={
            "name": "Bo Diddley",
            "phones": [B],
            "emails": ["bo@example.com"],
            "attributes": {"a": None, "c": "3"},
            "opted_out": {"sms": True},
            "labels": ["x"],
        },
        headers=agent.auth,
    )
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["name"] == "Bo Diddley"
    assert view["phones"] == [B]
    assert view["emails"] == ["bo@example.com"]
    assert view["attributes"] == {"b": "2", "c": "3"}
    assert view["opted_out"] == {"sms": True}
    store = hub(api).store
    assert await store.identities.find_one({"_id": f"phone:{A}"}) is None
    assert (await store.identities.find_one({"_id": f"phone:{B}"}))["contact_id"] == contact["id"]
    event = await sub.get(timeout=2)
    assert event.type == "contact.updated" and event.data["id"] == contact["id"]
    bad = await api.patch(
        f"/api/contacts/{contact['id']}", json={"opted_out": {"pigeon": True}}, headers=agent.auth
    )
    assert bad.status == 400


async def test_search_and_cursor_pages_of_contacts(api):
    agent = await make_agent(api)
    for n in range(5):
        await _create(api, agent, name=f"Person {n}", emails=[f"p{n}@example.com"], labels=["l"])
    await _create(api, agent, name="Zed", phones=[A])
    names, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = await (await api.get(f"/api/contacts{query}", headers=agent.auth)).json()
        names += [c["name"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert names == ["Zed", "Person 4", "Person 3", "Person 2", "Person 1", "Person 0"]

    async def search(query):
        body = await (await api.get(f"/api/contacts?{query}", headers=agent.auth)).json()
        return [c["name"] for c in body["items"]]

    assert await search("q=person%202") == ["Person 2"]
    assert await search("q=P3@EXAMPLE.com") == ["Person 3"]
    assert await search("q=555-123-0001") == ["Zed"]
    assert await search("q=example&limit=2") == ["Person 4", "Person 3"]
    assert await search("label=l&limit=10") == [f"Person {n}" for n in range(4, -1, -1)]
    assert await search("q=.%2A") == []
    page = await (await api.get("/api/contacts?q=person&limit=3", headers=agent.auth)).json()
    rest = await (
        await api.get(
            f"/api/contacts?q=person&limit=3&cursor={page['next_cursor']}", headers=agent.auth
        )
    ).json()
    assert [c["name"] for c in rest["items"]] == ["Person 1", "Person 0"]


async def test_contact_of_another_inbox_is_403_for_an_agent(api):
    conv = await conversation_of(api, await inbound(api, "t2", "SMk", B, "hi"))
    contact_id = (await hub(api).store.conversations.find_one({"_id": conv}))["contact_id"]
    agent = await make_agent(api, inboxes=["t1"])
    assert (await api.get(f"/api/contacts/{contact_id}", headers=agent.auth)).status == 403
    patch = await api.patch(f"/api/contacts/{contact_id}", json={"name": "X"}, headers=agent.auth)
    assert patch.status == 403
    assert (await hub(api).store.contacts.find_one({"_id": contact_id}))["name"] is None
    supervisor = await make_agent(api, "supervisor")
    got = await (await api.get(f"/api/contacts/{contact_id}", headers=supervisor.auth)).json()
    assert [c["id"] for c in got["conversations"]] == [conv]


async def test_merge_folds_identities_and_conversations_and_needs_a_supervisor(api):
    sms = await conversation_of(api, await inbound(api, "t1", "SMg1", A, "by sms"))
    other = await conversation_of(api, await inbound(api, "t2", "SMg2", B, "other number"))
    store = hub(api).store
    keep = (await store.conversations.find_one({"_id": sms}))["contact_id"]
    gone = (await store.conversations.find_one({"_id": other}))["contact_id"]
    agent = await make_agent(api, inboxes=["t1", "t2"])
    refused = await api.post(
        f"/api/contacts/{keep}/merge", json={"other_id": gone}, headers=agent.auth
    )
    assert refused.status == 403
    assert await store.contacts.count_documents({}) == 2
    supervisor = await make_agent(api, "supervisor")
    resp = await api.post(
        f"/api/contacts/{keep}/merge", json={"other_id": gone}, headers=supervisor.auth
    )
    assert resp.status == 200, await resp.text()
    merged = await resp.json()
    assert set(merged["phones"]) == {A, B}
    assert {c["id"] for c in merged["conversations"]} == {sms, other}
    assert (await api.get(f"/api/contacts/{gone}", headers=supervisor.auth)).status == 404
    # A new message from the folded number lands on the kept contact.
    await inbound(api, "t2", "SMg3", B, "again")
    assert (await store.conversations.find_one({"_id": other}))["contact_id"] == keep
    assert await store.contacts.count_documents({}) == 1
    for body, status in (({"other_id": keep}, 400), ({"other_id": "missing"}, 404)):
        resp = await api.post(f"/api/contacts/{keep}/merge", json=body, headers=supervisor.auth)
        assert resp.status == status
    assert (
        await api.post(
            f"/api/contacts/{keep}/merge", json={"other_id": {"$ne": 1}}, headers=supervisor.auth
        )
    ).status == 400
