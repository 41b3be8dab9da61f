"""Canned responses: every agent reads them, only admins manage them (issue 4, points 1 and 3)."""

from __future__ import annotations

from tests.api.conftest import hub, make_agent


async def _add(api, admin, shortcut, text):
    resp = await api.post(
        "/api/canned", json={"shortcut": shortcut, "text": text}, headers=admin.auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_admin_adds_and_every_agent_lists_by_shortcut(api):
    admin = await make_agent(api, "admin")
    agent = await make_agent(api)
    created = await _add(api, admin, "thanks", "Thank you for writing!")
    assert created == {"id": "thanks", "shortcut": "thanks", "text": "Thank you for writing!"}
    await _add(api, admin, "bye-2_x", "Goodbye")
    resp = await api.get("/api/canned", headers=agent.auth)
    assert resp.status == 200
    body = await resp.json()
    assert [c["shortcut"] for c in body["items"]] == ["bye-2_x", "thanks"]
    assert body["next_cursor"] is None


async def test_edit_rename_and_delete(api):
    admin = await make_agent(api, "admin")
    await _add(api, admin, "hi", "Hello")
    await _add(api, admin, "taken", "x")
    resp = await api.patch("/api/canned/hi", json={"text": "Hello there"}, headers=admin.auth)
    assert (await resp.json())["text"] == "Hello there"
    resp = await api.patch("/api/canned/hi", json={"shortcut": "taken"}, headers=admin.auth)
    assert resp.status == 409
    resp = await api.patch("/api/canned/hi", json={"shortcut": "hello"}, headers=admin.auth)
    assert resp.status == 200
    assert await resp.json() == {"id": "hello", "shortcut": "hello", "text": "Hello there"}
    store = hub(api).store
    assert await store.canned.find_one({"_id": "hi"}) is None
    assert (await api.patch("/api/canned/hi", json={"text": "x"}, headers=admin.auth)).status == 404
    assert (await api.delete("/api/canned/hello", headers=admin.auth)).status == 200
    assert (await api.delete("/api/canned/hello", headers=admin.auth)).status == 404
    assert [d["_id"] async for d in store.canned.find({})] == ["taken"]


async def test_bad_shortcuts_and_duplicates_are_refused(api):
    admin = await make_agent(api, "admin")
    await _add(api, admin, "dup", "one")
    resp = await api.post(
        "/api/canned", json={"shortcut": "dup", "text": "two"}, headers=admin.auth
    )
    assert resp.status == 409
    for body in (
        {"shortcut": "Upper", "text": "x"},
        {"shortcut": "has space", "text": "x"},
        {"shortcut": "a" * 33, "text": "x"},
        {"shortcut": "", "text": "x"},
        {"shortcut": "$gt", "text": "x"},
        {"shortcut": {"$ne": 1}, "text": "x"},
        {"shortcut": "ok", "text": ""},
        {"shortcut": "ok"},
        {"shortcut": "ok", "text": "x", "extra": 1},
    ):
        resp = await api.post("/api/canned", json=body, headers=admin.auth)
        assert resp.status == 400, body
    resp = await api.patch("/api/canned/dup", json={"shortcut": "BAD"}, headers=admin.auth)
    assert resp.status == 400
    resp = await api.patch("/api/canned/dup", json={"text": None}, headers=admin.auth)
    assert resp.status == 400
    assert (await api.delete("/api/canned/NOT.VALID", headers=admin.auth)).status == 404
    docs = await hub(api).store.canned.find({}).to_list()
    assert [(d["_id"], d["text"]) for d in docs] == [("dup", "one")]


async def test_agents_and_supervisors_get_403_and_strangers_401_and_nothing_changes(api):
    admin = await make_agent(api, "admin")
    await _add(api, admin, "keep", "kept")
    assert (await api.get("/api/canned")).status == 401
    for role in ("agent", "supervisor", None):
        who = await make_agent(api, role) if role else None
        headers = who.auth if who else {}
        want = 403 if who else 401
        body = {"shortcut": "new", "text": "x"}
        assert (await api.post("/api/canned", json=body, headers=headers)).status == want
        resp = await api.patch("/api/canned/keep", json={"text": "changed"}, headers=headers)
        assert resp.status == want
        assert (await api.delete("/api/canned/keep", headers=headers)).status == want
    docs = await hub(api).store.canned.find({}).to_list()
    assert [(d["_id"], d["text"]) for d in docs] == [("keep", "kept")]
