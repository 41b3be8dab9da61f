"""The audit log (issue 15, point 7): every agent action that changes something,
and every login, recorded with who, what, when and from where (the forwarded
address behind a trusted proxy); admins read it through `GET /api/audit` with
filters, others get 403."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp

from hub.model import utcnow
from tests.api.conftest import PASSWORD, conversation_of, hub, inbound, make_agent
from tests.api.test_login_limits import proxied  # noqa: F401  (the fixture)

A = "+15551260001"
B = "+15551260002"


async def _audit(api, who, query=""):
    resp = await api.get(f"/api/audit{query}", headers=who.auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _all(api, who, query=""):
    items, cursor = [], None
    while True:
        sep = "&" if query else "?"
        body = await _audit(api, who, query + (f"{sep}cursor={cursor}" if cursor else ""))
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_every_kind_of_change_is_in_the_log(api):
    admin = await make_agent(api, "admin")
    h = admin.auth
    conv = await conversation_of(api, await inbound(api, "t1", "AU1", A, "hello"))
    other = await conversation_of(api, await inbound(api, "t1", "AU2", B, "other"))
    assert (
        await api.post(f"/api/conversations/{conv}/messages", json={"text": "hi"}, headers=h)
    ).status == 201
    note = {"text": "a note", "private": True}
    assert (
        await api.post(f"/api/conversations/{conv}/messages", json=note, headers=h)
    ).status == 201
    patch = {"status": "resolved", "assignee_id": admin.id, "labels": ["vip"]}
    assert (await api.patch(f"/api/conversations/{conv}", json=patch, headers=h)).status == 200
    contact = (await (await api.get(f"/api/conversations/{conv}", headers=h)).json())["contact"][
        "id"
    ]
    other_contact = (await (await api.get(f"/api/conversations/{other}", headers=h)).json())[
        "contact"
    ]["id"]
    assert (
        await api.patch(f"/api/contacts/{contact}", json={"name": "Ann"}, headers=h)
    ).status == 200
    resp = await api.post(
        f"/api/contacts/{contact}/merge", json={"other_id": other_contact}, headers=h
    )
    assert resp.status == 200
    assert (await api.post("/api/contacts", json={"name": "New One"}, headers=h)).status == 201
    csv = (
        "name,phone,email,telegram,birthday,timezone,locale,labels,attributes,opted_out\n"
        "Csv,+15551260009,,,,,,,,\n"
    )
    resp = await api.post(
        "/api/contacts/import", data=csv.encode(), headers={**h, "Content-Type": "text/csv"}
    )
    assert resp.status == 200, await resp.text()
    assert (await api.get("/api/contacts/export", headers=h)).status == 200
    new_agent = {
        "email": "audited@example.com",
        "name": "Aud",
        "role": "agent",
        "password": PASSWORD,
    }
    resp = await api.post("/api/agents", json=new_agent, headers=h)
    assert resp.status == 201, await resp.text()
    agent_id = (await resp.json())["id"]
    assert (
        await api.patch(f"/api/agents/{agent_id}", json={"name": "Audrey"}, headers=h)
    ).status == 200
    resp = await api.post("/api/teams", json={"name": "Night", "inboxes": ["t1"]}, headers=h)
    assert resp.status == 201
    bad = await api.post(
        "/api/auth/login", json={"email": "audited@example.com", "password": "wrong-one"}
    )
    assert bad.status == 401
    actions = {e["action"] for e in await _all(api, admin)}
    expected = {
        "login",
        "login.failed",
        "message.replied",
        "note.added",
        "conversation.status",
        "conversation.assigned",
        "conversation.labels",
        "contact.updated",
        "contact.merged",
        "contact.created",
        "contacts.imported",
        "contacts.exported",
        "agent.created",
        "agent.updated",
        "team.created",
    }
    assert expected <= actions, expected - actions
    entries = await _all(api, admin, "?action=conversation.assigned")
    assert len(entries) == 1
    entry = entries[0]
    assert entry["agent"]["id"] == admin.id and entry["agent"]["email"] == admin.email
    assert entry["target"] == conv
    assert entry["detail"]["assignee_id"] == admin.id
    assert entry["address"] == "127.0.0.1"
    at = datetime.fromisoformat(entry["at"])
    assert abs(at - utcnow()) < timedelta(minutes=1)
    failed = (await _all(api, admin, "?action=login.failed"))[0]
    assert failed["agent"] is None and failed["detail"]["email"] == "audited@example.com"


async def test_only_admins_read_the_log(api):
    for role in ("agent", "supervisor"):
        who = await make_agent(api, role)
        resp = await api.get("/api/audit", headers=who.auth)
        assert resp.status == 403, role
        assert (await resp.json())["error"]["code"] == "forbidden"
    assert (await api.get("/api/audit")).status == 401


async def test_filters_by_agent_action_family_and_dates(api):
    admin = await make_agent(api, "admin")
    one = await make_agent(api, "supervisor")
    two = await make_agent(api, "supervisor")
    conv = await conversation_of(api, await inbound(api, "t1", "AF1", A, "hello"))
    for who, status in ((one, "pending"), (two, "resolved"), (one, "open")):
        resp = await api.patch(
            f"/api/conversations/{conv}", json={"status": status}, headers=who.auth
        )
        assert resp.status == 200
    mine = await _all(api, admin, f"?agent={one.id}&action=conversation.status")
    assert [e["detail"]["status"] for e in mine] == ["open", "pending"]  # newest first
    family = await _all(api, admin, f"?agent={two.id}&action=conversation.")
    assert [e["action"] for e in family] == ["conversation.status"]
    logins = await _all(api, admin, f"?agent={one.id}&action=login")
    assert len(logins) == 1
    store = hub(api).store
    old = datetime(2020, 1, 1, tzinfo=UTC)
    await store.audit.update_many({"agent_id": two.id}, {"$set": {"at": old}})
    window = "?from=2019-12-31T00:00:00Z&to=2020-01-02T00:00:00Z"
    assert {e["agent"]["id"] for e in await _all(api, admin, window)} == {two.id}
    assert two.id not in {
        e["agent"]["id"] for e in await _all(api, admin, "?from=2021-01-01T00:00:00Z") if e["agent"]
    }
    resp = await api.get("/api/audit?from=2020-01-01T00:00:00", headers=admin.auth)
    assert resp.status == 400  # a time without its zone
    assert (await api.get("/api/audit?action=%24where", headers=admin.auth)).status == 400


async def test_the_address_is_the_forwarded_one_behind_a_trusted_proxy(proxied):  # noqa: F811
    admin = await make_agent(proxied, "admin")
    conv = await conversation_of(proxied, await inbound(proxied, "t1", "AP1", A, "hello"))
    resp = await proxied.patch(
        f"/api/conversations/{conv}",
        json={"labels": ["x"]},
        headers={**admin.auth, "X-Forwarded-For": "198.51.100.7"},
    )
    assert resp.status == 200
    entry = (await _audit(proxied, admin, "?action=conversation.labels"))["items"][0]
    assert entry["address"] == "198.51.100.7"


async def test_a_reply_and_a_note_with_files_are_in_the_log(api):
    admin = await make_agent(api, "admin")
    conv = await conversation_of(api, await inbound(api, "t1", "AU5", A, "a photo please"))

    def files(**fields: str) -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value)
        pdf = b"%PDF-1.4 a receipt"
        data.add_field("file", pdf, filename="r.pdf", content_type="application/pdf")
        return data

    reply = await api.post(
        f"/api/conversations/{conv}/messages", data=files(text="here"), headers=admin.auth
    )
    assert reply.status == 201, await reply.text()
    note = await api.post(
        f"/api/conversations/{conv}/messages",
        data=files(text="kept", private="true"),
        headers=admin.auth,
    )
    assert note.status == 201, await note.text()
    logged = {
        (e["action"], e["detail"].get("message"))
        for e in await _all(api, admin, "?action=message.")
        + await _all(api, admin, "?action=note.")
    }
    assert ("message.replied", (await reply.json())["id"]) in logged
    assert ("note.added", (await note.json())["id"]) in logged
