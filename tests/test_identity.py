"""Identity: normalised phone numbers and e-mails, one contact per person across
SMS, WhatsApp and voice, atomic resolve-or-create, and merging contacts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.addresses import InvalidIdentity, email_ref, normalize_email, normalize_phone, phone_ref
from hub.model import IdentityRef
from hub.services.contacts import (
    MergeError,
    add_identity,
    merge_contacts,
    resolve_contact,
    resolve_many,
)
from hub.store import Store, identity_id

# --- normalising -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("whatsapp:+14155552671", "US", "+14155552671"),
        ("WhatsApp:+14155552671", "GB", "+14155552671"),
        ("tel:+14155552671", "US", "+14155552671"),
        ("sip:+14155552671@pbx.example.com", "US", "+14155552671"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("  +1 415 555 2671  ", "US", "+14155552671"),
    ],
)
def test_normalize_phone_gives_e164(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


def test_normalize_phone_uses_the_default_region_for_national_numbers() -> None:
    assert normalize_phone("0612345678", "FR") == "+33612345678"
    assert normalize_phone("0612345678", "NL") == "+31612345678"


@pytest.mark.parametrize("raw", ["", "hello", "+", "123", "whatsapp:", "+14155552671abc"])
def test_normalize_phone_rejects_garbage(raw: str) -> None:
    with pytest.raises(InvalidIdentity):
        normalize_phone(raw, "US")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.COM", "ann@example.com"),
        ("  ann@example.com  ", "ann@example.com"),
        ("Ann Smith <Ann@B.com>", "ann@b.com"),
        ('"Smith, Ann" <ANN@b.co.uk>', "ann@b.co.uk"),
    ],
)
def test_normalize_email_lower_cases_and_strips_the_display_name(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ann",
        "ann@",
        "@b.com",
        "ann@b",
        "a b@c.com",
        "a\t@b.com",
        "<>",
        "Ann <a@b.com",
        "a@@b.com",
        "a@.com",
        "a@b..com",
    ],
)
def test_normalize_email_rejects_invalid_addresses(raw: str) -> None:
    with pytest.raises(InvalidIdentity):
        normalize_email(raw)


def test_phone_and_email_refs_carry_kind_value_and_name() -> None:
    assert phone_ref("whatsapp:+14155552671", "US", "Ann") == IdentityRef(
        kind="phone", value="+14155552671", name="Ann"
    )
    assert email_ref("Ann <ANN@b.com>") == IdentityRef(kind="email", value="ann@b.com")


# --- resolving -------------------------------------------------------------------


async def test_resolve_contact_creates_once_and_then_returns_the_same_id(store: Store) -> None:
    ref = IdentityRef(kind="phone", value="+15550100001", name="Ann")
    first = await resolve_contact(store, ref)
    second = await resolve_contact(store, ref)
    assert first == second
    assert await store.contacts.count_documents({}) == 1
    contact = await store.contacts.find_one({"_id": first})
    assert contact is not None
    assert contact["name"] == "Ann"
    assert contact["phones"] == ["+15550100001"]
    identity = await store.identities.find_one({"_id": identity_id("phone", "+15550100001")})
    assert identity is not None
    assert identity["contact_id"] == first


async def test_different_identities_make_different_contacts(store: Store) -> None:
    a = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100002"))
    b = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100003"))
    c = await resolve_contact(store, IdentityRef(kind="email", value="x@example.com"))
    assert len({a, b, c}) == 3
    assert await store.contacts.count_documents({}) == 3


async def test_50_concurrent_first_messages_from_one_number_make_one_contact(
    store: Store,
) -> None:
    ref = IdentityRef(kind="phone", value="+15550100004")
    ids = await asyncio.gather(*(resolve_contact(store, ref) for _ in range(50)))
    assert len(set(ids)) == 1
    assert await store.contacts.count_documents({}) == 1
    assert await store.identities.count_documents({}) == 1
    (contact_id,) = set(ids)
    assert await store.contacts.find_one({"_id": contact_id}) is not None


async def test_concurrent_resolves_from_two_clients_make_one_contact(
    store: Store, embedded_uri: str, db_name: str, tmp_path: Path
) -> None:
    # A second client stands in for a second hub instance on the same store.
    other = await Store.open(uri=embedded_uri, database=db_name, data_dir=tmp_path)
    try:
        ref = IdentityRef(kind="phone", value="+15550100005")
        ids = await asyncio.gather(
            *(resolve_contact(s, ref) for _ in range(25) for s in (store, other))
        )
    finally:
        await other.close()
    assert len(set(ids)) == 1
    assert await store.contacts.count_documents({}) == 1
    assert await store.identities.count_documents({}) == 1


async def test_sms_whatsapp_and_voice_from_one_number_are_one_contact(store: Store) -> None:
    sms = phone_ref("+1 415 555 0123", "US")
    whatsapp = phone_ref("whatsapp:+14155550123", "US")
    voice = phone_ref("(415) 555-0123", "US")
    ids = {await resolve_contact(store, ref) for ref in (sms, whatsapp, voice)}
    assert len(ids) == 1
    assert await store.contacts.count_documents({}) == 1
    assert await store.identities.count_documents({}) == 1


# --- adding identities -----------------------------------------------------------


async def test_add_identity_attaches_an_email_and_resolves_to_that_contact(store: Store) -> None:
    contact = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100006"))
    ref = IdentityRef(kind="email", value="ann@example.com")
    assert await add_identity(store, contact, ref) is True
    doc = await store.contacts.find_one({"_id": contact})
    assert doc is not None
    assert doc["emails"] == ["ann@example.com"]
    assert await resolve_contact(store, ref) == contact
    assert await store.contacts.count_documents({}) == 1
    # Attaching it again to the same contact is harmless.
    assert await add_identity(store, contact, ref) is True
    doc = await store.contacts.find_one({"_id": contact})
    assert doc is not None
    assert doc["emails"] == ["ann@example.com"]


async def test_add_identity_sets_the_telegram_id(store: Store) -> None:
    contact = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100007"))
    assert await add_identity(store, contact, IdentityRef(kind="telegram", value="424242"))
    doc = await store.contacts.find_one({"_id": contact})
    assert doc is not None
    assert doc["telegram"] == "424242"


async def test_add_identity_refuses_an_identity_owned_by_another_contact(store: Store) -> None:
    ref = IdentityRef(kind="phone", value="+15550100008")
    owner = await resolve_contact(store, ref)
    other = await resolve_contact(store, IdentityRef(kind="email", value="bob@example.com"))
    assert await add_identity(store, other, ref) is False
    identity = await store.identities.find_one({"_id": identity_id("phone", "+15550100008")})
    assert identity is not None
    assert identity["contact_id"] == owner
    other_doc = await store.contacts.find_one({"_id": other})
    assert other_doc is not None
    assert other_doc["phones"] == []


# --- merging ---------------------------------------------------------------------


async def _conversation(store: Store, conv_id: str, contact_id: str) -> None:
    await store.conversations.insert_one(
        {"_id": conv_id, "inbox": "t1", "channel": "sms", "contact_id": contact_id}
    )


async def test_merge_moves_identities_and_conversations_and_unites_fields(store: Store) -> None:
    keep = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100010"))
    other = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100011"))
    assert await add_identity(store, other, IdentityRef(kind="email", value="o@example.com"))
    await store.contacts.update_one(
        {"_id": keep},
        {
            "$set": {
                "name": "Ann",
                "labels": ["vip"],
                "attributes": {"plan": "gold"},
                "opted_out": {"sms": False, "email": True},
            }
        },
    )
    await store.contacts.update_one(
        {"_id": other},
        {
            "$set": {
                "name": "A. Smith",
                "timezone": "Europe/Paris",
                "labels": ["lead", "vip"],
                "attributes": {"plan": "free", "source": "form"},
                "opted_out": {"sms": True, "whatsapp": True},
            }
        },
    )
    await _conversation(store, "conv-keep", keep)
    await _conversation(store, "conv-other-1", other)
    await _conversation(store, "conv-other-2", other)

    merged = await merge_contacts(store, keep, other)

    assert merged["_id"] == keep
    assert await store.contacts.find_one({"_id": other}) is None
    assert await store.contacts.count_documents({}) == 1
    owners = {
        doc["_id"]: doc["contact_id"] async for doc in store.identities.find({}, {"contact_id": 1})
    }
    assert owners == {
        "phone:+15550100010": keep,
        "phone:+15550100011": keep,
        "email:o@example.com": keep,
    }
    assert await store.conversations.count_documents({"contact_id": keep}) == 3
    assert await store.conversations.count_documents({"contact_id": other}) == 0

    stored = await store.contacts.find_one({"_id": keep})
    assert stored == merged
    assert merged["phones"] == ["+15550100010", "+15550100011"]
    assert merged["emails"] == ["o@example.com"]
    assert merged["labels"] == ["vip", "lead"]
    assert merged["name"] == "Ann"  # the kept contact's value wins
    assert merged["timezone"] == "Europe/Paris"  # filled from the other
    assert merged["attributes"] == {"plan": "gold", "source": "form"}
    # An opt-out on either side stays an opt-out.
    assert merged["opted_out"] == {"sms": True, "email": True, "whatsapp": True}
    # The other contact's number now finds the kept contact.
    assert await resolve_contact(store, IdentityRef(kind="phone", value="+15550100011")) == keep


async def test_merge_refuses_to_merge_a_contact_into_itself(store: Store) -> None:
    contact = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100012"))
    with pytest.raises(MergeError):
        await merge_contacts(store, contact, contact)
    assert await store.contacts.find_one({"_id": contact}) is not None


async def test_merge_refuses_missing_contacts_and_changes_nothing(store: Store) -> None:
    contact = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100013"))
    await _conversation(store, "conv-1", contact)
    with pytest.raises(MergeError):
        await merge_contacts(store, "000000000000000000000000", contact)
    with pytest.raises(MergeError):
        await merge_contacts(store, contact, "000000000000000000000000")
    assert await store.contacts.find_one({"_id": contact}) is not None
    identity = await store.identities.find_one({"_id": "phone:+15550100013"})
    assert identity is not None
    assert identity["contact_id"] == contact
    conversation = await store.conversations.find_one({"_id": "conv-1"})
    assert conversation is not None
    assert conversation["contact_id"] == contact


# --- resolving many at once (ingest's new senders) ----------------------------------


async def test_resolve_many_makes_one_contact_per_identity_and_reuses_known_ones(
    store: Store,
) -> None:
    known = await resolve_contact(store, IdentityRef(kind="phone", value="+15550100101"))
    refs = [
        IdentityRef(kind="phone", value="+15550100101"),
        IdentityRef(kind="phone", value="+15550100102"),
        IdentityRef(kind="phone", value="+15550100102", name="twice in one call"),
        IdentityRef(kind="email", value="new@example.com"),
    ]
    owners = await resolve_many(store, refs)
    assert set(owners) == {"phone:+15550100101", "phone:+15550100102", "email:new@example.com"}
    assert owners["phone:+15550100101"] == known
    assert len(set(owners.values())) == 3
    assert await store.contacts.count_documents({}) == 3
    assert await store.identities.count_documents({}) == 3
    for key, contact_id in owners.items():
        identity = await store.identities.find_one({"_id": key})
        assert identity["contact_id"] == contact_id
        assert await store.contacts.find_one({"_id": contact_id}) is not None


async def test_concurrent_resolve_many_from_two_clients_make_one_contact_per_identity(
    store: Store, embedded_uri: str, db_name: str, tmp_path: Path
) -> None:
    # Two hub processes, each with a batch of the same new senders, at once.
    other = await Store.open(uri=embedded_uri, database=db_name, data_dir=tmp_path)
    refs = [IdentityRef(kind="phone", value=f"+1555020{n:04d}") for n in range(20)]
    try:
        results = await asyncio.gather(
            *(resolve_many(s, refs[k:] + refs[:k]) for k in range(0, 20, 5) for s in (store, other))
        )
    finally:
        await other.close()
    for result in results[1:]:
        assert result == results[0]
    assert len(set(results[0].values())) == 20
    # The losers' prepared contacts are gone: one contact per identity, no orphans.
    assert await store.contacts.count_documents({}) == 20
    assert await store.identities.count_documents({}) == 20
