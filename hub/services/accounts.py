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
import ipaddress
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hub.model import utcnow
from hub.services.audit import record as audit_record
from hub.store import Store, find_by_ids, new_id

log = logging.getLogger("hub.accounts")

Role = Literal["admin", "supervisor", "agent"]
ROLES: tuple[Role, ...] = ("admin", "supervisor", "agent")
RANK: dict[str, int] = {"agent": 0, "supervisor": 1, "admin": 2}

SESSION_TTL = timedelta(hours=12)
MIN_PASSWORD = 8
DEVICE_TTL = timedelta(days=90)  # how long a browser's device cookie lasts
MAX_DEVICES = 10  # known browsers kept per agent, the most recent


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
    # Open conversations at most (round-robin assignment); None: no limit. Only
    # changed when `capacity_given`.
    capacity: int | None = None
    capacity_given: bool = False


class AccountError(ValueError):
    """A request about accounts that cannot be done (duplicate e-mail, bad role)."""


class LastAdmin(AccountError):
    """A change that would leave no active admin (demoting or disabling the last)."""


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


class TooManyAttempts(Exception):
    """A login refused before its password is checked; `wait` is the seconds
    until it may be tried again."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"too many failed logins; try again in {math.ceil(wait)} s")
        self.wait = wait


LockKind = Literal["account", "address", "device"]


@dataclass
class _Counter:
    """One limited key: its recent failures, the attempts being checked now, and
    how long it is backed off."""

    kind: LockKind
    subject: str
    limit: int
    failures: deque[float] = field(default_factory=deque)
    checking: int = 0  # attempts counted, their password not yet checked
    until: float = 0.0  # refused until then (the limiter's clock)
    strikes: int = 0  # backoffs so far; the next one lasts backoff * 2**strikes


@dataclass(frozen=True)
class LoginAttempt:
    """An attempt counted by `LoginLimiter.start`, to be ended by `finish`."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class LockView:
    """A limited key as admins see it: `wait` seconds left of its backoff (0: not
    backed off, only failures counted)."""

    id: str
    kind: LockKind
    subject: str
    failures: int
    wait: float


def lock_id(key: str) -> str:
    """The public handle of a limited key (a key holds an e-mail or an address)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def address_subject(address: str) -> str:
    """What the limiter counts an address as: an IPv4 address, an IPv6 address's
    /64 (one host usually has a whole /64 to pick from), or the text as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class LoginLimiter:
    """Failed logins, counted in this process's memory, per account, per address
    and per known browser, with a backoff rather than a lock-out.

    - An attempt is counted when it starts, before its password is checked
      (`start` checks and counts with no await in between, so concurrent
      attempts in one process cannot all slip under the limit), and ended by
      `finish` with whether the password was right.
    - An attempt from a browser not known for the account counts against the
      account (`per_account` failures in `window` seconds) and its address
      (`per_address`). An attempt from a known browser (one that logged in to
      this account before, `Accounts.known_device`) counts only against that
      browser (`per_account`): someone guessing elsewhere, or sharing a proxy's
      or an office's address, does not keep its agent out, and the browser's
      own wrong passwords are limited all the same.
    - A key that reaches its limit is backed off: refused for `backoff`
      seconds, twice as long each further time, at most `lockout` seconds;
      after that the right password goes through again. A right password
      clears the account's (or the browser's) failures; an address's failures
      only age out. Nothing a client sends locks anything for good, and an
      admin sees every key (`locks`) and clears one (`clear`).

    Known limits: a restart forgets the counts, and each process of a
    deployment counts (and shows admins) its own, so N processes allow up to N
    times the attempts; the store-backed version is a follow-up.
    """

    per_account: int = 5
    per_address: int = 20
    window: float = 900.0
    backoff: float = 60.0
    lockout: float = 900.0  # the longest backoff
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _counters: dict[str, _Counter] = field(default_factory=dict)

    def _specs(self, email: str, address: str, device: str | None) -> list[_Counter]:
        if device is not None:
            return [_Counter("device", f"{email} (browser {device[:12]})", self.per_account)]
        return [
            _Counter("account", email, self.per_account),
            _Counter("address", address_subject(address), self.per_address),
        ]

    @staticmethod
    def _key(counter: _Counter) -> str:
        return f"{counter.kind}:{counter.subject}"

    def _age(self, counter: _Counter, now: float) -> None:
        while counter.failures and now - counter.failures[0] > self.window:
            counter.failures.popleft()
        if counter.strikes and counter.until + self.window < now:
            counter.strikes = 0  # a window with no backoff: start again from the shortest

    def _idle(self, counter: _Counter, now: float) -> bool:
        self._age(counter, now)
        return (
            not (counter.checking or counter.failures or counter.strikes) and counter.until <= now
        )

    def start(self, email: str, address: str, device: str | None = None) -> LoginAttempt:
        """Count an attempt to log in as `email` from `address` (and, when the
        browser is known for this account, the hash of its `device` cookie);
        TooManyAttempts if a key it counts against is backed off or has as many
        failures and attempts under way as its limit."""
        now = self.clock()
        specs = self._specs(email, address, device)
        wait = 0.0
        for spec in specs:
            counter = self._counters.get(self._key(spec))
            if counter is None:
                continue
            self._age(counter, now)
            counter.limit = spec.limit  # the limits may have been changed
            if counter.until > now:
                wait = max(wait, counter.until - now)
            elif len(counter.failures) + counter.checking >= counter.limit:
                wait = max(wait, 1.0)  # the attempts under way decide
        if wait > 0:
            raise TooManyAttempts(wait)
        keys = []
        for spec in specs:
            key = self._key(spec)
            counter = self._counters.get(key)
            if counter is None:
                self._prune(now)
                counter = self._counters[key] = spec
            counter.checking += 1
            keys.append(key)
        return LoginAttempt(tuple(keys))

    def finish(self, attempt: LoginAttempt, ok: bool) -> None:
        """End a started attempt: `ok` when the password was right (and the agent
        active); otherwise it is a failure, and a key at its limit backs off."""
        now = self.clock()
        for key in attempt.keys:
            counter = self._counters.get(key)
            if counter is None:  # pruned meanwhile
                continue
            counter.checking = max(0, counter.checking - 1)
            if ok:
                if counter.kind != "address":
                    counter.failures.clear()
                    counter.strikes = 0
                if self._idle(counter, now):
                    del self._counters[key]
                continue
            self._age(counter, now)
            counter.failures.append(now)
            if len(counter.failures) >= counter.limit:
                counter.until = now + min(
                    self.backoff * 2 ** min(counter.strikes, 30), self.lockout
                )
                counter.strikes += 1
                counter.failures.clear()

    def locks(self) -> list[LockView]:
        """Every key backed off or with recent failures, the longest wait first."""
        now = self.clock()
        views = []
        for key, counter in self._counters.items():
            if self._idle(counter, now):
                continue
            wait = max(0.0, counter.until - now)
            if wait == 0 and not counter.failures:
                continue
            views.append(
                LockView(lock_id(key), counter.kind, counter.subject, len(counter.failures), wait)
            )
        views.sort(key=lambda v: (-v.wait, -v.failures, v.kind, v.subject))
        return views

    def clear(self, handle: str) -> LockView | None:
        """Forget the failures and backoff of the key whose `lock_id` is `handle`;
        the key as it was, or None if no key has it."""
        now = self.clock()
        for key, counter in self._counters.items():
            if lock_id(key) != handle:
                continue
            if self._idle(counter, now):  # nothing to clear
                del self._counters[key]
                return None
            view = LockView(
                handle,
                counter.kind,
                counter.subject,
                len(counter.failures),
                max(0.0, counter.until - now),
            )
            counter.failures.clear()
            counter.until = 0.0
            counter.strikes = 0
            if not counter.checking:
                del self._counters[key]
            return view
        return None

    def _prune(self, now: float) -> None:
        """Bound the memory a flood of made-up accounts takes: drop the idle keys,
        then the oldest not backed off."""
        if len(self._counters) < self.max_keys:
            return
        for key, counter in list(self._counters.items()):
            if self._idle(counter, now):
                del self._counters[key]
        excess = len(self._counters) - self.max_keys // 2
        for key, counter in list(self._counters.items()):
            if excess <= 0:
                break
            if not counter.checking and counter.until <= now:
                del self._counters[key]
                excess -= 1


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
        if change.capacity_given:
            fields["capacity"] = change.capacity
        if change.password is not None:
            fields["password_hash"] = await self.passwords.hash(change.password)
            fields["devices"] = []  # browsers known with the old password are not
        if _is_active_admin(agent) and not _is_active_admin({**agent, **fields}):
            await self._step_down(agent, fields)
        if fields:
            await self.store.agents.update_one({"_id": agent_id}, {"$set": fields})
            if change.active is False or change.password is not None:
                await self.store.tokens.delete_many({"agent_id": agent_id})
            changed = sorted(k for k in fields if k not in ("password_hash", "devices"))
            await self.audit(by, "agent.updated", target=agent_id, fields=changed)
        return {**agent, **fields}, bool(fields)

    async def _active_admins(self) -> int:
        return await self.store.agents.count_documents({"role": "admin", "active": {"$ne": False}})

    async def _step_down(self, agent: dict[str, Any], fields: dict[str, Any]) -> None:
        """Demote or disable the active admin `agent` (its `role`/`active` from
        `fields`), or LastAdmin if no other active admin would remain.

        Checked before, and again after the change is written, undoing it when
        none remains: of two admins demoting each other at once, the one whose
        change is written last sees the other's and is refused, so the store
        never stays without an active admin (both may be refused)."""
        others = await self.store.agents.count_documents(
            {"role": "admin", "active": {"$ne": False}, "_id": {"$ne": agent["_id"]}}
        )
        if others == 0:
            raise LastAdmin("the last active admin cannot be demoted or disabled")
        step = {k: fields[k] for k in ("role", "active") if k in fields}
        await self.store.agents.update_one({"_id": agent["_id"]}, {"$set": step})
        if await self._active_admins() == 0:
            await self.store.agents.update_one(
                {"_id": agent["_id"]}, {"$set": {"role": "admin", "active": True}}
            )
            raise LastAdmin("the last active admin cannot be demoted or disabled")

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
        return agent if await self.check_password(agent, password) else None

    async def check_password(self, agent: dict[str, Any] | None, password: str) -> bool:
        """Whether `agent` exists, is active and has this password (as long to
        answer when it does not exist)."""
        stored = agent.get("password_hash") if agent else None
        ok = await self.passwords.verify(stored, password)
        return ok and agent is not None and bool(agent.get("active", True))

    # -- known browsers ----------------------------------------------------------------
    #
    # A browser that has logged in to an account is "known" for it, so that the
    # login limits can tell its agent from someone guessing elsewhere: a right
    # password from a known browser passes the account's and the address's
    # backoff (LoginLimiter). On a successful login from a browser not known for
    # the account, the hub makes a new random device token, sets it as the
    # `hub_device` cookie (HttpOnly, SameSite=Strict, sent only to the login
    # route) and keeps its SHA-256 in the agent's `devices` (the latest
    # MAX_DEVICES). A token the browser brings is never adopted, so one planted
    # in a browser becomes known to nothing. The token grants nothing by itself:
    # the password is still needed, and its wrong passwords are limited per
    # browser. A new password forgets the agent's known browsers.

    @staticmethod
    def known_device(agent: dict[str, Any] | None, token: str | None) -> str | None:
        """The hash of the device `token` when it is a known browser of `agent`."""
        if agent is None or not token or len(token) > 100:
            return None
        digest = token_hash(token)
        return digest if digest in (agent.get("devices") or []) else None

    async def remember_device(self, agent: dict[str, Any], token: str | None) -> str:
        """After a successful login: the device token the browser is to keep (the
        one it brought when that is a known browser of `agent`, else a new one),
        recorded as the agent's most recent known browser."""
        if token is None or self.known_device(agent, token) is None:
            token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        devices = [d for d in agent.get("devices") or [] if d != digest]
        devices = [*devices, digest][-MAX_DEVICES:]
        await self.store.agents.update_one({"_id": agent["_id"]}, {"$set": {"devices": devices}})
        return token

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
        """Record who did what, when and from where (`hub.services.audit`)."""
        await audit_record(self.store, agent_id, action, **detail)


def _is_active_admin(agent: dict[str, Any]) -> bool:
    return agent.get("role") == "admin" and bool(agent.get("active", True))


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
        "availability": agent.get("availability") or "online",
        "capacity": agent.get("capacity"),
    }


def team_view(team: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(team["_id"]),
        "name": team.get("name"),
        "inboxes": list(team.get("inboxes") or []),
    }
