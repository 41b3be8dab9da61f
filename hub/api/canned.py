"""Canned responses: short texts agents insert with /shortcut; admins manage them.

The shortcut is the document's `_id`: unique by construction, and every lookup is
a primary-key probe. There are few of them (tens), so the list is read whole.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field
from pymongo.errors import DuplicateKeyError

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.schemas import Input, OkOut, Output
from hub.model import utcnow
from hub.store import Store

table = RouteTable()

SHORTCUT = r"^[a-z0-9_-]{1,32}$"
SHORTCUT_RE = re.compile(r"[a-z0-9_-]{1,32}")
MAX_CANNED = 1000

Shortcut = Annotated[str, Field(pattern=SHORTCUT, description="1-32 of a-z, 0-9, _ and -")]
Text = Annotated[str, Field(min_length=1, max_length=5000)]


class CannedIn(Input):
    shortcut: Shortcut
    text: Text


class CannedPatch(Input):
    shortcut: Shortcut | None = None
    text: Text | None = None


class CannedOut(Output):
    id: str
    shortcut: str
    text: str


class CannedList(Output):
    items: list[CannedOut]
    next_cursor: str | None


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


def canned_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(doc["_id"]), "shortcut": str(doc["_id"]), "text": doc.get("text") or ""}


def _shortcut_param(call: Call) -> str:
    value = call.request.match_info["id"]
    if not SHORTCUT_RE.fullmatch(value):
        raise not_found("canned response")
    return value


def _taken(shortcut: str) -> ApiError:
    return ApiError(409, "shortcut_taken", f"a canned response /{shortcut} exists")


@table.route(
    "GET",
    "/api/canned",
    summary="Canned responses, by shortcut",
    response=CannedList,
)
async def list_canned(call: Call) -> dict[str, Any]:
    docs = await _store(call).canned.find({}).limit(MAX_CANNED).to_list()
    docs.sort(key=lambda d: str(d["_id"]))
    return {"items": [canned_view(d) for d in docs], "next_cursor": None}


@table.route(
    "POST",
    "/api/canned",
    summary="Add a canned response",
    role="admin",
    body=CannedIn,
    response=CannedOut,
    status=201,
)
async def create_canned(call: Call) -> dict[str, Any]:
    body: CannedIn = call.body
    now = utcnow()
    doc = {"_id": body.shortcut, "text": body.text, "created_at": now, "updated_at": now}
    try:
        await _store(call).canned.insert_one(doc)
    except DuplicateKeyError:
        raise _taken(body.shortcut) from None
    await call.accounts.audit(call.me.agent_id, "canned.created", target=body.shortcut)
    return canned_view(doc)


@table.route(
    "PATCH",
    "/api/canned/{id}",
    summary="Edit a canned response's text or rename its shortcut",
    role="admin",
    body=CannedPatch,
    response=CannedOut,
)
async def patch_canned(call: Call) -> dict[str, Any]:
    body: CannedPatch = call.body
    store = _store(call)
    shortcut = _shortcut_param(call)
    doc = await store.canned.find_one({"_id": shortcut})
    if doc is None:
        raise not_found("canned response")
    if "shortcut" in body.model_fields_set and body.shortcut is None:
        raise ApiError(400, "invalid", "shortcut: cannot be null")
    if "text" in body.model_fields_set and body.text is None:
        raise ApiError(400, "invalid", "text: cannot be null")
    updated = {**doc, "updated_at": utcnow()}
    if body.text is not None:
        updated["text"] = body.text
    if body.shortcut is not None and body.shortcut != shortcut:
        # A rename is a new document under the new key, then the old one goes.
        updated["_id"] = body.shortcut
        try:
            await store.canned.insert_one(updated)
        except DuplicateKeyError:
            raise _taken(body.shortcut) from None
        await store.canned.delete_one({"_id": shortcut})
    else:
        await store.canned.update_one(
            {"_id": shortcut},
            {"$set": {"text": updated["text"], "updated_at": updated["updated_at"]}},
        )
    await call.accounts.audit(
        call.me.agent_id, "canned.updated", target=str(updated["_id"]), previous=shortcut
    )
    return canned_view(updated)


@table.route(
    "DELETE",
    "/api/canned/{id}",
    summary="Remove a canned response",
    role="admin",
    response=OkOut,
)
async def delete_canned(call: Call) -> dict[str, Any]:
    shortcut = _shortcut_param(call)
    result = await _store(call).canned.delete_one({"_id": shortcut})
    if result.deleted_count == 0:
        raise not_found("canned response")
    await call.accounts.audit(call.me.agent_id, "canned.deleted", target=shortcut)
    return {"ok": True}
