"""`POST /api/conversations {"contact_id", "inbox"}` (issue 15): an agent opens the
contact's conversation in an inbox to write first (on WhatsApp, with a template),
or gets the one already open; the agent must see the inbox. Real hub, embedded
store, the providers' simulators (the fixtures of test_media_out)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import make_agent
from tests.api.test_media_out import ALL, api, sims  # noqa: F401 (fixtures)


async def contact(client: Any, agent: Any, **fields: Any) -> str:
    resp = await client.post("/api/contacts", json=fields, headers=agent.auth)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def test_an_agent_opens_a_contacts_conversation_then_gets_the_same_one(api, sims):  # noqa: F811
    agent = await make_agent(api, "agent", inboxes=ALL)
    ann = await contact(api, agent, name="Ann", phones=["+16505551234"])
    resp = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "wa"}, headers=agent.auth
    )
    assert resp.status == 201, await resp.text()
    opened = await resp.json()
    assert opened["inbox"] == "wa" and opened["channel"] == "whatsapp"
    assert opened["contact"]["id"] == ann
    again = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "wa"}, headers=agent.auth
    )
    assert again.status == 200
    assert (await again.json())["id"] == opened["id"]
    # Outside the window (no message from the customer yet) a template opens it.
    template = {"name": "follow_up", "language": "en_US"}
    sent = await api.post(
        f"/api/conversations/{opened['id']}/messages",
        json={"template": template},
        headers=agent.auth,
    )
    assert sent.status == 201, await sent.text()


async def test_a_twilio_inbox_opens_on_the_medium_asked_for(api, sims):  # noqa: F811
    agent = await make_agent(api, "agent", inboxes=ALL)
    ann = await contact(api, agent, phones=["+16505551234"])
    resp = await api.post(
        "/api/conversations",
        json={"contact_id": ann, "inbox": "tw", "medium": "whatsapp"},
        headers=agent.auth,
    )
    assert resp.status == 201
    assert (await resp.json())["channel"] == "whatsapp"
    sms = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "tw"}, headers=agent.auth
    )
    assert (await sms.json())["channel"] == "sms"  # the inbox's first medium


async def test_a_contact_without_an_identity_the_inbox_writes_to_is_422(api, sims):  # noqa: F811
    agent = await make_agent(api, "agent", inboxes=ALL)
    ann = await contact(api, agent, emails=["ann@example.com"])
    resp = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "tg"}, headers=agent.auth
    )
    assert resp.status == 422
    assert "no identity inbox tg can write to" in (await resp.json())["error"]["message"]
    mail = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "mail"}, headers=agent.auth
    )
    assert mail.status == 201


async def test_an_inbox_the_agent_does_not_see_is_403_and_unknowns_are_404(api, sims):  # noqa: F811
    admin = await make_agent(api, "admin")
    ann = await contact(api, admin, phones=["+16505551234"])
    outsider = await make_agent(api, "agent", inboxes=["mail"])
    resp = await api.post(
        "/api/conversations", json={"contact_id": ann, "inbox": "wa"}, headers=outsider.auth
    )
    assert resp.status == 403
    for body in ({"contact_id": "nobody", "inbox": "wa"}, {"contact_id": ann, "inbox": "nope"}):
        missing = await api.post("/api/conversations", json=body, headers=admin.auth)
        assert missing.status == 404, body
