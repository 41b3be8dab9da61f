"""Presence: which agents have an inbox WebSocket open, in any hub process.

Each open `/api/ws` socket keeps one document in `presence` (`agent_id`,
`expires_at`), renewed while it is open (`RENEW_SECONDS`) and deleted when it
closes. A process that dies leaves documents that expire after `TTL_SECONDS`, so
an agent whose hub went away stops getting conversations within that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hub.model import utcnow
from hub.store import Store, new_id

RENEW_SECONDS = 15.0
TTL_SECONDS = 45.0


async def opened(store: Store, agent_id: str, instance_id: str) -> str:
    """Record an open socket of `agent_id`; returns its presence id."""
    presence_id = f"{instance_id}-{new_id()}"
    now = utcnow()
    await store.presence.insert_one(
        {
            "_id": presence_id,
            "agent_id": agent_id,
            "instance": instance_id,
            "opened_at": now,
            "expires_at": now + timedelta(seconds=TTL_SECONDS),
        }
    )
    return presence_id


async def renew(store: Store, presence_id: str, agent_id: str) -> None:
    """Keep the socket's presence alive another TTL (recreated if it was pruned)."""
    now = utcnow()
    await store.presence.update_one(
        {"_id": presence_id},
        {
            "$set": {"agent_id": agent_id, "expires_at": now + timedelta(seconds=TTL_SECONDS)},
            "$setOnInsert": {"opened_at": now},
        },
        upsert=True,
    )


async def closed(store: Store, presence_id: str) -> None:
    await store.presence.delete_one({"_id": presence_id})
    # Expired documents of processes that died go with someone's close.
    await store.presence.delete_many({"expires_at": {"$lt": utcnow()}})


async def connected(store: Store, agent_ids: Sequence[str]) -> set[str]:
    """Which of `agent_ids` have a live socket now."""
    if not agent_ids:
        return set()
    now = utcnow()
    found: set[str] = set()
    ids = list(agent_ids)
    for start in range(0, len(ids), 400):
        async for doc in store.presence.find(
            {"agent_id": {"$in": ids[start : start + 400]}, "expires_at": {"$gt": now}},
            {"agent_id": 1},
        ):
            found.add(str(doc["agent_id"]))
    return found
