"""Contacts do not leak across inboxes (security probe, medium).

An agent limited to some inboxes sees a contact only when the contact has a
conversation in one of them, or when the agent created it and it has none yet.
The list, the search, one contact, the realtime events and the 409 of a taken
phone number all follow that rule; supervisors still see everything.
"""

from __future__ import annotations

from hub.model import IdentityRef
from hub.services.runtime import ChannelServices
from tests.api.conftest import conversation_of, hub, inbound, make_agent

A = "+15551230001"
B = "+15551230002"
C = "+15551230003"


async def _contact_of(api, message_id):
    store = hub(api).store
    conv = await store.conversations.find_one({"_id": await conversation_of(api, message_id)})
    return str(conv["contact_id"])


async def _names(api, agent, query=""):
    resp = await api.get(f"/api/contacts{query}", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    return [c["name"] for c in (await resp.json())["items"]]


async def _create(api, agent, **body):
    resp = await api.post("/api/contacts", json=body, headers=agent.auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_list_and_search_show_an_agent_only_the_contacts_of_its_inboxes(api):
    await inbound(api, "t1", "SMp1", A, "hi", ProfileName="Ann Seen")
    hidden = await _contact_of(api, await inbound(api, "t2", "SMp2", B, "hi", ProfileName="Bea"))
    agent = await make_agent(api, inboxes=["t1"])
    assert await _names(api, agent) == ["Ann Seen"]
    assert await _names(api, agent, "?q=bea") == []
    assert await _names(api, agent, "?q=%2B15551230002") == []  # an identity lookup
    assert await _names(api, agent, "?q=555-123-0002") == []
    assert await _names(api, agent, "?q=1555123") == ["Ann Seen"]  # a "contains" search
    await hub(api).store.contacts.update_one({"_id": hidden}, {"$set": {"labels": ["vip"]}})
    assert await _names(api, agent, "?label=vip") == []
    # Nothing changed for a supervisor.
    boss = await make_agent(api, "supervisor")
    assert await _names(api, boss) == ["Bea", "Ann Seen"]
    assert await _names(api, boss, "?q=bea") == ["Bea"]


async def test_an_agent_pages_through_its_own_contacts_with_the_cursor(api):
    agent = await make_agent(api, inboxes=["t1"])
    for n in range(4):
        await inbound(api, "t1", f"SMpg{n}", f"+1555888000{n}", "hi", ProfileName=f"In {n}")
        await inbound(api, "t2", f"SMpx{n}", f"+1555777000{n}", "hi", ProfileName=f"Out {n}")
    await _create(api, agent, name="Self", labels=["l"])
    await _create(api, await make_agent(api, inboxes=["t1"]), name="Colleague's")
    names, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = await (await api.get(f"/api/contacts{query}", headers=agent.auth)).json()
        names += [c["name"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert names == ["Self", "In 3", "In 2", "In 1", "In 0"]
    assert await _names(api, agent, "?q=in&limit=2") == ["In 3", "In 2"]
    assert await _names(api, agent, "?label=l") == ["Self"]


async def test_a_contact_is_its_creators_only_until_it_talks_to_an_inbox(api):
    creator = await make_agent(api, inboxes=["t1"])
    colleague = await make_agent(api, inboxes=["t1"])
    made = await _create(api, creator, name="New Person", phones=[C], attributes={"k": "v"})
    assert (await api.get(f"/api/contacts/{made['id']}", headers=creator.auth)).status == 200
    assert (await api.get(f"/api/contacts/{made['id']}", headers=colleague.auth)).status == 403
    patch = await api.patch(
        f"/api/contacts/{made['id']}", json={"name": "X"}, headers=colleague.auth
    )
    assert patch.status == 403
    assert await _names(api, creator) == ["New Person"]
    assert await _names(api, colleague) == []
    assert await _names(api, colleague, "?q=new") == []
    # It writes to t2, which neither sees: now it is t2's contact, not its creator's.
    await inbound(api, "t2", "SMp3", C, "hello from t2")
    assert (await api.get(f"/api/contacts/{made['id']}", headers=creator.auth)).status == 403
    assert await _names(api, creator) == []
    assert await _names(api, creator, "?q=new") == []
    two = await make_agent(api, inboxes=["t2"])
    assert await _names(api, two) == ["New Person"]


async def _contact_events(ws, timeout=2.0):
    """The next contact.* event on the socket."""
    while True:
        event = await ws.receive_json(timeout=timeout)
        if event["type"].startswith("contact."):
            return event


async def _connect(api, agent):
    ws = await api.ws_connect(f"/api/ws?token={agent.token}")
    assert (await ws.receive_json(timeout=2))["type"] == "hello"
    return ws


async def test_contact_events_reach_only_agents_who_may_see_the_contact(api):
    seen = await _contact_of(api, await inbound(api, "t1", "SMe1", A, "hi", ProfileName="Ann"))
    hidden = await _contact_of(api, await inbound(api, "t2", "SMe2", B, "hi", ProfileName="Bea"))
    both = await _contact_of(api, await inbound(api, "t1", "SMe3", C, "hi", ProfileName="Cy"))
    await inbound(api, "t2", "SMe4", C, "also on t2")
    one = await make_agent(api, inboxes=["t1"])
    two = await make_agent(api, inboxes=["t2"])
    boss = await make_agent(api, "supervisor")
    ws_one, ws_two, ws_boss = [await _connect(api, a) for a in (one, two, boss)]

    # A supervisor's edit of t2's contact: t2's agent and the supervisor get it.
    resp = await api.patch(
        f"/api/contacts/{hidden}", json={"attributes": {"secret": "s"}}, headers=boss.auth
    )
    assert resp.status == 200
    for ws in (ws_two, ws_boss):
        event = await _contact_events(ws)
        assert event["data"]["id"] == hidden and event["data"]["attributes"] == {"secret": "s"}
    # A channel's opt-out and a merge of t2's contacts: not for t1's agent either.
    await ChannelServices(hub(api)).opt_out(IdentityRef(kind="phone", value=B), "sms")
    assert (await _contact_events(ws_two))["data"] == {"id": hidden, "opted_out": {"sms": True}}
    other = await _contact_of(api, await inbound(api, "t2", "SMe5", "+15551230009", "x"))
    merged = await api.post(
        f"/api/contacts/{hidden}/merge", json={"other_id": other}, headers=boss.auth
    )
    assert merged.status == 200
    assert (await _contact_events(ws_two))["type"] == "contact.merged"

    # The contact of both inboxes: each agent is sent the conversations it sees.
    resp = await api.patch(f"/api/contacts/{both}", json={"name": "Cy Two"}, headers=boss.auth)
    assert resp.status == 200
    assert {c["inbox"] for c in (await resp.json())["conversations"]} == {"t1", "t2"}
    for ws, inboxes in ((ws_one, {"t1"}), (ws_two, {"t2"}), (ws_boss, {"t1", "t2"})):
        event = await _contact_events(ws)
        while ws is not ws_one and event["data"]["id"] != both:
            event = await _contact_events(ws)
        # t1's agent got nothing of t2's contact: its first contact event is Cy's.
        assert event["data"]["id"] == both and event["data"]["name"] == "Cy Two"
        assert {c["inbox"] for c in event["data"]["conversations"]} == inboxes

    resp = await api.patch(f"/api/contacts/{seen}", json={"name": "Ann L"}, headers=boss.auth)
    assert resp.status == 200
    event = await _contact_events(ws_one)
    assert event["data"]["id"] == seen and event["data"]["name"] == "Ann L"
    for ws in (ws_one, ws_two, ws_boss):
        await ws.close()


async def test_events_of_a_new_contact_reach_its_creator_not_its_colleagues(api):
    creator = await make_agent(api, inboxes=["t1"])
    colleague = await make_agent(api, inboxes=["t1"])
    ws_creator, ws_colleague = await _connect(api, creator), await _connect(api, colleague)
    made = await _create(api, creator, name="Private", attributes={"k": "v"})
    event = await _contact_events(ws_creator)
    assert event["data"]["id"] == made["id"]
    await inbound(api, "t1", "SMe6", A, "hi", ProfileName="Ann")
    ann = await api.get("/api/contacts?q=ann", headers=colleague.auth)
    ann_id = (await ann.json())["items"][0]["id"]
    assert (
        await api.patch(f"/api/contacts/{ann_id}", json={"name": "Ann"}, headers=colleague.auth)
    ).status == 200
    event = await _contact_events(ws_colleague)
    assert event["data"]["id"] == ann_id  # the creator's new contact never came
    await ws_creator.close()
    await ws_colleague.close()


async def test_a_taken_phone_names_its_contact_only_to_who_may_see_it(api):
    hidden = await _contact_of(api, await inbound(api, "t2", "SMc1", B, "hi"))
    agent = await make_agent(api, inboxes=["t1"])
    resp = await api.post("/api/contacts", json={"phones": [B]}, headers=agent.auth)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "identity_taken"
    assert hidden not in error["message"]
    mine = await _create(api, agent, name="Mine")
    resp = await api.patch(f"/api/contacts/{mine['id']}", json={"phones": [B]}, headers=agent.auth)
    assert resp.status == 409
    assert hidden not in (await resp.json())["error"]["message"]
    # Who may see the owner is still told which contact it is.
    boss = await make_agent(api, "supervisor")
    resp = await api.post("/api/contacts", json={"phones": [B]}, headers=boss.auth)
    assert resp.status == 409
    assert hidden in (await resp.json())["error"]["message"]
    resp = await api.post("/api/contacts", json={"phones": ["(555) 123-0002"]}, headers=agent.auth)
    assert resp.status == 409
    own = await _create(api, agent, name="Own", phones=[A])
    resp = await api.post("/api/contacts", json={"phones": [A]}, headers=agent.auth)
    assert resp.status == 409
    assert own["id"] in (await resp.json())["error"]["message"]
