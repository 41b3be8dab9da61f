"""A greeting queued ahead re-checks its contact's opt-out at its send by reading
only the contacts whose opt-outs changed since it was queued (`opted_out_since`,
by the index on `OPT_OUT_CHANGED`), not every recipient's contact: so every way
an opt-out changes (the contact service, an agent's edit, a merge; a stop word is
in tests/test_optout.py) marks when it did."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hub.model import utcnow
from hub.services.contacts import (
    OPT_OUT_CHANGED,
    ContactChange,
    merge_contacts,
    new_contact_doc,
    opted_out_since,
    set_opt_out,
    update,
)
from tests.conftest import hub_of


async def test_every_change_of_an_opt_out_is_found_by_when_it_changed(hub_client: Any) -> None:
    hub = hub_of(hub_client)
    store = hub.store
    long_ago = utcnow() - timedelta(days=30)
    docs = {name: new_contact_doc(f"contact-{name}") for name in "abcdef"}
    docs["d"] |= {"opted_out": {"sms": True}, OPT_OUT_CHANGED: long_ago}
    docs["f"] |= {"opted_out": {"email": True}, OPT_OUT_CHANGED: long_ago}
    await store.contacts.insert_many(list(docs.values()))
    since = utcnow() - timedelta(seconds=1)

    await set_opt_out(store, hub.events, "contact-a", "sms")
    await update(store, docs["b"], ContactChange(opted_out={"whatsapp": True}), default_region="US")
    await merge_contacts(store, "contact-c", "contact-d")  # c now refuses SMS too
    await update(store, docs["e"], ContactChange(name="Erin"), default_region="US")

    changed = await opted_out_since(store, since)
    assert sorted(changed) == ["contact-a", "contact-b", "contact-c"]
    assert changed["contact-a"]["opted_out"] == {"sms": True}
    assert changed["contact-b"]["opted_out"] == {"whatsapp": True}
    assert changed["contact-c"]["opted_out"] == {"sms": True}
    # An opt-out changed back is found too: the re-check reads its present value.
    await set_opt_out(store, hub.events, "contact-f", "email", opted_out=False)
    assert (await opted_out_since(store, since))["contact-f"]["opted_out"] == {"email": False}
    assert await opted_out_since(store, utcnow() + timedelta(seconds=1)) == {}
