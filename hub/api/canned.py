"""Canned responses: short texts agents insert with /shortcut; admins manage them.

Thin handlers: parse, authorise, call `hub.services.canned`, shape the answer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.schemas import Input, OkOut, Output
from hub.services import canned
from hub.store import Store

table = RouteTable()

SHORTCUT = r"^[a-z0-9_-]{1,32}$"
SHORTCUT_RE = re.compile(r"[a-z0-9_-]{1,32}")

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


@table.route(
    "GET",
    "/api/canned",
    summary="Canned responses, by shortcut",
    response=CannedList,
)
async def list_canned(call: Call) -> dict[str, Any]:
    docs = await canned.every(_store(call))
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
    doc = await canned.create(_store(call), body.shortcut, body.text)
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
    shortcut = _shortcut_param(call)
    doc = await canned.get(_store(call), shortcut)
    if doc is None:
        raise not_found("canned response")
    if "shortcut" in body.model_fields_set and body.shortcut is None:
        raise ApiError(400, "invalid", "shortcut: cannot be null")
    if "text" in body.model_fields_set and body.text is None:
        raise ApiError(400, "invalid", "text: cannot be null")
    updated = await canned.update(_store(call), doc, shortcut=body.shortcut, text=body.text)
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
    if not await canned.delete(_store(call), shortcut):
        raise not_found("canned response")
    await call.accounts.audit(call.me.agent_id, "canned.deleted", target=shortcut)
    return {"ok": True}
