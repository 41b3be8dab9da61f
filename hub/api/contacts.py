"""Contacts: search, read, create, edit, merge.

Any agent may list and create contacts, and sees only the contacts it may see
(hub.services.visibility): those with a conversation in one of its inboxes, and
those it created while they have no conversation yet; supervisors see every
contact. Reading or editing one contact needs the same; a phone or e-mail taken
by a contact the agent may not see is refused without naming that contact.
Merging needs the supervisor role, since it cannot be undone.
"""

from __future__ import annotations

from typing import Any

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.schemas import (
    ContactCreate,
    ContactList,
    ContactOut,
    ContactPatch,
    ContactQuery,
    MergeIn,
)
from hub.model import Event
from hub.services import contacts, visibility
from hub.services.contacts import IdentityTaken, MergeError
from hub.shapes import iso
from hub.store import Store

table = RouteTable()


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
    return await contacts.matching_contact_ids(
        _store(call), q, limit=limit, default_region=call.hub.settings.identity.default_region
    )


async def _visible_contact(
    call: Call, contact_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The contact (404) and the conversations of it this agent sees (403 when the
    agent may not see it)."""
    found = await visibility.contact_for(_store(call), call.me, contact_id)
    if found is None:
        raise not_found("contact")
    doc, seen, visible = found
    if not visible:
        raise ApiError(403, "forbidden", "this contact talks only to inboxes you do not see")
    seen.sort(key=lambda c: iso(c.get("last_activity_at")) or "", reverse=True)
    return doc, seen


async def _taken(call: Call, error: IdentityTaken) -> ApiError | None:
    """The 409 for an identity another contact owns, when the agent may not see
    that contact (None: it may, and the error may name it)."""
    if await visibility.sees(_store(call), call.me, error.owner):
        return None
    return ApiError(409, "identity_taken", f"{error.value} belongs to another contact")


async def _full_view(call: Call, contact_id: str) -> dict[str, Any]:
    doc, conversations = await _visible_contact(call, contact_id)
    identities = await contacts.identities_of(_store(call), contact_id)
    return contact_view(doc, identities, conversations)


@table.route(
    "GET",
    "/api/contacts",
    summary="Contacts, newest first; `q` matches name, phone, e-mail",
    query=ContactQuery,
    response=ContactList,
)
async def list_contacts(call: Call) -> dict[str, Any]:
    query: ContactQuery = call.query
    region = call.hub.settings.identity.default_region
    if call.me.inboxes is None:
        docs, next_cursor = await contacts.page(
            _store(call),
            q=query.q,
            label=query.label,
            cursor=query.cursor,
            limit=query.limit,
            default_region=region,
        )
    else:
        docs, next_cursor = await visibility.page_for(
            _store(call),
            call.me,
            q=query.q,
            label=query.label,
            cursor=query.cursor,
            limit=query.limit,
            default_region=region,
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
    new = contacts.NewContact(
        name=body.name,
        phones=body.phones,
        emails=body.emails,
        telegram=body.telegram,
        timezone=body.timezone,
        locale=body.locale,
        birthday=body.birthday.model_dump() if body.birthday else None,
        labels=body.labels,
        attributes=dict(body.attributes),
        created_by=call.me.agent_id,
    )
    try:
        contact_id = await contacts.create(
            _store(call), new, default_region=call.hub.settings.identity.default_region
        )
    except IdentityTaken as error:
        raise await _taken(call, error) or error from None
    await call.accounts.audit(call.me.agent_id, "contact.created", target=contact_id)
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
    contact_id = call.param("id")
    doc, _ = await _visible_contact(call, contact_id)
    named: dict[str, Any] = {"name": body.name, "timezone": body.timezone, "locale": body.locale}
    named["birthday"] = body.birthday.model_dump() if body.birthday else None
    change = contacts.ContactChange(
        **{name: value for name, value in named.items() if name in body.model_fields_set},
        labels=body.labels,
        attributes=body.attributes,
        opted_out=None if body.opted_out is None else dict(body.opted_out.items()),
        phones=body.phones,
        emails=body.emails,
    )
    try:
        await contacts.update(
            _store(call), doc, change, default_region=call.hub.settings.identity.default_region
        )
    except IdentityTaken as error:
        raise await _taken(call, error) or error from None
    await call.accounts.audit(
        call.me.agent_id, "contact.updated", target=contact_id, fields=sorted(body.model_fields_set)
    )
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
