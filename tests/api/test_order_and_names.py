"""Order and names (issue 15, point 6): a thread is in arrival order when the
provider's times tie, the `before` pages follow it, a conversation's last message
is the newest, and a contact with no name takes the first profile name a channel
gives while an agent's edit always wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.addresses import phone_ref
from hub.model import InboundText
from tests.api.conftest import conversation_of, hub, inbound, make_agent

A = "+15551250001"
SECOND = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _text(n: int, text: str, at: datetime, sender: str = A) -> InboundText:
    return InboundText(
        inbox="t1",
        medium="sms",
        provider_id=f"ORD{n}",
        sender=phone_ref(sender, "US"),
        received_at=at,
        text=text,
    )


async def _thread(api, agent, conv, limit=50, before=None):
    query = f"?limit={limit}" + (f"&before={before}" if before else "")
    resp = await api.get(f"/api/conversations/{conv}/messages{query}", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_messages_within_one_second_are_in_arrival_order_and_pages_follow_it(api):
    texts = [f"part {n}" for n in range(6)]
    results = []
    for n, text in enumerate(texts):  # one after another, all stamped the same second
        results += await hub(api).ingest([_text(n, text, SECOND)])
    conv = results[0].conversation_id
    admin = await make_agent(api, "admin")
    newest_first = [m["text"] for m in (await _thread(api, admin, conv))["items"]]
    assert newest_first == texts[::-1]
    paged, before = [], None
    while True:
        page = await _thread(api, admin, conv, limit=2, before=before)
        paged += [m["text"] for m in page["items"]]
        before = page["next_cursor"]
        if before is None:
            break
    assert paged == texts[::-1]


async def test_a_batch_with_an_older_message_after_a_newer_one_shows_the_newer(api):
    newer, older = _text(1, "the newer", SECOND + timedelta(seconds=5)), _text(2, "older", SECOND)
    results = await hub(api).ingest([newer, older])
    conv = results[0].conversation_id
    admin = await make_agent(api, "admin")
    resp = await api.get(f"/api/conversations/{conv}", headers=admin.auth)
    assert (await resp.json())["last_message"]["text"] == "the newer"
    # A provider's late retry of an older message, in a later batch, leaves it so.
    await hub(api).ingest([_text(3, "late and old", SECOND - timedelta(minutes=1))])
    resp = await api.get(f"/api/conversations/{conv}", headers=admin.auth)
    assert (await resp.json())["last_message"]["text"] == "the newer"
    # Two in one batch within the same second: the one that arrived later.
    await hub(api).ingest(
        [
            _text(4, "first", SECOND + timedelta(seconds=9)),
            _text(5, "second", SECOND + timedelta(seconds=9)),
        ]
    )
    resp = await api.get(f"/api/conversations/{conv}", headers=admin.auth)
    assert (await resp.json())["last_message"]["text"] == "second"


async def _contact(api, agent, conv):
    resp = await api.get(f"/api/conversations/{conv}", headers=agent.auth)
    contact_id = (await resp.json())["contact"]["id"]
    resp = await api.get(f"/api/contacts/{contact_id}", headers=agent.auth)
    return await resp.json()


async def test_a_nameless_sms_contact_takes_the_first_whatsapp_profile_name(api):
    sms = await conversation_of(api, await inbound(api, "t1", "NM1", A, "hi by sms"))
    admin = await make_agent(api, "admin")
    assert (await _contact(api, admin, sms))["name"] is None
    await inbound(api, "w", "NM2", A, "hi on whatsapp", ProfileName="Maria Lopez")
    assert (await _contact(api, admin, sms))["name"] == "Maria Lopez"
    # The first name stays: a later profile name does not replace it.
    await inbound(api, "t2", "NM3", A, "hi again", ProfileName="Mimi")
    assert (await _contact(api, admin, sms))["name"] == "Maria Lopez"


async def test_an_agents_edit_of_the_name_always_wins(api):
    sms = await conversation_of(api, await inbound(api, "t1", "NE1", A, "hello"))
    admin = await make_agent(api, "admin")
    contact = await _contact(api, admin, sms)
    resp = await api.patch(
        f"/api/contacts/{contact['id']}", json={"name": None}, headers=admin.auth
    )
    assert resp.status == 200, await resp.text()
    await inbound(api, "w", "NE2", A, "on whatsapp", ProfileName="Profile Name")
    assert (await _contact(api, admin, sms))["name"] is None  # the agent chose no name
    resp = await api.patch(
        f"/api/contacts/{contact['id']}", json={"name": "Dr. Ada"}, headers=admin.auth
    )
    assert resp.status == 200
    await inbound(api, "t2", "NE3", A, "and here", ProfileName="Someone Else")
    assert (await _contact(api, admin, sms))["name"] == "Dr. Ada"
