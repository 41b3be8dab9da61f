"""Notices: realtime events addressed to some agents, not to everyone who sees
the inbox (`reminder.due`, `sla.breached`, `snooze.ended`).

The event's data carries its addressees under `to` (`agents`: ids, `roles`:
role names); the realtime feed sends it to a session that is addressed and sees
the conversation's inbox, without `to`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.model import Event

NOTICES = frozenset({"reminder.due", "sla.breached", "snooze.ended"})
SUPERVISORS = ("supervisor", "admin")


def notice(
    event_type: str,
    data: dict[str, Any],
    *,
    agents: Iterable[str] = (),
    roles: Iterable[str] = (),
) -> Event:
    """An event for `agents` and every agent of `roles`."""
    return Event(event_type, {**data, "to": {"agents": list(agents), "roles": list(roles)}})


def addressed_to(data: dict[str, Any], agent_id: str, role: str) -> bool:
    """Whether a notice's data names this agent or its role."""
    to = data.get("to")
    if not isinstance(to, dict):
        return False
    agents = to.get("agents") or []
    roles = to.get("roles") or []
    return (isinstance(agents, list) and agent_id in agents) or (
        isinstance(roles, list) and role in roles
    )


def without_address(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "to"}
