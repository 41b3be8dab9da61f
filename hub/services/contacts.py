"""Contacts: resolving identities to one contact, creating, updating, merging.

A `phone` identity (E.164) is shared by SMS, WhatsApp and voice, so the person who
texts and later calls from the same number is one contact.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from hub.addresses import InvalidIdentity, normalize_email, normalize_phone
from hub.model import Event, IdentityRef, storable_text, utcnow
from hub.services.events import Events
from hub.services.paging import decode_cursor, encode_cursor, page_by_time
from hub.store import IDS_PER_COMMAND, Store, find_by_ids, identity_id, insert_new, new_id

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


# When a contact's `opted_out` last changed (set with every write to it, indexed):
# a send queued ahead re-checks only the contacts whose opt-outs changed since it
# was queued (`opted_out_since`), not every recipient's.
OPT_OUT_CHANGED = "opted_out_changed_at"


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
        await store.identities.insert_one(_identity_doc(key, ref, contact_id))
    except DuplicateKeyError:
        await store.contacts.delete_one({"_id": contact_id})
        winner = await store.identities.find_one({"_id": key}, {"contact_id": 1})
        if winner is None:  # removed between the two calls: try again from the top
            return await resolve_contact(store, ref)
        return str(winner["contact_id"])
    log.info("contact created", extra={"contact_id": contact_id, "identity_kind": ref.kind})
    return contact_id


def _identity_doc(key: str, ref: IdentityRef, contact_id: str) -> dict[str, Any]:
    return {
        "_id": key,
        "kind": ref.kind,
        "value": ref.value,
        "contact_id": contact_id,
        "created_at": utcnow(),
    }


async def identity_owners(store: Store, keys: Iterable[str]) -> dict[str, str]:
    """The contact of each of these identities (by key) that exists, read in one command."""
    found = await find_by_ids(store.identities, list(keys), {"contact_id": 1})
    return {key: str(doc["contact_id"]) for key, doc in found.items()}


async def resolve_many(
    store: Store,
    refs: Sequence[IdentityRef],
    *,
    created: set[str] | None = None,
    read: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The contact of each identity (by its key, `kind:value`), the new ones
    created together: one read of the identities (none if the caller `read`
    them: `identity_owners` of all their keys), and for the new ones one insert
    of their contacts and one of their identities, however many there are.
    The keys whose contact this call created are added to `created`, if given.

    As atomic as `resolve_contact`: the identity's `_id` decides, so an identity
    another process inserted first keeps its contact, and the contact prepared
    here for it is removed again. Two refs with one key make one contact.
    """
    wanted: dict[str, IdentityRef] = {}
    for ref in refs:
        wanted.setdefault(identity_id(ref.kind, ref.value), ref)
    if read is None:
        owners = await identity_owners(store, wanted)
    else:
        owners = {key: read[key] for key in wanted if key in read}
    new = {key: ref for key, ref in wanted.items() if key not in owners}
    if not new:
        return owners
    prepared = {key: new_id() for key in new}
    await store.contacts.insert_many(
        [new_contact_doc(prepared[key], ref) for key, ref in new.items()], ordered=False
    )
    lost = await insert_new(
        store.identities, [_identity_doc(key, ref, prepared[key]) for key, ref in new.items()]
    )
    if lost:
        losers = [prepared[key] for key in lost]
        for start in range(0, len(losers), IDS_PER_COMMAND):  # the engine's `$in` limit
            chunk = losers[start : start + IDS_PER_COMMAND]
            await store.contacts.delete_many({"_id": {"$in": chunk}})
        winners = await find_by_ids(store.identities, list(lost), {"contact_id": 1})
        for key in lost:
            winner = winners.get(key)
            # Removed between the two calls (a merge): try that one again.
            owners[key] = (
                str(winner["contact_id"]) if winner else await resolve_contact(store, new[key])
            )
    for key, ref in new.items():
        if key not in lost:
            owners[key] = prepared[key]
            if created is not None:
                created.add(key)
            log.info(
                "contact created", extra={"contact_id": prepared[key], "identity_kind": ref.kind}
            )
    return owners


async def name_from_channel(store: Store, names: Mapping[str, str]) -> None:
    """Give each contact (id -> a profile name a channel gave) that name if it
    has none and no agent chose it (`name_by` "agent": an agent's edit, even to
    no name, always wins); the first name a channel gives stays. One command
    for them all."""
    updates = [
        UpdateOne(
            {"_id": contact_id, "name": None, "name_by": {"$ne": "agent"}},
            {"$set": {"name": storable_text(name), "name_by": "channel"}},
        )
        for contact_id, name in names.items()
        if name
    ]
    if updates:
        await store.contacts.bulk_write(updates, ordered=False)


async def add_identity(store: Store, contact_id: str, ref: IdentityRef) -> bool:
    """Attach `ref` to a contact; False if it already belongs to another contact."""
    key = identity_id(ref.kind, ref.value)
    try:
        await store.identities.insert_one(_identity_doc(key, ref, contact_id))
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
    merged[OPT_OUT_CHANGED] = utcnow()
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
        {"_id": contact_id}, {"$set": {f"opted_out.{medium}": opted_out, OPT_OUT_CHANGED: utcnow()}}
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


async def opted_out_since(store: Store, since: datetime) -> dict[str, dict[str, Any]]:
    """The contacts whose opt-outs changed at or after `since` (their `opted_out`),
    by the index on OPT_OUT_CHANGED: a read of the few that changed lately, the same
    at a hundred contacts and at a million."""
    found: dict[str, dict[str, Any]] = {}
    async for doc in store.contacts.find({OPT_OUT_CHANGED: {"$gte": since}}, {"opted_out": 1}):
        found[doc["_id"]] = doc
    return found


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
        await name_from_channel(store, {contact_id: name})
    fields = {
        f"attributes.{attribute_key(k)}": storable_text(str(v))
        for k, v in (attributes or {}).items()
    }
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


# -- the agents' contact book: search, read, create, edit ------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PHONE_LIKE = re.compile(r"^[+\d(][\d\s().-]{5,}$")
CONVERSATION_FIELDS = {"inbox": 1, "channel": 1, "status": 1, "last_activity_at": 1}
_UNSET: Any = object()


class InvalidContact(ValueError):
    """A phone or e-mail that is not one; the message says which."""


class IdentityTaken(ValueError):
    """A phone, e-mail or Telegram id (`value`) that belongs to another contact
    (`owner`); the message names the owner, so show it only to who may see it."""

    def __init__(self, value: str, owner: str) -> None:
        super().__init__(f"{value} belongs to contact {owner} (merge them instead)")
        self.value = value
        self.owner = owner


async def matching_contact_ids(
    store: Store, q: str, *, limit: int, default_region: str
) -> list[str]:
    """Contacts whose phone or e-mail is `q` (an identity lookup), else whose name,
    phone or e-mail contains it (case-insensitive). `q` is only ever a value."""
    owner = await identity_owner(store, q, default_region=default_region)
    if owner is not None:
        return [owner]
    docs = await store.contacts.find(text_filter(q), {"_id": 1}).limit(limit).to_list()
    return [str(d["_id"]) for d in docs]


async def identity_owner(store: Store, q: str, *, default_region: str) -> str | None:
    """The contact whose phone or e-mail `q` is, if `q` is one and has an owner."""
    text = q.strip()
    exact: IdentityRef | None = None
    try:
        if "@" in text:
            exact = IdentityRef(kind="email", value=normalize_email(text))
        elif PHONE_LIKE.match(text):
            exact = IdentityRef(kind="phone", value=normalize_phone(text, default_region))
    except InvalidIdentity:
        exact = None
    if exact is None:
        return None
    owner = await store.identities.find_one(
        {"_id": identity_id(exact.kind, exact.value)}, {"contact_id": 1}
    )
    return None if owner is None else str(owner["contact_id"])


def text_filter(q: str) -> dict[str, Any]:
    """The filter of contacts whose name, phone or e-mail contains `q` (case-insensitive);
    `q` is escaped, so it is only ever a value."""
    pattern = {"$regex": re.escape(q.strip()), "$options": "i"}
    return {"$or": [{"name": pattern}, {"emails": pattern}, {"phones": pattern}]}


def position(doc: dict[str, Any]) -> tuple[datetime, str]:
    """Where a contact sorts in a list (newest first: descending)."""
    at = doc.get("created_at")
    return (at if isinstance(at, datetime) else EPOCH, str(doc["_id"]))


async def _search(
    store: Store,
    q: str,
    *,
    label: str | None,
    cursor: str | None,
    limit: int,
    default_region: str,
) -> tuple[list[dict[str, Any]], str | None]:
    """The page of a search: matches are few (at most 500), so they are read by
    their `_id`s and ordered here."""
    ids = await matching_contact_ids(store, q, limit=500, default_region=default_region)
    found = list((await find_by_ids(store.contacts, ids)).values())
    if label is not None:
        found = [d for d in found if label in (d.get("labels") or [])]
    found.sort(key=position, reverse=True)
    if cursor is not None:
        at, ident = decode_cursor(cursor)
        mark = (at or EPOCH, ident)
        found = [d for d in found if position(d) < mark]
    docs = found[:limit]
    next_cursor = None
    if len(found) > limit and docs:
        next_cursor = encode_cursor(docs[-1].get("created_at"), str(docs[-1]["_id"]))
    return docs, next_cursor


async def page(
    store: Store,
    *,
    q: str | None,
    label: str | None,
    cursor: str | None,
    limit: int,
    default_region: str,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of contacts, newest first: those matching `q` (see
    `matching_contact_ids`) if given, with `label` if given; and the next cursor."""
    if q:
        return await _search(
            store, q, label=label, cursor=cursor, limit=limit, default_region=default_region
        )
    clauses = [{"labels": label}] if label is not None else []
    return await page_by_time(store.contacts, clauses, "created_at", cursor, limit)


async def get_with_conversations(
    store: Store, contact_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The contact and (at most 200 of) its conversations' inbox, channel, status
    and last activity; None if there is no such contact."""
    doc = await store.contacts.find_one({"_id": contact_id})
    if doc is None:
        return None
    conversations = (
        await store.conversations.find({"contact_id": contact_id}, CONVERSATION_FIELDS)
        .limit(200)
        .to_list()
    )
    return doc, conversations


async def identities_of(store: Store, contact_id: str) -> list[dict[str, Any]]:
    return await store.identities.find({"contact_id": contact_id}).to_list(100)


def identity_refs(
    phones: Sequence[str], emails: Sequence[str], default_region: str
) -> list[IdentityRef]:
    """The phones and e-mails as normalised identities, without repeats."""
    refs: list[IdentityRef] = []
    try:
        refs += [
            IdentityRef(kind="phone", value=normalize_phone(p, default_region)) for p in phones
        ]
        refs += [IdentityRef(kind="email", value=normalize_email(e)) for e in emails]
    except InvalidIdentity as error:
        raise InvalidContact(str(error)) from None
    return list(dict.fromkeys(refs))


async def ensure_free(store: Store, refs: Sequence[IdentityRef], contact_id: str | None) -> None:
    """Raise `IdentityTaken` if one of `refs` belongs to a contact other than `contact_id`."""
    for ref in refs:
        owner = await store.identities.find_one(
            {"_id": identity_id(ref.kind, ref.value)}, {"contact_id": 1}
        )
        if owner is not None and owner["contact_id"] != contact_id:
            raise IdentityTaken(ref.value, str(owner["contact_id"]))


@dataclass(frozen=True)
class NewContact:
    """A contact an agent creates."""

    name: str | None = None
    phones: list[str] = dataclasses.field(default_factory=list)
    emails: list[str] = dataclasses.field(default_factory=list)
    telegram: str | None = None
    timezone: str | None = None
    locale: str | None = None
    birthday: dict[str, Any] | None = None
    labels: list[str] = dataclasses.field(default_factory=list)
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)
    created_by: str | None = None  # the agent: it alone sees the contact until it talks


async def create(store: Store, new: NewContact, *, default_region: str) -> str:
    """Create the contact with its identities (none may be another contact's:
    `IdentityTaken`) and return its id."""
    refs = identity_refs(new.phones, new.emails, default_region)
    if new.telegram:
        refs.append(IdentityRef(kind="telegram", value=new.telegram))
    await ensure_free(store, refs, None)
    contact_id = new_id()
    doc = new_contact_doc(
        contact_id,
        name=new.name,
        timezone=new.timezone,
        locale=new.locale,
        birthday=new.birthday,
        labels=list(dict.fromkeys(new.labels)),
        attributes={attribute_key(k): v for k, v in new.attributes.items()},
    )
    if new.created_by is not None:
        doc["created_by"] = new.created_by
    await store.contacts.insert_one(doc)
    for ref in refs:
        await add_identity(store, contact_id, ref)
    return contact_id


@dataclass(frozen=True)
class ContactChange:
    """What to change in a contact; a field left out is left as it is. `phones`
    and `emails` given are the whole new lists; an attribute set to None goes."""

    name: str | Any | None = _UNSET
    timezone: str | Any | None = _UNSET
    locale: str | Any | None = _UNSET
    birthday: dict[str, Any] | Any | None = _UNSET
    labels: list[str] | None = None
    attributes: Mapping[str, str | None] | None = None
    opted_out: Mapping[str, bool] | None = None
    phones: list[str] | None = None
    emails: list[str] | None = None


async def update(
    store: Store, doc: dict[str, Any], change: ContactChange, *, default_region: str
) -> None:
    """Apply `change` to the contact `doc`: its fields, and its phone and e-mail
    identities (a new one may not be another contact's: `IdentityTaken`)."""
    contact_id = doc["_id"]
    sets: dict[str, Any] = {}
    unsets: dict[str, Any] = {}
    for name in ("name", "timezone", "locale", "birthday"):
        value = getattr(change, name)
        if value is not _UNSET:
            sets[name] = value
    if "name" in sets:
        sets["name_by"] = "agent"  # a channel's profile name never replaces it
    if change.labels is not None:
        sets["labels"] = list(dict.fromkeys(change.labels))
    for key, value in (change.attributes or {}).items():
        path = f"attributes.{attribute_key(key)}"
        if value is None:
            unsets[path] = ""
        else:
            sets[path] = value
    for medium, opted in (change.opted_out or {}).items():
        sets[f"opted_out.{medium}"] = opted
        sets[OPT_OUT_CHANGED] = utcnow()
    adds: list[IdentityRef] = []
    removes: list[IdentityRef] = []
    if change.phones is not None or change.emails is not None:
        phones = change.phones if change.phones is not None else list(doc.get("phones") or [])
        emails = change.emails if change.emails is not None else list(doc.get("emails") or [])
        wanted = identity_refs(phones, emails, default_region)
        current = [IdentityRef(kind="phone", value=p) for p in doc.get("phones") or []]
        current += [IdentityRef(kind="email", value=e) for e in doc.get("emails") or []]
        adds = [r for r in wanted if r not in current]
        removes = [r for r in current if r not in wanted]
        await ensure_free(store, adds, contact_id)
    changes: dict[str, Any] = {}
    if sets:
        changes["$set"] = sets
    if unsets:
        changes["$unset"] = unsets
    if changes:
        await store.contacts.update_one({"_id": contact_id}, changes)
    for ref in adds:
        await add_identity(store, contact_id, ref)
    for ref in removes:
        key = identity_id(ref.kind, ref.value)
        owner = await store.identities.find_one({"_id": key}, {"contact_id": 1})
        if owner is not None and owner["contact_id"] == contact_id:
            await store.identities.delete_one({"_id": key})
        list_field = "phones" if ref.kind == "phone" else "emails"
        await store.contacts.update_one({"_id": contact_id}, {"$pull": {list_field: ref.value}})
