"""Leases: one hub process at a time does a piece of work (sends for an inbox,
fires a scheduled job). A lease is a document in `leases` with its owner and the
time it runs out; the owner renews it, and another process takes it over once it
has run out (its holder died or stopped)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo.errors import DuplicateKeyError, PyMongoError

from hub.model import utcnow
from hub.store import Store


async def take_lease(
    store: Store, key: str, owner: str, seconds: float, *, now: datetime | None = None
) -> bool:
    """Take or renew the lease `key` for `seconds`; False while another owner holds it."""
    now = now or utcnow()
    try:
        await store.leases.find_one_and_update(
            {"_id": key, "$or": [{"owner": owner}, {"until": {"$lt": now}}]},
            {"$set": {"owner": owner, "until": now + timedelta(seconds=seconds)}},
            upsert=True,
        )
    except DuplicateKeyError:
        return False  # held by another owner: the upsert collided with its document
    return True


async def release_leases(store: Store, keys: Sequence[str], owner: str) -> None:
    """Hand leases back at once (a clean stop), without waiting for them to run out."""
    if not keys:
        return
    with contextlib.suppress(PyMongoError):
        await store.leases.delete_many({"_id": {"$in": list(keys)}, "owner": owner})
