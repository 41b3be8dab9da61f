"""Pages of a list, newest first, with opaque cursors (time, id) between them."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any


class BadCursor(ValueError):
    """A cursor the API did not give."""


def encode_cursor(at: datetime | None, ident: str) -> str:
    """An opaque cursor for the position (time, id) in a list."""
    stamp = at.astimezone(UTC).isoformat() if isinstance(at, datetime) else None
    raw = json.dumps([stamp, ident], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime | None, str]:
    """The position (time in UTC, id) a cursor of `encode_cursor` names; BadCursor
    for anything else. Its time has a zone (the API's have UTC) and is one that
    exists in UTC: an offset can put a time near year 1 or 9999 past what Python
    and the store can hold once converted, which every comparison does."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(ident, str) or not isinstance(stamp, str | None):
            raise ValueError("bad cursor")
        at = datetime.fromisoformat(stamp) if stamp is not None else None
        if at is not None:
            if at.utcoffset() is None:
                raise ValueError("no time zone")
            at = at.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise BadCursor("cursor: not a cursor this API gave") from None
    return at, ident


async def page_by_time(
    collection: Any, clauses: list[dict[str, Any]], time_field: str, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `collection` matching every clause, newest `time_field` first
    (ties by `_id`), after `cursor`; and the cursor of the next page, if any."""
    position = after_cursor(time_field, cursor)
    clauses = [*clauses, position] if position else clauses
    filt: dict[str, Any] = {}
    if len(clauses) == 1:
        filt = clauses[0]
    elif clauses:
        filt = {"$and": clauses}
    docs = (
        await collection.find(filt).sort([(time_field, -1), ("_id", -1)]).limit(limit + 1).to_list()
    )
    more = len(docs) > limit
    docs = docs[:limit]
    next_cursor = None
    if more and docs:
        next_cursor = encode_cursor(docs[-1].get(time_field), str(docs[-1]["_id"]))
    return docs, next_cursor


def after_cursor(time_field: str, cursor: str | None) -> dict[str, Any]:
    """The filter for items after `cursor` in (time, _id) descending order."""
    if cursor is None:
        return {}
    at, ident = decode_cursor(cursor)
    if at is None:
        return {"$or": [{time_field: None, "_id": {"$lt": ident}}]}
    return {
        "$or": [
            {time_field: {"$lt": at}},
            {time_field: at, "_id": {"$lt": ident}},
            {time_field: None},  # no time sorts last (descending)
        ]
    }
