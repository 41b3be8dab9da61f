"""The sandbox end to end: a customer writes on the sandbox page's JSON API, the
message reaches the hub through the real adapter (signed webhook or SMTP), an
agent's reply comes back to the customer's view with its delivery status, and a
call pops the caller's card. Off by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.services.runtime import HUB, Hub
from tests.support.waiting import eventually, next_event, of_type

Client = TestClient[web.Request, web.Application]

# line, address written, the hub's medium, the address the hub stores, the hub
# status the reply reaches (Telegram's Bot API reports no delivery).
CASES = [
    ("sms:sms", "+1 555 123 0001", "sms", "+15551230001", "delivered"),
    ("sms:whatsapp", "+15551230002", "whatsapp", "+15551230002", "delivered"),
    ("wa:whatsapp", "+15551230003", "whatsapp", "+15551230003", "delivered"),
    ("tg:telegram", "+15551230004", "telegram", None, "sent"),
    ("mail:email", "Alex@Example.org", "email", "alex@example.org", "delivered"),
    ("mail2:email", "bea@example.org", "email", "bea@example.org", "delivered"),
]


def hub_of(client: Client) -> Hub:
    return client.app[HUB]


async def thread(client: Client, line: str, address: str) -> list[dict[str, Any]]:
    response = await client.get("/sandbox/api/messages", params={"line": line, "address": address})
    assert response.status == 200, await response.text()
    return list((await response.json())["messages"])


async def test_sandbox_is_off_by_default(embedded_uri: str, db_name: str, tmp_path: Any) -> None:
    settings = parse_settings(
        {"store": {"uri": embedded_uri, "database": db_name}}, base_dir=tmp_path
    )
    assert settings.sandbox.enabled is False
    async with TestClient(TestServer(build_app(settings))) as client:
        for path in ("/sandbox", "/sandbox/api/lines", "/sandbox/static/sandbox.js"):
            assert (await client.get(path)).status == 404
        assert (await client.post("/sandbox/api/messages", json={})).status == 404


async def test_the_page_and_its_lines(sandbox_client: Client) -> None:
    page = await sandbox_client.get("/sandbox")
    assert page.status == 200
    html = await page.text()
    assert "SANDBOX" in html and "<script" in html and "sandbox.js" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert (await sandbox_client.get("/sandbox/static/sandbox.js")).status == 200
    assert (await sandbox_client.get("/sandbox/static/other.js")).status == 404
    lines = (await (await sandbox_client.get("/sandbox/api/lines")).json())["lines"]
    keys = {line["key"] for line in lines}
    assert keys == {
        "sms:sms", "sms:whatsapp", "sms:voice", "tg:telegram", "wa:whatsapp",
        "mail:email", "mail2:email", "pbx:voice",
    }  # fmt: skip
    # The inboxes talk to the simulators, not to the providers.
    hub = hub_of(sandbox_client)
    sandbox_base = hub.settings.inbox("sms").settings.api_base  # type: ignore[union-attr]
    assert sandbox_base.startswith("http://127.0.0.1:")
    assert "twilio.com" not in sandbox_base


async def test_a_form_post_is_refused(sandbox_client: Client) -> None:
    response = await sandbox_client.post(
        "/sandbox/api/messages", data={"line": "sms:sms", "text": "hi"}
    )
    assert response.status == 415


@pytest.mark.parametrize(("line", "address", "medium", "stored", "hub_status"), CASES)
async def test_customer_message_and_agent_reply_round_trip(
    sandbox_client: Client,
    line: str,
    address: str,
    medium: str,
    stored: str | None,
    hub_status: str,
) -> None:
    hub = hub_of(sandbox_client)
    assert hub.store is not None
    text = f"Hello from the sandbox on {line}"
    response = await sandbox_client.post(
        "/sandbox/api/messages",
        json={
            "line": line,
            "name": "Alex Customer",
            "address": address,
            "text": text,
            "subject": "Order 42",
        },
    )
    assert response.status == 201, await response.text()
    sent = await response.json()
    assert sent["message"]["status"] == "sent", sent["message"]["error"]

    # It arrived through the adapter: a conversation of the right medium and inbox.
    inbox = line.split(":")[0]
    message = await eventually(
        lambda: hub.store.messages.find_one({"text": text}),  # type: ignore[union-attr]
    )
    assert message["direction"] == "in"
    conversation = await hub.store.conversations.find_one({"_id": message["conversation_id"]})
    assert conversation is not None
    assert conversation["inbox"] == inbox and conversation["channel"] == medium
    if stored is not None:
        contact = await hub.store.contacts.find_one({"_id": conversation["contact_id"]})
        assert contact is not None
        assert stored in contact.get("phones", []) + contact.get("emails", [])

    # An agent replies; the customer's view shows it delivered.
    reply = f"Agent answer on {line}"
    doc = await hub.reply(
        str(conversation["_id"]), text=reply, sender={"type": "agent", "id": "a1"}
    )
    entries = await eventually(
        lambda: thread(sandbox_client, line, sent["address"]),
        lambda got: any(e["text"] == reply and e["status"] == "delivered" for e in got),
    )
    assert [e["direction"] for e in entries] == ["in", "out"]
    if medium == "email":
        assert entries[1]["subject"] and "Order 42" in entries[1]["subject"]
    stored_reply = await eventually(
        lambda: hub.store.messages.find_one({"_id": doc["_id"]}),  # type: ignore[union-attr]
        lambda m: m is not None and m["status"] == hub_status,
    )
    assert stored_reply["status"] == hub_status


async def test_an_email_answer_threads_into_the_same_conversation(sandbox_client: Client) -> None:
    hub = hub_of(sandbox_client)
    assert hub.store is not None
    body = {"line": "mail:email", "name": "Cy", "address": "cy@example.org"}
    await sandbox_client.post("/sandbox/api/messages", json={**body, "text": "first"})
    first = await eventually(lambda: hub.store.messages.find_one({"text": "first"}))  # type: ignore[union-attr]
    await hub.reply(str(first["conversation_id"]), text="ok", sender={"type": "agent", "id": "a"})
    await eventually(
        lambda: thread(sandbox_client, "mail:email", "cy@example.org"),
        lambda got: any(e["direction"] == "out" and e["status"] == "delivered" for e in got),
    )
    await sandbox_client.post("/sandbox/api/messages", json={**body, "text": "second"})
    second = await eventually(lambda: hub.store.messages.find_one({"text": "second"}))  # type: ignore[union-attr]
    assert second["conversation_id"] == first["conversation_id"]


@pytest.mark.parametrize("line", ["sms:voice", "pbx:voice"])
async def test_a_call_pops_the_caller_card_and_leaves_a_voicemail(
    sandbox_client: Client, line: str
) -> None:
    hub = hub_of(sandbox_client)
    assert hub.store is not None
    subscription = hub.bus.subscribe()
    response = await sandbox_client.post(
        "/sandbox/api/calls", json={"line": line, "name": "Dee Caller", "address": "+15551239999"}
    )
    assert response.status == 201, await response.text()
    call = (await response.json())["call"]
    event = await next_event(subscription, of_type("call.incoming", call_id=call["id"]))
    assert event.data["from"] == "+15551239999"
    assert event.data["contact"]["phones"] == ["+15551239999"]
    if line == "sms:voice":
        assert "Thanks for calling the sandbox." in call["heard"]
    hung = await sandbox_client.post(
        f"/sandbox/api/calls/{call['id']}/hangup", json={"voicemail": True}
    )
    assert hung.status == 200
    voicemail = await eventually(
        lambda: hub.store.messages.find_one({"kind": "voicemail"}),  # type: ignore[union-attr]
    )
    assert voicemail["call"]["recording_url"]
    calls = await eventually(
        lambda: hub.store.messages.find_one({"kind": "call"}),  # type: ignore[union-attr]
    )
    assert calls["call"]["status"] == "missed"


async def test_bad_customer_input_is_refused(sandbox_client: Client) -> None:
    for body in (
        {"line": "nope", "address": "+15551230001", "text": "x"},
        {"line": "sms:sms", "address": "not a number", "text": "x"},
        {"line": "mail:email", "address": "nobody", "text": "x"},
        {"line": "sms:sms", "address": "+15551230001", "text": "   "},
        {"line": "sms:voice", "address": "+15551230001", "text": "x"},
    ):
        response = await sandbox_client.post("/sandbox/api/messages", json=body)
        assert response.status == 400, body
        assert (await response.json())["error"]["code"] == "bad_request"


def test_sandbox_inboxes_must_exist(sandbox_settings: Callable[..., Settings]) -> None:
    from hub.config import ConfigError

    with pytest.raises(ConfigError, match=r"sandbox\.inboxes"):
        sandbox_settings(inboxes=["missing"])
