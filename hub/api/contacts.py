"""Contacts: search, read, create, edit, merge.

Any agent may list and create contacts. Reading or editing one contact needs
access to one of its conversations' inboxes (a contact with no conversation yet
is everyone's); merging needs the supervisor role, since it cannot be undone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hub.addresses import InvalidIdentity, normalize_email, normalize_phone
from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.schemas import (
    ContactCreate,
    ContactList,
    ContactOut,
    ContactPatch,
    ContactQuery,
    MergeIn,
)
from hub.model import Event, IdentityRef
from hub.services.contacts import MergeError, add_identity, attribute_key, new_contact_doc
from hub.services.paging import decode_cursor, encode_cursor, page_by_time
from hub.shapes import iso
from hub.store import Store, find_by_ids, identity_id, new_id

table = RouteTable()

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PHONE_LIKE = re.compile(r"^[+\d(][\d\s().-]{5,}$")


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


def contact_view(
    doc: dict[str, Any],
    identities: list[dict[str, Any]] | None = None,
    conversations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The public shape of a contact (CONTRACT.md)."""
    view: dict[str, Any] = {
        "id": str(doc["_id"]),
        "name": doc.get("name"),
        "phones": list(doc.get("phones") or []),
        "emails": list(doc.get("emails") or []),
        "telegram": doc.get("telegram"),
        "birthday": doc.get("birthday"),
        "timezone": doc.get("timezone"),
        "locale": doc.get("locale"),
        "labels": list(doc.get("labels") or []),
        "attributes": dict(doc.get("attributes") or {}),
        "opted_out": {k: bool(v) for k, v in (doc.get("opted_out") or {}).items()},
        "identities": [{"kind": i.get("kind"), "value": i.get("value")} for i in identities or []],
        "created_at": iso(doc.get("created_at")),
    }
    if conversations is not None:
        view["conversations"] = [
            {
                "id": str(c["_id"]),
                "inbox": c.get("inbox"),
                "channel": c.get("channel"),
                "status": c.get("status"),
                "last_activity_at": iso(c.get("last_activity_at")),
            }
            for c in conversations
        ]
    return view


async def matching_contact_ids(call: Call, q: str, *, limit: int) -> list[str]:
    """Contacts whose phone or e-mail is `q` (an identity lookup), else whose name,
    phone or e-mail contains it (case-insensitive)."""
    store = _store(call)
    text = q.strip()
    exact: IdentityRef | None = None
    try:
        if "@" in text:
            exact = IdentityRef(kind="email", value=normalize_email(text))
        elif PHONE_LIKE.match(text):
            region = call.hub.settings.identity.default_region
            exact = IdentityRef(kind="phone", value=normalize_phone(text, region))
    except InvalidIdentity:
        exact = None
    if exact is not None:
        owner = await store.identities.find_one(
            {"_id": identity_id(exact.kind, exact.value)}, {"contact_id": 1}
        )
        if owner is not None:
            return [str(owner["contact_id"])]
    pattern = {"$regex": re.escape(text), "$options": "i"}
    docs = (
        await store.contacts.find(
            {"$or": [{"name": pattern}, {"emails": pattern}, {"phones": pattern}]}, {"_id": 1}
        )
        .limit(limit)
        .to_list()
    )
    return [str(d["_id"]) for d in docs]


async def _visible_contact(
    call: Call, contact_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The contact (404) and the conversations of it this agent sees (403 when it
    has conversations and none is in the agent's inboxes)."""
    store = _store(call)
    doc = await store.contacts.find_one({"_id": contact_id})
    if doc is None:
        raise not_found("contact")
    conversations = (
        await store.conversations.find(
            {"contact_id": contact_id},
            {"inbox": 1, "channel": 1, "status": 1, "last_activity_at": 1},
        )
        .limit(200)
        .to_list()
    )
    seen = [c for c in conversations if call.me.sees(c.get("inbox"))]
    if conversations and not seen:
        raise ApiError(403, "forbidden", "this contact talks only to inboxes you do not see")
    seen.sort(key=lambda c: iso(c.get("last_activity_at")) or "", reverse=True)
    return doc, seen


async def _full_view(call: Call, contact_id: str) -> dict[str, Any]:
    store = _store(call)
    doc, conversations = await _visible_contact(call, contact_id)
    identities = await store.identities.find({"contact_id": contact_id}).to_list(100)
    return contact_view(doc, identities, conversations)


def _refs(call: Call, phones: list[str], emails: list[str]) -> list[IdentityRef]:
    region = call.hub.settings.identity.default_region
    refs: list[IdentityRef] = []
    try:
        refs += [IdentityRef(kind="phone", value=normalize_phone(p, region)) for p in phones]
        refs += [IdentityRef(kind="email", value=normalize_email(e)) for e in emails]
    except InvalidIdentity as error:
        raise ApiError(400, "invalid", str(error)) from None
    return list(dict.fromkeys(refs))


async def _ensure_free(call: Call, refs: list[IdentityRef], contact_id: str | None) -> None:
    """409 if one of `refs` belongs to a contact other than `contact_id`."""
    for ref in refs:
        owner = await _store(call).identities.find_one(
            {"_id": identity_id(ref.kind, ref.value)}, {"contact_id": 1}
        )
        if owner is not None and owner["contact_id"] != contact_id:
            raise ApiError(
                409,
                "identity_taken",
                f"{ref.value} belongs to contact {owner['contact_id']} (merge them instead)",
            )


async def _search(call: Call, query: ContactQuery) -> tuple[list[dict[str, Any]], str | None]:
    """The page of a search: matches are few (at most 500), so they are read by
    their `_id`s and ordered here."""
    assert query.q is not None
    ids = await matching_contact_ids(call, query.q, limit=500)
    found = list((await find_by_ids(_store(call).contacts, ids)).values())
    if query.label is not None:
        found = [d for d in found if query.label in (d.get("labels") or [])]
    found.sort(key=_position, reverse=True)
    if query.cursor is not None:
        at, ident = decode_cursor(query.cursor)
        mark = (at or EPOCH, ident)
        found = [d for d in found if _position(d) < mark]
    docs = found[: query.limit]
    next_cursor = None
    if len(found) > query.limit and docs:
        next_cursor = encode_cursor(docs[-1].get("created_at"), str(docs[-1]["_id"]))
    return docs, next_cursor


def _position(doc: dict[str, Any]) -> tuple[datetime, str]:
    at = doc.get("created_at")
    return (at if isinstance(at, datetime) else EPOCH, str(doc["_id"]))


@table.route(
    "GET",
    "/api/contacts",
    summary="Contacts, newest first; `q` matches name, phone, e-mail",
    query=ContactQuery,
    response=ContactList,
)
async def list_contacts(call: Call) -> dict[str, Any]:
    query: ContactQuery = call.query
    store = _store(call)
    if query.q:
        docs, next_cursor = await _search(call, query)
    else:
        clauses = [{"labels": query.label}] if query.label is not None else []
        docs, next_cursor = await page_by_time(
            store.contacts, clauses, "created_at", query.cursor, query.limit
        )
    return {"items": [contact_view(d) for d in docs], "next_cursor": next_cursor}


@table.route("GET", "/api/contacts/{id}", summary="One contact", response=ContactOut)
async def get_contact(call: Call) -> dict[str, Any]:
    return await _full_view(call, call.param("id"))


@table.route(
    "POST",
    "/api/contacts",
    summary="Create a contact",
    body=ContactCreate,
    response=ContactOut,
    status=201,
)
async def create_contact(call: Call) -> dict[str, Any]:
    body: ContactCreate = call.body
    store = _store(call)
    refs = _refs(call, body.phones, body.emails)
    if body.telegram:
        refs.append(IdentityRef(kind="telegram", value=body.telegram))
    await _ensure_free(call, refs, None)
    contact_id = new_id()
    doc = new_contact_doc(
        contact_id,
        name=body.name,
        timezone=body.timezone,
        locale=body.locale,
        birthday=body.birthday.model_dump() if body.birthday else None,
        labels=list(dict.fromkeys(body.labels)),
        attributes={attribute_key(k): v for k, v in body.attributes.items()},
    )
    await store.contacts.insert_one(doc)
    for ref in refs:
        await add_identity(store, contact_id, ref)
    view = await _full_view(call, contact_id)
    await call.hub.publish([Event("contact.updated", view)])
    return view


@table.route(
    "PATCH",
    "/api/contacts/{id}",
    summary="Edit a contact (phones and emails given are the whole new lists)",
    body=ContactPatch,
    response=ContactOut,
)
async def patch_contact(call: Call) -> dict[str, Any]:
    body: ContactPatch = call.body
    store = _store(call)
    contact_id = call.param("id")
    doc, _ = await _visible_contact(call, contact_id)
    given = body.model_fields_set
    sets: dict[str, Any] = {}
    unsets: dict[str, Any] = {}
    for name in ("name", "timezone", "locale"):
        if name in given:
            sets[name] = getattr(body, name)
    if "birthday" in given:
        sets["birthday"] = body.birthday.model_dump() if body.birthday else None
    if body.labels is not None:
        sets["labels"] = list(dict.fromkeys(body.labels))
    for key, value in (body.attributes or {}).items():
        path = f"attributes.{attribute_key(key)}"
        if value is None:
            unsets[path] = ""
        else:
            sets[path] = value
    for medium, opted in (body.opted_out or {}).items():
        sets[f"opted_out.{medium}"] = opted
    adds: list[IdentityRef] = []
    removes: list[IdentityRef] = []
    if body.phones is not None or body.emails is not None:
        phones = body.phones if body.phones is not None else list(doc.get("phones") or [])
        emails = body.emails if body.emails is not None else list(doc.get("emails") or [])
        wanted = _refs(call, phones, emails)
        current = [IdentityRef(kind="phone", value=p) for p in doc.get("phones") or []]
        current += [IdentityRef(kind="email", value=e) for e in doc.get("emails") or []]
        adds = [r for r in wanted if r not in current]
        removes = [r for r in current if r not in wanted]
        await _ensure_free(call, adds, contact_id)
    update: dict[str, Any] = {}
    if sets:
        update["$set"] = sets
    if unsets:
        update["$unset"] = unsets
    if update:
        await store.contacts.update_one({"_id": contact_id}, update)
    for ref in adds:
        await add_identity(store, contact_id, ref)
    for ref in removes:
        key = identity_id(ref.kind, ref.value)
        owner = await store.identities.find_one({"_id": key}, {"contact_id": 1})
        if owner is not None and owner["contact_id"] == contact_id:
            await store.identities.delete_one({"_id": key})
        field = "phones" if ref.kind == "phone" else "emails"
        await store.contacts.update_one({"_id": contact_id}, {"$pull": {field: ref.value}})
    view = await _full_view(call, contact_id)
    await call.hub.publish([Event("contact.updated", view)])
    return view


@table.route(
    "POST",
    "/api/contacts/{id}/merge",
    summary="Fold another contact, its identities and conversations into this one",
    role="supervisor",
    body=MergeIn,
    response=ContactOut,
)
async def merge_contact(call: Call) -> dict[str, Any]:
    body: MergeIn = call.body
    keep_id = call.param("id")
    if keep_id == body.other_id:
        raise ApiError(400, "invalid", "other_id: a contact cannot be merged into itself")
    try:
        await call.hub.merge_contacts(keep_id, body.other_id)
    except MergeError:
        raise not_found("contact (both must exist)") from None
    if call.hub.ingestor is not None:
        # Its cache maps conversations to the contact that was folded away.
        call.hub.ingestor.forget_conversations()
    await call.accounts.audit(
        call.me.agent_id, "contact.merged", target=keep_id, merged=body.other_id
    )
    view = await _full_view(call, keep_id)
    await call.hub.publish([Event("contact.updated", view)])
    return view
