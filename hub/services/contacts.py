"""Contacts: resolving identities to one contact, creating, updating, merging.

A `phone` identity (E.164) is shared by SMS, WhatsApp and voice, so the person who
texts and later calls from the same number is one contact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.errors import DuplicateKeyError

from hub.model import Event, IdentityRef, utcnow
from hub.services.events import Events
from hub.store import Store, identity_id, new_id

log = logging.getLogger("hub.identity")


def attribute_key(key: str) -> str:
    """A contact attribute name that is only ever a field name: no path, no operator."""
    cleaned = re.sub(r"[^\w -]", "_", key.strip())[:64]
    return cleaned or "_"


def _contact_fields(ref: IdentityRef) -> dict[str, Any]:
    return {
        "phones": [ref.value] if ref.kind == "phone" else [],
        "emails": [ref.value] if ref.kind == "email" else [],
        "telegram": ref.value if ref.kind == "telegram" else None,
    }


def new_contact_doc(
    contact_id: str, ref: IdentityRef | None = None, **fields: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": contact_id,
        "name": fields.pop("name", None) or (ref.name if ref else None),
        "phones": [],
        "emails": [],
        "telegram": None,
        "birthday": None,
        "timezone": None,
        "locale": None,
        "labels": [],
        "attributes": {},
        "opted_out": {},
        "created_at": utcnow(),
    }
    if ref is not None:
        doc.update(_contact_fields(ref))
    doc.update(fields)
    return doc


async def resolve_contact(store: Store, ref: IdentityRef) -> str:
    """The id of the contact owning `ref`, created with it if it is new.

    Atomic across processes: the identity's `_id` is its kind and value, so of any
    number of concurrent first messages exactly one identity insert wins; the losers
    remove the contact they prepared and use the winner's.
    """
    key = identity_id(ref.kind, ref.value)
    found = await store.identities.find_one({"_id": key}, {"contact_id": 1})
    if found:
        return str(found["contact_id"])
    contact_id = new_id()
    await store.contacts.insert_one(new_contact_doc(contact_id, ref))
    try:
        await store.identities.insert_one(
            {
                "_id": key,
                "kind": ref.kind,
                "value": ref.value,
                "contact_id": contact_id,
                "created_at": utcnow(),
            }
        )
    except DuplicateKeyError:
        await store.contacts.delete_one({"_id": contact_id})
        winner = await store.identities.find_one({"_id": key}, {"contact_id": 1})
        if winner is None:  # removed between the two calls: try again from the top
            return await resolve_contact(store, ref)
        return str(winner["contact_id"])
    log.info("contact created", extra={"contact_id": contact_id, "identity_kind": ref.kind})
    return contact_id


async def add_identity(store: Store, contact_id: str, ref: IdentityRef) -> bool:
    """Attach `ref` to a contact; False if it already belongs to another contact."""
    key = identity_id(ref.kind, ref.value)
    try:
        await store.identities.insert_one(
            {
                "_id": key,
                "kind": ref.kind,
                "value": ref.value,
                "contact_id": contact_id,
                "created_at": utcnow(),
            }
        )
    except DuplicateKeyError:
        owner = await store.identities.find_one({"_id": key}, {"contact_id": 1})
        return bool(owner and owner["contact_id"] == contact_id)
    field = {"phone": "phones", "email": "emails"}.get(ref.kind)
    if field:
        await store.contacts.update_one({"_id": contact_id}, {"$addToSet": {field: ref.value}})
    else:
        await store.contacts.update_one({"_id": contact_id}, {"$set": {"telegram": ref.value}})
    return True


class MergeError(ValueError):
    pass


async def merge_contacts(store: Store, keep_id: str, other_id: str) -> dict[str, Any]:
    """Fold contact `other_id` into `keep_id`: identities, conversations and fields.

    Values already on the kept contact win; lists are united; an opt-out on either
    side stays an opt-out. The other contact is removed. Returns the merged contact.
    """
    if keep_id == other_id:
        raise MergeError("a contact cannot be merged into itself")
    keep = await store.contacts.find_one({"_id": keep_id})
    other = await store.contacts.find_one({"_id": other_id})
    if keep is None or other is None:
        raise MergeError("both contacts must exist")
    await store.identities.update_many({"contact_id": other_id}, {"$set": {"contact_id": keep_id}})
    await store.conversations.update_many(
        {"contact_id": other_id}, {"$set": {"contact_id": keep_id}}
    )
    merged: dict[str, Any] = {}
    for field in ("phones", "emails", "labels"):
        merged[field] = list(dict.fromkeys([*(keep.get(field) or []), *(other.get(field) or [])]))
    for field in ("name", "telegram", "birthday", "timezone", "locale"):
        merged[field] = keep.get(field) or other.get(field)
    merged["attributes"] = {**(other.get("attributes") or {}), **(keep.get("attributes") or {})}
    opted: dict[str, bool] = dict(other.get("opted_out") or {})
    for channel, value in (keep.get("opted_out") or {}).items():
        opted[channel] = bool(value) or opted.get(channel, False)
    merged["opted_out"] = opted
    await store.contacts.update_one({"_id": keep_id}, {"$set": merged})
    await store.contacts.delete_one({"_id": other_id})
    log.info("contacts merged", extra={"contact_id": keep_id, "merged_id": other_id})
    result = await store.contacts.find_one({"_id": keep_id})
    assert result is not None
    return result


async def merge_and_tell(
    store: Store, events: Events, keep_id: str, other_id: str
) -> dict[str, Any]:
    """Fold contact `other_id` into `keep_id` and tell every hub process
    (`contact.merged` keeps their caches right)."""
    merged = await merge_contacts(store, keep_id, other_id)
    await events.publish([Event("contact.merged", {"id": keep_id, "merged_id": other_id})])
    return merged


async def set_opt_out(
    store: Store, events: Events, contact_id: str, medium: str, opted_out: bool = True
) -> None:
    """Record that a contact refuses (or no longer refuses) `medium`, and say so."""
    await store.contacts.update_one(
        {"_id": contact_id}, {"$set": {f"opted_out.{medium}": opted_out}}
    )
    await events.publish(
        [Event("contact.updated", {"id": contact_id, "opted_out": {medium: opted_out}})]
    )


async def opt_out(
    store: Store, events: Events, ref: IdentityRef, medium: str, opted_out: bool = True
) -> str:
    """Record that the owner of `ref` does (or no longer does) refuse `medium`."""
    contact_id = await resolve_contact(store, ref)
    await set_opt_out(store, events, contact_id, medium, opted_out)
    return contact_id


async def opted_out_of(store: Store, contact_id: str, medium: str) -> bool:
    """Whether the contact refuses messages on `medium`."""
    contact = await store.contacts.find_one({"_id": contact_id}, {"opted_out": 1})
    return bool(contact and (contact.get("opted_out") or {}).get(medium))


async def update_from_channel(
    store: Store,
    ref: IdentityRef,
    also: Sequence[IdentityRef] = (),
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> str:
    """Resolve-or-create the contact of `ref`, attach the identities in `also`
    that are no one's, give it `name` if it has none, and set `attributes`."""
    contact_id = None
    for known in (ref, *also):
        owner = await store.identities.find_one(
            {"_id": identity_id(known.kind, known.value)}, {"contact_id": 1}
        )
        if owner is not None:
            contact_id = str(owner["contact_id"])
            break
    if contact_id is None:
        contact_id = await resolve_contact(store, ref)
    for other in (ref, *also):
        if not await add_identity(store, contact_id, other):
            log.info(
                "identity kept by another contact",
                extra={"contact_id": contact_id, "identity_kind": other.kind},
            )
    if name:
        contact = await store.contacts.find_one({"_id": contact_id}, {"name": 1})
        if contact is not None and not contact.get("name"):
            await store.contacts.update_one({"_id": contact_id}, {"$set": {"name": name}})
    fields = {f"attributes.{attribute_key(k)}": str(v) for k, v in (attributes or {}).items()}
    if fields:
        await store.contacts.update_one({"_id": contact_id}, {"$set": fields})
    return contact_id


def contact_card(contact_id: str, contact: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's card a screen-pop shows."""
    return {
        "id": contact_id,
        "name": contact.get("name"),
        "phones": contact.get("phones", []),
        "emails": contact.get("emails", []),
        "labels": contact.get("labels", []),
    }
