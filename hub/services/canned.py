"""Canned responses: short texts agents insert with /shortcut.

The shortcut is the document's `_id`: unique by construction, and every lookup is
a primary-key probe. There are few of them (tens), so the list is read whole.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from hub.model import utcnow
from hub.store import Store

MAX_CANNED = 1000


class ShortcutTaken(ValueError):
    """Another canned response has this shortcut."""

    def __init__(self, shortcut: str) -> None:
        super().__init__(f"a canned response /{shortcut} exists")
        self.shortcut = shortcut


async def every(store: Store) -> list[dict[str, Any]]:
    """Every canned response (at most `MAX_CANNED`), by shortcut."""
    docs = await store.canned.find({}).limit(MAX_CANNED).to_list()
    docs.sort(key=lambda d: str(d["_id"]))
    return docs


async def get(store: Store, shortcut: str) -> dict[str, Any] | None:
    return await store.canned.find_one({"_id": shortcut})


async def create(store: Store, shortcut: str, text: str) -> dict[str, Any]:
    """Add a canned response; `ShortcutTaken` if the shortcut is in use."""
    now = utcnow()
    doc = {"_id": shortcut, "text": text, "created_at": now, "updated_at": now}
    try:
        await store.canned.insert_one(doc)
    except DuplicateKeyError:
        raise ShortcutTaken(shortcut) from None
    return doc


async def update(
    store: Store, doc: dict[str, Any], *, shortcut: str | None, text: str | None
) -> dict[str, Any]:
    """Change the text of the canned response `doc` and/or rename its shortcut
    (`ShortcutTaken` if the new one is in use); returns it as it is now."""
    old = str(doc["_id"])
    updated = {**doc, "updated_at": utcnow()}
    if text is not None:
        updated["text"] = text
    if shortcut is not None and shortcut != old:
        # A rename is a new document under the new key, then the old one goes.
        updated["_id"] = shortcut
        try:
            await store.canned.insert_one(updated)
        except DuplicateKeyError:
            raise ShortcutTaken(shortcut) from None
        await store.canned.delete_one({"_id": old})
    else:
        await store.canned.update_one(
            {"_id": old},
            {"$set": {"text": updated["text"], "updated_at": updated["updated_at"]}},
        )
    return updated


async def delete(store: Store, shortcut: str) -> bool:
    """Remove a canned response; False if there was none."""
    result = await store.canned.delete_one({"_id": shortcut})
    return bool(result.deleted_count)
