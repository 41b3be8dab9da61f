"""Accounts: login, tokens stored as hashes, logout, lockout, cookies and CSRF,
roles, and the first admin from the environment (issue 4, point 1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from aiohttp.test_utils import TestClient, TestServer

from hub.api.base import API
from hub.app import build_app
from tests.api.conftest import (
    PASSWORD,
    accounts,
    conversation_of,
    hub,
    inbound,
    make_agent,
)

NUMBER = "+15551230001"


async def login(client, email, password=PASSWORD):
    resp = await client.post("/api/auth/login", json={"email": email, "password": password})
    client.session.cookie_jar.clear()
    return resp


async def test_login_with_the_right_password_returns_a_token_and_the_agent(api):
    await accounts(api).create_agent(
        email="Ada@Example.com", name="Ada", role="agent", password=PASSWORD, inboxes=["t1"]
    )
    resp = await login(api, "ada@example.com")
    assert resp.status == 200
    body = await resp.json()
    assert body["token"] and body["csrf_token"]
    assert body["agent"]["email"] == "ada@example.com"
    assert body["agent"]["role"] == "agent"
    assert body["agent"]["inboxes"] == ["t1"]
    assert "password_hash" not in body["agent"]
    me = await api.get("/api/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status == 200
    assert (await me.json())["inboxes"] == ["t1"]


async def test_wrong_password_and_unknown_email_get_the_same_401(api):
    await accounts(api).create_agent(
        email="bo@example.com", name="Bo", role="agent", password=PASSWORD
    )
    wrong = await login(api, "bo@example.com", "not the password")
    unknown = await login(api, "nobody@example.com", PASSWORD)
    assert wrong.status == unknown.status == 401
    assert (await wrong.json()) == (await unknown.json())
    assert (await wrong.json())["error"]["code"] == "bad_credentials"
    assert await hub(api).store.tokens.count_documents({}) == 0


async def test_password_is_stored_as_an_argon2_hash(api):
    await accounts(api).create_agent(
        email="cy@example.com", name="Cy", role="agent", password=PASSWORD
    )
    doc = await hub(api).store.agents.find_one({"email": "cy@example.com"})
    assert doc["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in json.dumps(doc, default=str)


async def test_token_is_stored_only_as_its_sha256(api):
    agent = await make_agent(api)
    tokens = await hub(api).store.tokens.find().to_list()
    assert len(tokens) == 1
    dumped = json.dumps(tokens, default=str)
    assert agent.token not in dumped
    assert agent.csrf not in dumped
    assert tokens[0]["_id"] == hashlib.sha256(agent.token.encode()).hexdigest()


async def test_account_is_locked_after_five_failures_even_with_the_right_password(api):
    await accounts(api).create_agent(
        email="dee@example.com", name="Dee", role="agent", password=PASSWORD
    )
    for _ in range(5):
        assert (await login(api, "dee@example.com", "wrong")).status == 401
    locked = await login(api, "dee@example.com", PASSWORD)
    assert locked.status == 429
    assert (await locked.json())["error"]["code"] == "too_many_attempts"
    assert await hub(api).store.tokens.count_documents({}) == 0
    # Another account from the same address is not locked by these five.
    other = await make_agent(api)
    assert other.token


async def test_an_address_is_limited_across_accounts(api):
    api.app[API].limiter.per_address = 3
    for n in range(3):
        assert (await login(api, f"guess{n}@example.com", "wrong")).status == 401
    await accounts(api).create_agent(
        email="eve@example.com", name="Eve", role="agent", password=PASSWORD
    )
    assert (await login(api, "eve@example.com", PASSWORD)).status == 429


async def test_logout_ends_the_session_and_removes_the_token(api):
    agent = await make_agent(api)
    resp = await api.post("/api/auth/logout", headers=agent.auth)
    assert resp.status == 200
    assert await hub(api).store.tokens.count_documents({}) == 0
    again = await api.get("/api/auth/me", headers=agent.auth)
    assert again.status == 401
    assert (await again.json())["error"]["code"] == "unauthenticated"


async def test_expired_token_is_refused(api):
    agent = await make_agent(api)
    from datetime import UTC, datetime

    await hub(api).store.tokens.update_many(
        {}, {"$set": {"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}}
    )
    assert (await api.get("/api/auth/me", headers=agent.auth)).status == 401


async def test_login_sets_an_httponly_samesite_strict_session_cookie_and_a_csrf_cookie(api):
    await accounts(api).create_agent(
        email="fay@example.com", name="Fay", role="agent", password=PASSWORD
    )
    resp = await login(api, "fay@example.com")
    cookies = {c.split("=", 1)[0]: c for c in resp.headers.getall("Set-Cookie")}
    session = cookies["hub_session"]
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    assert "Path=/" in session
    csrf = cookies["hub_csrf"]
    assert "HttpOnly" not in csrf  # the page's script reads it to send the header
    assert "SameSite=Strict" in csrf


async def _cookie_session(api, agent):
    return {"Cookie": f"hub_session={agent.token}; hub_csrf={agent.csrf}"}


async def test_cookie_session_needs_the_csrf_header_to_change_anything(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMc1", NUMBER, "hi"))
    agent = await make_agent(api, inboxes=["t1"])
    cookie = await _cookie_session(api, agent)
    # Reading with the cookie alone is fine.
    assert (await api.get(f"/api/conversations/{conv}", headers=cookie)).status == 200
    # Changing without the header is refused and changes nothing.
    for method, path, body in [
        ("PATCH", f"/api/conversations/{conv}", {"status": "resolved"}),
        ("POST", f"/api/conversations/{conv}/messages", {"text": "hello", "private": True}),
    ]:
        resp = await api.request(method, path, json=body, headers=cookie)
        assert resp.status == 403, method
        assert (await resp.json())["error"]["code"] == "csrf"
        wrong = await api.request(method, path, json=body, headers={**cookie, "X-CSRF-Token": "x"})
        assert wrong.status == 403
    store = hub(api).store
    assert (await store.conversations.find_one({"_id": conv}))["status"] == "open"
    assert await store.messages.count_documents({"conversation_id": conv}) == 1
    ok = await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "resolved"},
        headers={**cookie, "X-CSRF-Token": agent.csrf},
    )
    assert ok.status == 200
    assert (await store.conversations.find_one({"_id": conv}))["status"] == "resolved"


async def test_bearer_requests_need_no_csrf_token(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMc2", NUMBER, "hi"))
    agent = await make_agent(api, inboxes=["t1"])
    resp = await api.patch(
        f"/api/conversations/{conv}", json={"status": "pending"}, headers=agent.auth
    )
    assert resp.status == 200


async def test_csrf_token_of_another_session_is_refused(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMc3", NUMBER, "hi"))
    one = await make_agent(api, inboxes=["t1"])
    two = await make_agent(api, inboxes=["t1"])
    headers = {"Cookie": f"hub_session={one.token}; hub_csrf={two.csrf}", "X-CSRF-Token": two.csrf}
    resp = await api.patch(
        f"/api/conversations/{conv}", json={"status": "pending"}, headers=headers
    )
    assert resp.status == 403


# -- roles ------------------------------------------------------------------------------


async def test_only_an_admin_creates_agents_and_refusals_create_nothing(api):
    agent = await make_agent(api)
    supervisor = await make_agent(api, "supervisor")
    admin = await make_agent(api, "admin")
    new = {"email": "new@example.com", "name": "New", "role": "agent", "password": PASSWORD}
    store = hub(api).store
    for who in (agent, supervisor):
        resp = await api.post("/api/agents", json=new, headers=who.auth)
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "forbidden"
    assert await store.agents.count_documents({"email": "new@example.com"}) == 0
    assert (await api.get("/api/agents", headers=agent.auth)).status == 403
    assert (await api.get("/api/agents", headers=supervisor.auth)).status == 200
    created = await api.post("/api/agents", json={**new, "inboxes": ["t1"]}, headers=admin.auth)
    assert created.status == 201
    assert (await created.json())["inboxes"] == ["t1"]
    duplicate = await api.post("/api/agents", json=new, headers=admin.auth)
    assert duplicate.status == 409
    bad_inbox = await api.post(
        "/api/agents",
        json={**new, "email": "x@example.com", "inboxes": ["nope"]},
        headers=admin.auth,
    )
    assert bad_inbox.status == 400


async def test_disabling_an_agent_ends_its_sessions(api):
    admin = await make_agent(api, "admin")
    agent = await make_agent(api)
    resp = await api.patch(f"/api/agents/{agent.id}", json={"active": False}, headers=admin.auth)
    assert resp.status == 200
    assert (await api.get("/api/auth/me", headers=agent.auth)).status == 401
    assert (await login(api, agent.email)).status == 401


async def test_unauthenticated_requests_get_401_and_change_nothing(api, provider):
    conv = await conversation_of(api, await inbound(api, "t1", "SMu1", NUMBER, "hi"))
    store = hub(api).store
    before = await store.conversations.find_one({"_id": conv})
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "hub_session=forged"}):
        for method, path, body in [
            ("GET", "/api/conversations", None),
            ("GET", f"/api/conversations/{conv}", None),
            ("PATCH", f"/api/conversations/{conv}", {"status": "resolved", "labels": ["x"]}),
            ("POST", f"/api/conversations/{conv}/messages", {"text": "hello"}),
            ("POST", "/api/contacts", {"name": "Mallory"}),
            ("POST", "/api/agents", {"email": "m@example.com", "name": "M", "password": PASSWORD}),
            ("POST", "/api/auth/logout", None),
        ]:
            resp = await api.request(method, path, json=body, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert (await resp.json())["error"]["code"] == "unauthenticated"
    assert await store.conversations.find_one({"_id": conv}) == before
    assert await store.messages.count_documents({}) == 1
    assert await store.contacts.count_documents({}) == 1
    assert await store.agents.count_documents({}) == 0
    assert await store.outbox.count_documents({}) == 0
    assert provider.requests == []


# -- the first admin -----------------------------------------------------------------------


async def test_first_admin_comes_from_the_environment_only_when_no_agent_exists(api_settings):
    os.environ["HUB_ADMIN_EMAIL"] = "root@example.com"
    os.environ["HUB_ADMIN_PASSWORD"] = PASSWORD
    try:
        async with TestClient(TestServer(build_app(api_settings()))) as client:
            store = hub(client).store
            (admin,) = await store.agents.find().to_list()
            assert admin["email"] == "root@example.com"
            assert admin["role"] == "admin"
            resp = await client.post(
                "/api/auth/login", json={"email": "root@example.com", "password": PASSWORD}
            )
            assert resp.status == 200
        os.environ["HUB_ADMIN_EMAIL"] = "other@example.com"
        async with TestClient(TestServer(build_app(api_settings()))) as client:
            emails = [a["email"] for a in await hub(client).store.agents.find().to_list()]
            assert emails == ["root@example.com"]
    finally:
        os.environ.pop("HUB_ADMIN_EMAIL", None)
        os.environ.pop("HUB_ADMIN_PASSWORD", None)


# -- the last active admin -------------------------------------------------------------------


async def test_the_last_active_admin_cannot_demote_or_deactivate_itself(api):
    admin = await make_agent(api, "admin")
    for change in ({"role": "supervisor"}, {"active": False}, {"role": "agent", "active": False}):
        resp = await api.patch(f"/api/agents/{admin.id}", json=change, headers=admin.auth)
        assert resp.status == 409, change
        assert (await resp.json())["error"]["code"] == "last_admin"
    doc = await hub(api).store.agents.find_one({"_id": admin.id})
    assert doc["role"] == "admin" and doc["active"] is True
    assert (await api.get("/api/auth/me", headers=admin.auth)).status == 200
    # A change that leaves it an active admin is fine.
    renamed = await api.patch(
        f"/api/agents/{admin.id}", json={"name": "Root", "role": "admin"}, headers=admin.auth
    )
    assert renamed.status == 200


async def test_an_admin_may_step_down_only_while_another_active_admin_remains(api):
    one = await make_agent(api, "admin")
    two = await make_agent(api, "admin")
    resting = await accounts(api).create_agent(
        email="resting@example.com", name="Resting", role="admin", password=PASSWORD
    )
    await hub(api).store.agents.update_one({"_id": resting["_id"]}, {"$set": {"active": False}})
    demoted = await api.patch(f"/api/agents/{two.id}", json={"role": "agent"}, headers=one.auth)
    assert demoted.status == 200
    # A disabled admin does not count.
    alone = await api.patch(f"/api/agents/{one.id}", json={"active": False}, headers=one.auth)
    assert alone.status == 409
    back = await api.patch(f"/api/agents/{resting['_id']}", json={"active": True}, headers=one.auth)
    assert back.status == 200
    stepped_down = await api.patch(
        f"/api/agents/{one.id}", json={"role": "supervisor"}, headers=one.auth
    )
    assert stepped_down.status == 200


async def test_no_one_demotes_or_deactivates_the_last_active_admin(api):
    """Not a command, not another admin racing: at least one active admin stays."""
    from hub.services.accounts import AccountError, AgentChange

    admin = await accounts(api).create_agent(
        email="only@example.com", name="Only", role="admin", password=PASSWORD
    )
    for change in (AgentChange(role="agent"), AgentChange(active=False)):
        try:
            await accounts(api).update_agent(admin, change, by=None)
        except AccountError:
            pass
        else:
            raise AssertionError(f"{change} went through")
    store = hub(api).store
    doc = await store.agents.find_one({"_id": admin["_id"]})
    assert doc["role"] == "admin" and doc["active"] is True
    # Two admins demoting each other (or themselves) at once leave one.
    one = await make_agent(api, "admin")
    two = await make_agent(api, "admin")
    await store.agents.update_one({"_id": admin["_id"]}, {"$set": {"active": False}})
    for targets in ((two, one), (one, two), (one, one), (two, two)):
        results = await asyncio.gather(
            api.patch(f"/api/agents/{targets[0].id}", json={"role": "agent"}, headers=one.auth),
            api.patch(f"/api/agents/{targets[1].id}", json={"active": False}, headers=two.auth),
        )
        # (A disabled admin's sessions end: its own request may find it gone.)
        assert {r.status for r in results} <= {200, 401, 403, 409}
        active = await store.agents.count_documents({"role": "admin", "active": True})
        assert active >= 1, targets
        for who in (one, two):
            await store.agents.update_one(
                {"_id": who.id}, {"$set": {"role": "admin", "active": True}}
            )
