"""Agents' availability (any agent sets its own) and capacity (admins set it)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Client, make_agent


async def _error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


async def _listed(api: Client, auth: dict[str, str], agent_id: str) -> dict[str, Any]:
    resp = await api.get("/api/agents", headers=auth)
    assert resp.status == 200
    return next(a for a in (await resp.json())["items"] if a["id"] == agent_id)


async def test_an_agent_starts_online_without_a_capacity(api: Client) -> None:
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent", inboxes=["t1"])
    listed = await _listed(api, admin.auth, agent.id)
    assert listed["availability"] == "online" and listed["capacity"] is None
    resp = await api.get("/api/auth/me", headers=agent.auth)
    assert (await resp.json())["agent"]["availability"] == "online"


async def test_any_agent_sets_its_own_availability(api: Client) -> None:
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent", inboxes=["t1"])
    for value in ("busy", "offline", "online", "busy"):
        resp = await api.put(
            "/api/agents/me/availability", json={"availability": value}, headers=agent.auth
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["availability"] == value
    assert (await _listed(api, admin.auth, agent.id))["availability"] == "busy"
    resp = await api.get("/api/auth/me", headers=agent.auth)
    assert (await resp.json())["agent"]["availability"] == "busy"
    # Others are untouched.
    assert (await _listed(api, admin.auth, admin.id))["availability"] == "online"


async def test_availability_bad_input_changes_nothing(api: Client) -> None:
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent", inboxes=["t1"])
    url = "/api/agents/me/availability"
    for body in ({"availability": "away"}, {"availability": None}, {}, {"availability": 1}):
        message = await _error(await api.put(url, json=body, headers=agent.auth), 400, "invalid")
        assert "availability" in message
    await _error(await api.put(url, json={"availability": "busy"}), 401, "unauthenticated")
    assert (await _listed(api, admin.auth, agent.id))["availability"] == "online"


async def test_admins_set_capacity(api: Client) -> None:
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent", inboxes=["t1"])
    url = f"/api/agents/{agent.id}"
    resp = await api.patch(url, json={"capacity": 3}, headers=admin.auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["capacity"] == 3
    # Another change leaves the capacity as it is.
    resp = await api.patch(url, json={"name": "Ann"}, headers=admin.auth)
    assert (await resp.json())["capacity"] == 3
    assert (await _listed(api, admin.auth, agent.id))["capacity"] == 3
    resp = await api.patch(url, json={"capacity": None}, headers=admin.auth)
    assert resp.status == 200 and (await resp.json())["capacity"] is None
    assert (await _listed(api, admin.auth, agent.id))["capacity"] is None


async def test_capacity_bad_input_and_roles(api: Client) -> None:
    admin = await make_agent(api, "admin")
    supervisor = await make_agent(api, "supervisor")
    agent = await make_agent(api, "agent", inboxes=["t1"])
    url = f"/api/agents/{agent.id}"
    for bad in (0, -1, "3", 2.5, True, 1_000_001):
        message = await _error(
            await api.patch(url, json={"capacity": bad}, headers=admin.auth), 400, "invalid"
        )
        assert "capacity" in message
    await _error(
        await api.patch(url, json={"capacity": 2}, headers=supervisor.auth), 403, "forbidden"
    )
    await _error(await api.patch(url, json={"capacity": 2}, headers=agent.auth), 403, "forbidden")
    await _error(await api.get("/api/agents", headers=agent.auth), 403, "forbidden")
    await _error(
        await api.patch("/api/agents/nobody", json={"capacity": 2}, headers=admin.auth),
        404,
        "not_found",
    )
    assert (await _listed(api, admin.auth, agent.id))["capacity"] is None
