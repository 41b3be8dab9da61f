"""Who is who: normalising identities, resolving them to one contact, merging.

A `phone` identity (E.164) is shared by SMS, WhatsApp and voice, so the person who
texts and later calls from the same number is one contact.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import phonenumbers
from pymongo.errors import DuplicateKeyError

from hub.model import IdentityRef, utcnow
from hub.store import Store, identity_id, new_id

log = logging.getLogger("hub.identity")


class InvalidIdentity(ValueError):
    pass


@functools.lru_cache(maxsize=65536)
def normalize_phone(raw: str, default_region: str = "US") -> str:
    """Return `raw` as E.164 (`+15551234567`), or raise InvalidIdentity.

    Remembered per input (parsing is a tenth of the hub's CPU per inbound
    message, and the same customers write again and again); a refusal is not."""
    text = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sip:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    text = text.split("@", 1)[0]
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as error:
        raise InvalidIdentity(f"not a phone number: {raw!r}") from error
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentity(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    text = raw.strip()
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1 : -1]
    text = text.strip().lower()
    local, at, domain = text.partition("@")
    labels = domain.split(".")
    if (
        not at
        or not local
        or "@" in domain
        or len(labels) < 2
        or not all(labels)
        or any(c.isspace() or c in "<>" for c in text)
    ):
        raise InvalidIdentity(f"not an e-mail address: {raw!r}")
    return text


def phone_ref(raw: str, default_region: str, name: str | None = None) -> IdentityRef:
    return IdentityRef(kind="phone", value=normalize_phone(raw, default_region), name=name)


def email_ref(raw: str, name: str | None = None) -> IdentityRef:
    return IdentityRef(kind="email", value=normalize_email(raw), name=name)


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
