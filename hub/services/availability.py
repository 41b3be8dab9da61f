"""Agents' availability (`online`, `busy`, `offline`; an agent starts `online`).

Round-robin assignment (hub.services.assignment) gives conversations only to
agents who are `online`; `busy` and `offline` agents keep what they have.
"""

from __future__ import annotations

from typing import Any

from hub.store import Store

AVAILABILITY = ("online", "busy", "offline")


def availability_of(agent: dict[str, Any]) -> str:
    value = agent.get("availability")
    return value if value in AVAILABILITY else "online"


async def set_availability(store: Store, agent_id: str, availability: str) -> bool:
    """Set the agent's availability; False when there is no such agent."""
    if availability not in AVAILABILITY:
        raise ValueError(f"availability: one of {', '.join(AVAILABILITY)}")
    done = await store.agents.update_one(
        {"_id": agent_id}, {"$set": {"availability": availability}}
    )
    return bool(done.matched_count)
