"""WhatsApp templates (issue 15, point 4): a WhatsApp Cloud inbox lists the approved
templates of its business account (Graph API, cached), a Twilio WhatsApp sender
those of its Content API; an agent sends one with its parameters, also outside the
24-hour window where a plain reply is refused (Twilio's WhatsApp included), and an
unknown template or the wrong parameters are refused before anything is queued.

Real parts: a hub on the embedded store whose inboxes talk to the WhatsApp and
Twilio simulators (loopback HTTP servers that serve the lists and check each
template send as the providers do).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.twilio.simulator import FakeTwilio
from channels.whatsapp.simulator import FakeWhatsApp
from hub.api.base import API
from hub.app import build_app
from hub.config import parse_settings
from hub.model import IdentityRef, utcnow
from hub.services.accounts import Passwords
from hub.services.runtime import HUB, Hub
from tests.api.conftest import FAST_HASHER, make_agent
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider
from tests.support.twilio_fixtures import twilio_inbox
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
ALL = ["wa", "tw", "t1"]
CUSTOMER = "+16505551234"


@pytest.fixture
async def wa() -> AsyncIterator[FakeWhatsApp]:
    fake = FakeWhatsApp()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def tw() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def api(
    embedded_uri: str,
    db_name: str,
    tmp_path: Path,
    wa: FakeWhatsApp,
    tw: FakeTwilio,
    provider: FakeProvider,
) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    data: dict[str, Any] = {
        "store": {"uri": embedded_uri, "database": db_name},
        "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
        "events": {"poll_interval": 0.05},
        "inboxes": [
            {
                "id": "wa",
                "channel": "whatsapp",
                "phone_number_id": wa.phone_number_id,
                "access_token": wa.access_token,
                "app_secret": "wa-app-secret-0123456789abcdef",
                "verify_token": "wa-verify-token-42",
                "api_base": wa.url,
                "business_account_id": wa.business_account_id,
            },
            twilio_inbox(tw.url),
            {"id": "t1", "channel": "testchan", "secret": SECRET, "api_base": provider.url},
        ],
    }
    app = build_app(parse_settings(data, source="<test>", base_dir=tmp_path))
    async with TestClient(TestServer(app)) as client:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        yield client


def hub(client: Client) -> Hub:
    return client.app[HUB]


async def conversation(client: Client, inbox: str, medium: str, *, window_open: bool) -> str:
    """The customer's conversation in `inbox`; its last inbound message 1 hour ago
    (the window open) or 25 hours ago."""
    the_hub = hub(client)
    assert the_hub.ingestor is not None and the_hub.store is not None
    conv_id, _ = await the_hub.ingestor.open_conversation(
        inbox, medium, IdentityRef(kind="phone", value=CUSTOMER)
    )
    ago = timedelta(hours=1 if window_open else 25)
    await the_hub.store.conversations.update_one(
        {"_id": conv_id}, {"$set": {"last_inbound_at": utcnow() - ago}}
    )
    return conv_id


async def outbox_size(client: Client) -> int:
    store = hub(client).store
    assert store is not None
    return await store.outbox.count_documents({})


async def settled(client: Client, message_id: str) -> dict[str, Any]:
    store = hub(client).store
    assert store is not None
    found: dict[str, Any] = await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and m["status"] not in ("queued", "sending"),
    )
    return found


# -- listing ---------------------------------------------------------------------------


async def test_a_cloud_inbox_lists_its_approved_templates_read_once_then_cached(api, wa):
    agent = await make_agent(api, "agent", inboxes=ALL)
    resp = await api.get("/api/inboxes/wa/templates", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    listed = {(t["name"], t["language"]): t for t in body["items"]}
    assert set(listed) == {
        ("appointment_reminder", "en_US"),
        ("follow_up", "en_US"),
        ("follow_up", "ru"),
        ("hello_world", "en_US"),
        ("order_update", "en_US"),
    }
    assert listed["appointment_reminder", "en_US"] == {
        "name": "appointment_reminder",
        "language": "en_US",
        "category": "UTILITY",
        "body": "Hello {{1}}, your appointment is on {{2}}.",
        "parameters": ["1", "2"],
    }
    assert listed["follow_up", "en_US"]["parameters"] == []
    assert listed["follow_up", "en_US"]["category"] == "MARKETING"
    assert body["next_cursor"] is None
    again = await api.get("/api/inboxes/wa/templates", headers=agent.auth)
    assert (await again.json())["items"] == body["items"]
    assert wa.template_reads == 1  # the second answer came from the cache


async def test_the_template_list_pages_with_a_cursor(api, wa):
    agent = await make_agent(api, "agent", inboxes=ALL)
    seen: list[str] = []
    cursor = None
    for _ in range(6):
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(f"/api/inboxes/wa/templates{query}", headers=agent.auth)).json()
        seen += [f"{t['name']}/{t['language']}" for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [
        "appointment_reminder/en_US",
        "follow_up/en_US",
        "follow_up/ru",
        "hello_world/en_US",
        "order_update/en_US",
    ]
    bad = await api.get("/api/inboxes/wa/templates?cursor=nonsense", headers=agent.auth)
    assert bad.status == 400


async def test_a_graph_list_of_several_pages_is_read_whole(api, wa):
    wa.templates = [
        {
            "id": str(i),
            "name": f"t{i:03d}",
            "language": "en_US",
            "status": "APPROVED",
            "category": "UTILITY",
            "components": [{"type": "BODY", "text": f"Text {i}"}],
        }
        for i in range(230)
    ]
    agent = await make_agent(api, "agent", inboxes=ALL)
    names: list[str] = []
    cursor = None
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(f"/api/inboxes/wa/templates{query}", headers=agent.auth)).json()
        names += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"t{i:03d}" for i in range(230)]


async def test_a_twilio_whatsapp_sender_lists_the_content_apis_approved_templates(api, tw):
    agent = await make_agent(api, "agent", inboxes=ALL)
    resp = await api.get("/api/inboxes/tw/templates", headers=agent.auth)
    assert resp.status == 200, await resp.text()
    items = (await resp.json())["items"]
    assert [(t["name"], t["language"], t["category"]) for t in items] == [
        ("follow_up", "en", "MARKETING"),
        ("order_update", "en", "UTILITY"),
        ("welcome", "en", "UTILITY"),
    ]  # the rejected summer_sale is not offered
    assert items[1]["parameters"] == ["1", "2"]
    assert items[1]["body"] == "Hello {{1}}, your order {{2}} has shipped."
    assert tw.content_reads == 1


async def test_templates_of_an_inbox_the_agent_does_not_see_are_403(api):
    agent = await make_agent(api, "agent", inboxes=["t1"])
    resp = await api.get("/api/inboxes/wa/templates", headers=agent.auth)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"


async def test_an_inbox_without_templates_is_409_and_an_unknown_inbox_404(api):
    agent = await make_agent(api, "admin")
    resp = await api.get("/api/inboxes/t1/templates", headers=agent.auth)
    assert resp.status == 409
    assert "no message templates" in (await resp.json())["error"]["message"]
    assert (await api.get("/api/inboxes/nope/templates", headers=agent.auth)).status == 404


# -- sending -----------------------------------------------------------------------------


async def test_a_cloud_template_goes_outside_the_window_where_a_plain_reply_is_409(api, wa):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await conversation(api, "wa", "whatsapp", window_open=False)
    url = f"/api/conversations/{conv}/messages"
    plain = await api.post(url, json={"text": "hello?"}, headers=agent.auth)
    assert plain.status == 409
    assert "24-hour" in (await plain.json())["error"]["message"]
    assert await outbox_size(api) == 0
    template = {
        "name": "appointment_reminder",
        "language": "en_US",
        "parameters": ["Ann", "A-17"],
    }
    resp = await api.post(url, json={"template": template}, headers=agent.auth)
    assert resp.status == 201, await resp.text()
    message = await resp.json()
    assert message["text"] == "Hello Ann, your appointment is on A-17."
    stored = await settled(api, message["id"])
    assert stored["status"] == "sent", stored
    (sent,) = wa.sent
    assert sent["type"] == "template"
    assert sent["template"] == {
        "name": "appointment_reminder",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "A-17"}],
            }
        ],
    }


async def test_a_twilio_whatsapp_template_goes_outside_the_window_with_its_content_sid(api, tw):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await conversation(api, "tw", "whatsapp", window_open=False)
    url = f"/api/conversations/{conv}/messages"
    plain = await api.post(url, json={"text": "hello?"}, headers=agent.auth)
    assert plain.status == 409  # checked before queueing, as WhatsApp Cloud does
    assert "24-hour" in (await plain.json())["error"]["message"]
    assert await outbox_size(api) == 0 and tw.requests == []
    template = {"name": "order_update", "language": "en", "parameters": ["Ann", "A-17"]}
    resp = await api.post(url, json={"template": template}, headers=agent.auth)
    assert resp.status == 201, await resp.text()
    message = await resp.json()
    assert message["text"] == "Hello Ann, your order A-17 has shipped."
    assert (await settled(api, message["id"]))["status"] == "sent"
    (sent,) = tw.sent
    assert sent["body"]["ContentSid"] == "HX" + "1" * 32
    assert json.loads(sent["body"]["ContentVariables"]) == {"1": "Ann", "2": "A-17"}
    assert sent["to"] == f"whatsapp:{CUSTOMER}"
    assert "Body" not in sent["body"]  # the content is the message


async def test_a_twilio_whatsapp_reply_inside_the_window_and_an_sms_reply_go_as_text(api, tw):
    agent = await make_agent(api, "agent", inboxes=ALL)
    open_conv = await conversation(api, "tw", "whatsapp", window_open=True)
    resp = await api.post(
        f"/api/conversations/{open_conv}/messages", json={"text": "hi"}, headers=agent.auth
    )
    assert resp.status == 201, await resp.text()
    store = hub(api).store
    assert store is not None
    sms_conv, _ = await hub(api).ingestor.open_conversation(  # type: ignore[union-attr]
        "tw", "sms", IdentityRef(kind="phone", value="+16505550000")
    )
    resp = await api.post(
        f"/api/conversations/{sms_conv}/messages", json={"text": "hi"}, headers=agent.auth
    )
    assert resp.status == 201, await resp.text()  # SMS has no window


async def test_an_unknown_template_or_the_wrong_parameters_are_422_and_nothing_is_queued(api, wa):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await conversation(api, "wa", "whatsapp", window_open=False)
    url = f"/api/conversations/{conv}/messages"
    cases = [
        ({"name": "no_such", "language": "en_US"}, "'no_such'"),
        ({"name": "follow_up", "language": "de"}, "approved in: en_US, ru"),
        ({"name": "appointment_reminder", "language": "en_US", "parameters": ["A"]}, "takes 2"),
        ({"name": "follow_up", "language": "en_US", "parameters": ["x"]}, "takes 0"),
    ]
    for template, named in cases:
        resp = await api.post(url, json={"template": template}, headers=agent.auth)
        assert resp.status == 422, template
        error = (await resp.json())["error"]
        assert error["message"].startswith("template: ") and named in error["message"], error
    assert await outbox_size(api) == 0
    assert wa.requests == []


async def test_a_template_on_an_inbox_without_templates_is_422(api):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv, _ = await hub(api).ingestor.open_conversation(  # type: ignore[union-attr]
        "t1", "sms", IdentityRef(kind="phone", value=CUSTOMER)
    )
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"template": {"name": "x", "language": "en"}},
        headers=agent.auth,
    )
    assert resp.status == 422
    assert await outbox_size(api) == 0


async def test_a_template_cannot_be_a_note_or_sent_later_and_a_reply_needs_text_or_template(api):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await conversation(api, "wa", "whatsapp", window_open=True)
    url = f"/api/conversations/{conv}/messages"
    template = {"name": "follow_up", "language": "en_US"}
    for body in ({"template": template, "private": True}, {"private": False}, {}):
        resp = await api.post(url, json=body, headers=agent.auth)
        assert resp.status == 400, body
    assert await outbox_size(api) == 0
