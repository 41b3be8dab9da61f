"""The audit log: every change an agent makes, and every login, with who, what,
when and from where.

One document per action in the `audit` collection (indexed by time and by
agent): `{_id, at, agent_id, action, target, address, ...detail}`. `address` is
the client's IP as the API saw it (behind `server.trusted_proxies`, the
forwarded one; `hub.api.addressing`), taken from the request the action came
with (`ORIGIN`, set by the API for each request), so a service records without
being handed it. Admins read it through `GET /api/audit` and the inbox's Audit
page (`page`).

Actions (`ACTIONS`): `login`, `login.failed`, `login.lock_cleared`, `logout`;
`message.replied`, `note.added`; `conversation.status`, `conversation.assigned`,
`conversation.labels`; `contact.created`, `contact.updated`, `contact.merged`;
`contacts.imported`, `contacts.exported`; `agent.created`, `agent.updated`,
`team.created`, `team.updated`; `campaign.created`, `campaign.start`,
`campaign.pause`, `campaign.cancel`; `canned.created`, `canned.updated`,
`canned.deleted`; `greetings.updated`.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from typing import Any

from hub.model import utcnow
from hub.services.paging import page_by_time
from hub.shapes import iso
from hub.store import Store, find_by_ids, new_id

# The client address of the request being served (None outside a request: a
# command, a job).
ORIGIN: ContextVar[str | None] = ContextVar("audit_origin", default=None)

ACTIONS = (
    "login",
    "login.failed",
    "login.lock_cleared",
    "logout",
    "message.replied",
    "note.added",
    "conversation.status",
    "conversation.assigned",
    "conversation.labels",
    "contact.created",
    "contact.updated",
    "contact.merged",
    "contacts.imported",
    "contacts.exported",
    "agent.created",
    "agent.updated",
    "team.created",
    "team.updated",
    "campaign.created",
    "campaign.start",
    "campaign.pause",
    "campaign.cancel",
    "canned.created",
    "canned.updated",
    "canned.deleted",
    "greetings.updated",
)
_FIELDS = ("_id", "at", "agent_id", "action", "target", "address")


async def record(
    store: Store, agent_id: str | None, action: str, *, target: Any = None, **detail: Any
) -> None:
    """Record that `agent_id` (None: not logged in) did `action` to `target`."""
    address = detail.pop("address", None) or ORIGIN.get()
    await store.audit.insert_one(
        {
            "_id": new_id(),
            "at": utcnow(),
            "agent_id": agent_id,
            "action": action,
            "target": None if target is None else str(target),
            "address": address,
            **{k: v for k, v in detail.items() if k not in _FIELDS},
        }
    )


def entry_view(doc: dict[str, Any], agents: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    agent_id = doc.get("agent_id")
    agent = agents.get(agent_id) if agent_id is not None else None
    return {
        "id": str(doc["_id"]),
        "at": iso(doc.get("at")),
        "agent": None
        if agent_id is None
        else {
            "id": str(agent_id),
            "name": (agent or {}).get("name"),
            "email": (agent or {}).get("email"),
        },
        "action": doc.get("action"),
        "target": doc.get("target"),
        "address": doc.get("address"),
        "detail": {k: _plain(v) for k, v in doc.items() if k not in _FIELDS},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


async def page(
    store: Store,
    *,
    agent: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the log, newest first: by `agent` (an id; "none" for actions
    of nobody logged in), `action` (exact, or a prefix ending in "."), from
    `since` (inclusive) to `until` (exclusive)."""
    clauses: list[dict[str, Any]] = [{"action": {"$type": "string"}}]  # not a job's notes
    if agent is not None:
        clauses.append({"agent_id": None if agent == "none" else agent})
    if action is not None:
        if action.endswith("."):
            clauses.append({"action": {"$in": [a for a in ACTIONS if a.startswith(action)]}})
        else:
            clauses.append({"action": action})
    if since is not None:
        clauses.append({"at": {"$gte": since}})
    if until is not None:
        clauses.append({"at": {"$lt": until}})
    docs, next_cursor = await page_by_time(store.audit, clauses, "at", cursor, limit)
    agents = await find_by_ids(
        store.agents, [d["agent_id"] for d in docs if d.get("agent_id") is not None]
    )
    return [entry_view(d, agents) for d in docs], next_cursor
