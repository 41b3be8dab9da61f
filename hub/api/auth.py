"""Logging in and out, and the admin's management of agents and teams."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from hub.api.base import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    ApiError,
    Call,
    RouteTable,
    not_found,
)
from hub.api.schemas import (
    AgentCreate,
    AgentList,
    AgentOut,
    AgentPatch,
    LoginIn,
    LoginOut,
    MeOut,
    OkOut,
    TeamIn,
    TeamList,
    TeamOut,
    TeamPatch,
)
from hub.model import Event, utcnow
from hub.services.accounts import (
    AccountError,
    AgentChange,
    agent_view,
    normalize_agent_email,
    team_view,
)
from hub.shapes import iso

table = RouteTable()


def _client_address(call: Call) -> str:
    # The peer address: X-Forwarded-For is not trusted unless a deployment says
    # which proxy sets it (CONVENTIONS.md).
    return call.request.remote or "unknown"


@table.route(
    "POST",
    "/api/auth/login",
    summary="Log in: a token for the API, and the web UI's session cookie",
    role=None,
    body=LoginIn,
    response=LoginOut,
)
async def login(call: Call) -> web.StreamResponse:
    body: LoginIn = call.body
    address = _client_address(call)
    try:
        email = normalize_agent_email(body.email)
    except AccountError:
        email = body.email.strip().lower()
    limiter = call.state.limiter
    wait = limiter.blocked(email, address)
    if wait > 0:
        raise ApiError(
            429, "too_many_attempts", f"too many failed logins; try again in {math.ceil(wait)} s"
        )
    agent = await call.accounts.login(email, body.password)
    if agent is None:
        limiter.failed(email, address)
        await call.accounts.audit(None, "login.failed", email=email, address=address)
        raise ApiError(401, "bad_credentials", "wrong e-mail or password")
    limiter.succeeded(email)
    token, csrf, _sid = await call.accounts.open_session(agent)
    expires = utcnow() + call.accounts.session_ttl
    response = web.json_response(
        {"token": token, "csrf_token": csrf, "agent": agent_view(agent), "expires_at": iso(expires)}
    )
    max_age = int(call.accounts.session_ttl.total_seconds())
    secure = call.state.secure_cookies
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )
    # Readable by the page's script, which repeats it in the X-CSRF-Token header.
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, path="/", samesite="Strict", secure=secure
    )
    return response


@table.route("POST", "/api/auth/logout", summary="End this session", response=OkOut)
async def logout(call: Call) -> web.StreamResponse:
    await call.accounts.close_session(call.me)
    # Every hub process closes the WebSockets of this session.
    await call.hub.publish([Event("session.ended", {"sid": call.me.sid})])
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(CSRF_COOKIE, path="/")
    return response


@table.route("GET", "/api/auth/me", summary="The logged-in agent", response=MeOut)
async def me(call: Call) -> dict[str, Any]:
    inboxes = call.me.inboxes
    return {
        "agent": agent_view(call.me.agent),
        "inboxes": None if inboxes is None else sorted(inboxes),
    }


# -- agents and teams (admin) ---------------------------------------------------------


def _known_inboxes(call: Call, inboxes: list[str]) -> list[str]:
    unknown = [i for i in inboxes if call.hub.settings.inbox(i) is None]
    if unknown:
        raise ApiError(400, "invalid", f"inboxes: no inbox {', '.join(unknown)}")
    return list(dict.fromkeys(inboxes))


@table.route("GET", "/api/agents", summary="Every agent", role="supervisor", response=AgentList)
async def list_agents(call: Call) -> dict[str, Any]:
    docs = await call.accounts.agents()
    return {"items": [agent_view(d) for d in docs], "next_cursor": None}


@table.route(
    "POST",
    "/api/agents",
    summary="Create an agent",
    role="admin",
    body=AgentCreate,
    response=AgentOut,
    status=201,
)
async def create_agent(call: Call) -> dict[str, Any]:
    body: AgentCreate = call.body
    inboxes = _known_inboxes(call, body.inboxes)
    teams = await call.accounts.known_teams(body.teams)
    try:
        agent = await call.accounts.create_agent(
            email=body.email,
            name=body.name,
            role=body.role,
            password=body.password,
            inboxes=inboxes,
            teams=teams,
        )
    except AccountError as error:
        status = 409 if "exists" in str(error) else 400
        raise ApiError(status, "conflict" if status == 409 else "invalid", str(error)) from None
    await call.accounts.audit(call.me.agent_id, "agent.created", target=agent["_id"])
    return agent_view(agent)


@table.route(
    "PATCH",
    "/api/agents/{id}",
    summary="Change an agent's name, role, password, inboxes, teams or activity",
    role="admin",
    body=AgentPatch,
    response=AgentOut,
)
async def patch_agent(call: Call) -> dict[str, Any]:
    body: AgentPatch = call.body
    agent_id = call.param("id")
    agent = await call.accounts.agent(agent_id)
    if agent is None:
        raise not_found("agent")
    change = AgentChange(
        name=body.name,
        role=body.role,
        active=body.active,
        inboxes=None if body.inboxes is None else _known_inboxes(call, body.inboxes),
        teams=body.teams,
        password=body.password,
    )
    agent, changed = await call.accounts.update_agent(agent, change, by=call.me.agent_id)
    if changed:
        await call.hub.publish([Event("agent.updated", {"id": agent_id})])
    return agent_view(agent)


@table.route("GET", "/api/teams", summary="Every team", role="supervisor", response=TeamList)
async def list_teams(call: Call) -> dict[str, Any]:
    docs = await call.accounts.teams()
    return {"items": [team_view(d) for d in docs], "next_cursor": None}


@table.route(
    "POST",
    "/api/teams",
    summary="Create a team with access to inboxes",
    role="admin",
    body=TeamIn,
    response=TeamOut,
    status=201,
)
async def create_team(call: Call) -> dict[str, Any]:
    body: TeamIn = call.body
    inboxes = _known_inboxes(call, body.inboxes)
    doc = await call.accounts.create_team(body.name, inboxes, by=call.me.agent_id)
    return team_view(doc)


@table.route(
    "PATCH",
    "/api/teams/{id}",
    summary="Rename a team or change its inboxes",
    role="admin",
    body=TeamPatch,
    response=TeamOut,
)
async def patch_team(call: Call) -> dict[str, Any]:
    body: TeamPatch = call.body
    team_id = call.param("id")
    team = await call.accounts.team(team_id)
    if team is None:
        raise not_found("team")
    inboxes = None if body.inboxes is None else _known_inboxes(call, body.inboxes)
    team, changed = await call.accounts.update_team(
        team, name=body.name, inboxes=inboxes, by=call.me.agent_id
    )
    if changed:
        await call.hub.publish([Event("team.updated", {"id": team_id})])
    return team_view(team)
