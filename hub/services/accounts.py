"""Agents, teams, sessions and who may see what.

Passwords are argon2id hashes (argon2-cffi). A session token is shown to the
client once and stored only as its SHA-256: the `tokens` document's `_id` is the
hash, so resolving a token is one primary-key lookup and a copy of the store
holds nothing that logs anyone in.

An agent sees the inboxes given to it directly or through one of its teams; a
supervisor and an admin see every inbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hub.model import utcnow
from hub.store import Store, find_by_ids, new_id

log = logging.getLogger("hub.accounts")

Role = Literal["admin", "supervisor", "agent"]
ROLES: tuple[Role, ...] = ("admin", "supervisor", "agent")
RANK: dict[str, int] = {"agent": 0, "supervisor": 1, "admin": 2}

SESSION_TTL = timedelta(hours=12)
MIN_PASSWORD = 8


class UnknownTeams(ValueError):
    """An agent given teams that do not exist; the message names them."""


@dataclass(frozen=True)
class AgentChange:
    """What to change in an agent; a field left None is left as it is. `inboxes`
    are names the caller has checked; `teams` are checked here."""

    name: str | None = None
    role: str | None = None
    active: bool | None = None
    inboxes: list[str] | None = None
    teams: list[str] | None = None
    password: str | None = None


class AccountError(ValueError):
    """A request about accounts that cannot be done (duplicate e-mail, bad role)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_agent_email(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise AccountError(f"not an e-mail address: {raw!r}")
    return email


@dataclass
class Passwords:
    """argon2 hashing off the event loop (each hash costs tens of milliseconds)."""

    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    _dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; with no stored hash, spend the same
        time on a dummy one so a response's timing does not tell who exists."""
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_hex(16))
            stored = self._dummy
            password = password + "\x00never"
        try:
            return await asyncio.to_thread(self.hasher.verify, stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass
class Session:
    """A resolved session: the token's stored document and its agent."""

    token_id: str  # the SHA-256 of the token
    sid: str  # a public handle for the session (events name it, never the hash)
    agent: dict[str, Any]
    csrf_hash: str | None
    via: str  # "bearer" or "cookie"
    inboxes: frozenset[str] | None  # None: every inbox

    @property
    def agent_id(self) -> str:
        return str(self.agent["_id"])

    @property
    def role(self) -> str:
        return str(self.agent.get("role", "agent"))

    def may(self, role: str) -> bool:
        return RANK.get(self.role, -1) >= RANK[role]

    def sees(self, inbox: str | None) -> bool:
        return self.inboxes is None or (inbox is not None and inbox in self.inboxes)


@dataclass
class LoginLimiter:
    """Failed logins, counted in this process's memory, per account and per address.

    After `per_account` failures within `window` seconds an account is refused
    for `lockout` seconds (even with the right password); an address gets
    `per_address` failures in the window. A restart forgets the counts; a
    deployment of several processes counts in each (a known limit, said in the
    issue note): the store-backed version is a follow-up.
    """

    per_account: int = 5
    per_address: int = 20
    window: float = 900.0
    lockout: float = 900.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def _keys(self, email: str, address: str) -> list[tuple[str, int]]:
        return [(f"account:{email}", self.per_account), (f"address:{address}", self.per_address)]

    def blocked(self, email: str, address: str) -> float:
        """Seconds until a login for `email` from `address` may be tried; 0 if now."""
        now = time.monotonic()
        wait = 0.0
        for key, _ in self._keys(email, address):
            until = self._locked_until.get(key, 0.0)
            if until > now:
                wait = max(wait, until - now)
            elif key in self._locked_until:
                del self._locked_until[key]
        return wait

    def failed(self, email: str, address: str) -> None:
        now = time.monotonic()
        for key, limit in self._keys(email, address):
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) >= limit:
                self._locked_until[key] = now + self.lockout
                times.clear()
        if len(self._failures) > 100_000:  # a flood of made-up accounts: drop the oldest
            for key in list(self._failures)[:50_000]:
                del self._failures[key]

    def succeeded(self, email: str) -> None:
        self._failures.pop(f"account:{email}", None)


@dataclass
class Accounts:
    """Agents, teams and sessions in the store."""

    store: Store
    passwords: Passwords = field(default_factory=Passwords)
    session_ttl: timedelta = SESSION_TTL

    # -- agents ----------------------------------------------------------------------

    async def find_by_email(self, email: str) -> dict[str, Any] | None:
        return await self.store.agents.find_one({"email": email})

    async def create_agent(
        self,
        *,
        email: str,
        name: str,
        role: str,
        password: str,
        inboxes: list[str] | None = None,
        teams: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create an agent; AccountError when the e-mail is taken or a value is bad.

        The e-mail is checked then inserted: agents are created by admins, one at a
        time, so the unindexed race is accepted rather than a unique index.
        """
        email = normalize_agent_email(email)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
        if not name.strip():
            raise AccountError("the name is empty")
        if await self.find_by_email(email) is not None:
            raise AccountError(f"an agent with e-mail {email} exists")
        doc = {
            "_id": new_id(),
            "email": email,
            "name": name.strip(),
            "role": role,
            "password_hash": await self.passwords.hash(password),
            "inboxes": list(dict.fromkeys(inboxes or [])),
            "teams": list(dict.fromkeys(teams or [])),
            "active": True,
            "created_at": utcnow(),
        }
        await self.store.agents.insert_one(doc)
        log.info("agent created", extra={"agent_id": doc["_id"], "role": role})
        return doc

    async def agents(self) -> list[dict[str, Any]]:
        """Every agent (at most 1000), by e-mail."""
        return await self.store.agents.find({}).sort("email", 1).to_list(1000)

    async def agent(self, agent_id: str) -> dict[str, Any] | None:
        return await self.store.agents.find_one({"_id": agent_id})

    async def known_teams(self, teams: list[str]) -> list[str]:
        """`teams` without repeats; `UnknownTeams` if one of them does not exist."""
        found = await find_by_ids(self.store.teams, list(dict.fromkeys(teams)))
        missing = [t for t in teams if t not in found]
        if missing:
            raise UnknownTeams(f"teams: no team {', '.join(missing)}")
        return list(dict.fromkeys(teams))

    async def update_agent(
        self, agent: dict[str, Any], change: AgentChange, *, by: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Apply `change` to `agent` and audit it as done `by` an agent. A disabled
        agent or a changed password ends every session of it. Returns the agent
        as it is now, and whether anything changed."""
        agent_id = agent["_id"]
        fields: dict[str, Any] = {}
        for name in ("name", "role", "active", "inboxes"):
            value = getattr(change, name)
            if value is not None:
                fields[name] = value
        if change.teams is not None:
            fields["teams"] = await self.known_teams(change.teams)
        if change.password is not None:
            fields["password_hash"] = await self.passwords.hash(change.password)
        if fields:
            await self.store.agents.update_one({"_id": agent_id}, {"$set": fields})
            if change.active is False or change.password is not None:
                await self.store.tokens.delete_many({"agent_id": agent_id})
            changed = sorted(k for k in fields if k != "password_hash")
            await self.audit(by, "agent.updated", target=agent_id, fields=changed)
        return {**agent, **fields}, bool(fields)

    # -- teams -----------------------------------------------------------------------

    async def teams(self) -> list[dict[str, Any]]:
        """Every team (at most 1000), by name."""
        return await self.store.teams.find({}).sort("name", 1).to_list(1000)

    async def team(self, team_id: str) -> dict[str, Any] | None:
        return await self.store.teams.find_one({"_id": team_id})

    async def create_team(self, name: str, inboxes: list[str], *, by: str | None) -> dict[str, Any]:
        """A new team seeing `inboxes` (names the caller has checked), audited."""
        doc = {"_id": new_id(), "name": name, "inboxes": inboxes, "created_at": utcnow()}
        await self.store.teams.insert_one(doc)
        await self.audit(by, "team.created", target=doc["_id"])
        return doc

    async def update_team(
        self,
        team: dict[str, Any],
        *,
        name: str | None = None,
        inboxes: list[str] | None = None,
        by: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """Rename a team and/or change its inboxes, audited; returns it as it is
        now, and whether anything changed."""
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = name
        if inboxes is not None:
            fields["inboxes"] = inboxes
        if fields:
            await self.store.teams.update_one({"_id": team["_id"]}, {"$set": fields})
            await self.audit(by, "team.updated", target=team["_id"])
        return {**team, **fields}, bool(fields)

    async def ensure_first_admin(self, email: str, password: str) -> dict[str, Any] | None:
        """Create an admin from `email`/`password` when no agent exists yet."""
        if await self.store.agents.find_one({}, {"_id": 1}) is not None:
            return None
        return await self.create_agent(email=email, name="Admin", role="admin", password=password)

    async def visible_inboxes(self, agent: dict[str, Any]) -> frozenset[str] | None:
        """The inboxes `agent` may see; None when it sees every inbox."""
        if RANK.get(str(agent.get("role")), -1) >= RANK["supervisor"]:
            return None
        inboxes = set(agent.get("inboxes") or [])
        team_ids = list(agent.get("teams") or [])
        if team_ids:
            for team in (await find_by_ids(self.store.teams, team_ids)).values():
                inboxes.update(team.get("inboxes") or [])
        return frozenset(inboxes)

    # -- sessions --------------------------------------------------------------------

    async def login(self, email: str, password: str) -> dict[str, Any] | None:
        """The agent whose e-mail and password these are (and active), or None."""
        agent = await self.find_by_email(email)
        stored = agent.get("password_hash") if agent else None
        ok = await self.passwords.verify(stored, password)
        if not ok or agent is None or not agent.get("active", True):
            return None
        return agent

    async def open_session(self, agent: dict[str, Any]) -> tuple[str, str, str]:
        """Store a new session for `agent`; return its token, CSRF token and sid.
        Only their hashes are stored."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        sid = secrets.token_hex(8)
        now = utcnow()
        await self.store.tokens.delete_many({"agent_id": agent["_id"], "expires_at": {"$lt": now}})
        await self.store.tokens.insert_one(
            {
                "_id": token_hash(token),
                "sid": sid,
                "agent_id": agent["_id"],
                "csrf_hash": token_hash(csrf),
                "created_at": now,
                "expires_at": now + self.session_ttl,
            }
        )
        return token, csrf, sid

    async def resolve(self, token: str, via: str) -> Session | None:
        """The live session of `token`, or None (unknown, expired, agent disabled)."""
        if not token or len(token) > 256:
            return None
        key = token_hash(token)
        doc = await self.store.tokens.find_one({"_id": key})
        if doc is None:
            return None
        expires = doc.get("expires_at")
        if not isinstance(expires, datetime) or expires <= utcnow():
            return None
        agent = await self.store.agents.find_one({"_id": doc["agent_id"]})
        if agent is None or not agent.get("active", True):
            return None
        return Session(
            token_id=key,
            sid=str(doc.get("sid", "")),
            agent=agent,
            csrf_hash=doc.get("csrf_hash"),
            via=via,
            inboxes=await self.visible_inboxes(agent),
        )

    async def close_session(self, session: Session) -> None:
        await self.store.tokens.delete_one({"_id": session.token_id})

    async def audit(self, agent_id: str | None, action: str, **detail: Any) -> None:
        """Record who did what (admin actions, merges, logins)."""
        await self.store.audit.insert_one(
            {"_id": new_id(), "at": utcnow(), "agent_id": agent_id, "action": action, **detail}
        )


def agent_view(agent: dict[str, Any]) -> dict[str, Any]:
    """The public shape of an agent (never its password hash)."""
    return {
        "id": str(agent["_id"]),
        "email": agent.get("email"),
        "name": agent.get("name"),
        "role": agent.get("role"),
        "inboxes": list(agent.get("inboxes") or []),
        "teams": list(agent.get("teams") or []),
        "active": bool(agent.get("active", True)),
    }


def team_view(team: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(team["_id"]),
        "name": team.get("name"),
        "inboxes": list(team.get("inboxes") or []),
    }
