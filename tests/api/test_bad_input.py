"""What a hostile or careless client sends: every refusal is a 400 in the API's
error shape (`{"error": {"code", "message"}}`), and none is logged as an error.

- JSON nested too deep (Python's `RecursionError`) or with an integer too long
  for Python (`ValueError`), on every JSON route and on the webhooks that read
  JSON (Telegram, WhatsApp);
- cursors whose time has no zone, or whose zone puts it outside the years
  Python and BSON share;
- report ranges whose days' bounds are not representable;
- `snooze_until` that is not a time in years 1-9999 once in UTC;
- booleans and enums given as something else (`"private": 0` is not `false`).

And a JSON body over the API's limit is a 413 in the same shape.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from channels.base import MalformedPayload, json_object
from hub.api import ROUTES
from hub.api.base import Route
from tests.api.conftest import conversation_of, hub, inbound, make_agent
from tests.channels import test_telegram as tg
from tests.channels import test_whatsapp as wa

# The webhooks' fixtures, from their own tests.
telegram, tg_settings, tg_client = tg.telegram, tg.tg_settings, tg.tg_client
graph, wa_settings, wa_client = wa.graph, wa.wa_settings, wa.wa_client

DEEP = b"[" * 50_000 + b"]" * 50_000  # RecursionError in json.loads
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
NESTED_5000 = b"[" * 5_000 + b"]" * 5_000  # parses, but nests far past any real body
LONG_INT = b'{"text": ' + b"7" * 5_000 + b"}"  # ValueError: int digits limit
HOSTILE = {
    "deep-array": DEEP,
    "deep-object": DEEP_OBJECT,
    "nested-5000": NESTED_5000,
    "nested-in-a-field": b'{"text": ' + b"[" * 200 + b"]" * 200 + b"}",
    "long-int": LONG_INT,
    "long-int-in-a-list": b'{"labels": [' + b"9" * 10_000 + b"]}",
}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def refused(resp: Any, status: int = 400) -> dict[str, str]:
    """The error of a refusal in the API's shape."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def cursor_of(stamp: str | None, ident: str = "zzzz") -> str:
    raw = json.dumps([stamp, ident], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def body_routes() -> Iterator[Route]:
    return (r for r in ROUTES if r.body is not None)


# -- JSON too deep or with too long a number ----------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("route", list(body_routes()), ids=lambda r: f"{r.method} {r.path}")
async def test_hostile_json_is_a_400_on_every_json_route(api, caplog, route, name):
    admin = await make_agent(api, "admin")
    headers = {"Content-Type": "application/json"}
    if route.role is not None:
        headers.update(admin.auth)
    path = re.sub(r"{\w+}", "nope", route.path)
    caplog.clear()
    resp = await api.request(route.method, path, data=HOSTILE[name], headers=headers)
    error = await refused(resp)
    assert error["code"] in {"bad_request", "invalid"}
    assert errors_logged(caplog) == []


async def test_a_too_deep_body_is_named_and_a_plain_one_still_works(api, caplog):
    resp = await api.post(
        "/api/auth/login", data=DEEP, headers={"Content-Type": "application/json"}
    )
    assert "deep" in (await refused(resp))["message"]
    resp = await api.post(
        "/api/auth/login", data=LONG_INT, headers={"Content-Type": "application/json"}
    )
    assert "digits" in (await refused(resp))["message"]
    # Nesting well within the cap is read (and then validated as usual).
    body = {"email": "x@example.com", "password": "wrong", "k": [[[[[[[[1]]]]]]]]}
    resp = await api.post("/api/auth/login", json=body)
    assert (await refused(resp))["code"] == "invalid"
    assert errors_logged(caplog) == []


async def test_a_json_body_over_the_limit_is_413_in_the_error_shape(api):
    admin = await make_agent(api, "admin")
    text = "x" * (1024 * 1024 + 1)
    resp = await api.post("/api/contacts", json={"name": text}, headers=admin.auth)
    assert (await refused(resp, 413))["code"] == "too_large"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_json_object_refuses_hostile_json_as_malformed(name):
    with pytest.raises(MalformedPayload):
        json_object(HOSTILE[name])


def test_json_object_still_reads_real_payloads():
    assert json_object(b'{"a": [{"b": {"c": [1, 2, 3]}}], "n": 12345678901234567890}') == {
        "a": [{"b": {"c": [1, 2, 3]}}],
        "n": 12345678901234567890,
    }


@pytest.mark.parametrize("name", ["deep-array", "deep-object", "long-int"])
async def test_the_telegram_webhook_refuses_hostile_json_with_a_400(tg_client, caplog, name):
    resp = await tg.post_update(tg_client, HOSTILE[name])
    assert (await refused(resp))["code"] == "bad_request"
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("name", ["deep-array", "deep-object", "long-int"])
async def test_the_whatsapp_webhook_refuses_hostile_json_with_a_400(wa_client, caplog, name):
    resp = await wa.post(wa_client, HOSTILE[name])
    assert (await refused(resp))["code"] == "bad_request"
    assert await wa.counts(wa_client) == wa.NOTHING
    assert errors_logged(caplog) == []


# -- cursors ----------------------------------------------------------------------------------

BAD_STAMPS = [
    "2024-05-01T10:00:00",  # no zone: not a cursor the API gave
    "0001-01-01T00:00:00+23:59",  # before year 1 in UTC
    "9999-12-31T23:59:59-23:59",  # after year 9999 in UTC
    "0001-01-01T00:30:00+01:00",
]


@pytest.mark.parametrize("stamp", BAD_STAMPS)
@pytest.mark.parametrize("path", ["/api/conversations", "/api/contacts", "/api/contacts?q=someone"])
async def test_a_cursor_with_a_naive_or_unrepresentable_time_is_a_400(api, caplog, path, stamp):
    await inbound(api, "t1", "SMc1", "+15551230001", "hello")
    admin = await make_agent(api, "admin")
    sep = "&" if "?" in path else "?"
    caplog.clear()
    resp = await api.get(f"{path}{sep}cursor={cursor_of(stamp)}", headers=admin.auth)
    error = await refused(resp)
    assert error["code"] == "invalid"
    assert "cursor" in error["message"]
    assert errors_logged(caplog) == []


async def test_a_cursor_with_a_zone_other_than_utc_still_pages(api):
    await inbound(api, "t1", "SMc2", "+15551230002", "hello")
    admin = await make_agent(api, "admin")
    india = timezone(timedelta(hours=5, minutes=30))
    later = (datetime.now(UTC) + timedelta(days=1)).astimezone(india).isoformat()
    resp = await api.get(f"/api/conversations?cursor={cursor_of(later)}", headers=admin.auth)
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["items"]) == 1


# -- report ranges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("to=0001-01-01", "to"),
        ("to=9999-12-31", "to"),
        ("from=9999-12-31&to=9999-12-31", "to"),
        ("from=0001-01-01&to=0001-01-02", "from"),
        ("from=0001-01-01&to=0001-01-01", "from"),
    ],
)
async def test_report_days_beyond_the_calendar_are_a_400_naming_the_parameter(
    api, caplog, query, named
):
    supervisor = await make_agent(api, "supervisor")
    caplog.clear()
    resp = await api.get(f"/api/reports/summary?{query}", headers=supervisor.auth)
    error = await refused(resp)
    assert error["code"] == "invalid"
    assert f"{named}:" in error["message"], error
    assert errors_logged(caplog) == []


@pytest.mark.parametrize(
    ("query", "first", "last"),
    [
        ("to=0001-01-03", "0001-01-02", "0001-01-03"),  # the default week, cut at the start
        ("from=0001-01-02&to=0001-01-02", "0001-01-02", "0001-01-02"),
        ("from=9999-12-30&to=9999-12-30", "9999-12-30", "9999-12-30"),
    ],
)
async def test_report_days_at_the_ends_of_the_calendar_are_reported(api, query, first, last):
    supervisor = await make_agent(api, "supervisor")
    resp = await api.get(f"/api/reports/summary?{query}", headers=supervisor.auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["from"], body["to"]) == (first, last)


# -- snooze_until ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "until",
    [
        "9999-12-31T23:00:00-05:00",
        "9999-12-31T23:59:59.999999-00:01",
        "9999-12-31T12:00:00-23:59",
    ],
)
async def test_snooze_until_past_year_9999_in_utc_is_a_400(api, caplog, until):
    conv = await conversation_of(api, await inbound(api, "t1", "SMs1", "+15551230003", "x"))
    admin = await make_agent(api, "admin")
    store = hub(api).store
    before = await store.conversations.find_one({"_id": conv})
    caplog.clear()
    resp = await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "snoozed", "snooze_until": until},
        headers=admin.auth,
    )
    error = await refused(resp)
    assert error["code"] == "invalid"
    assert error["message"].startswith("snooze_until:")
    assert await store.conversations.find_one({"_id": conv}) == before
    assert errors_logged(caplog) == []


async def test_snooze_until_with_an_offset_is_stored_in_utc(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMs2", "+15551230004", "x"))
    admin = await make_agent(api, "admin")
    until = "9999-12-31T18:00:00-05:00"  # 23:00 UTC, the last hour there is
    resp = await api.patch(
        f"/api/conversations/{conv}",
        json={"status": "snoozed", "snooze_until": until},
        headers=admin.auth,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["snooze_until"].startswith("9999-12-31T23:00:00")


# -- strict booleans and enums ----------------------------------------------------------------


@pytest.mark.parametrize("private", [0, 1, "false", "true", "", None, [], 0.0])
async def test_private_must_be_a_json_boolean(api, private):
    conv = await conversation_of(api, await inbound(api, "t1", "SMp1", "+15551230005", "x"))
    admin = await make_agent(api, "admin")
    store = hub(api).store
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "for colleagues only", "private": private},
        headers=admin.auth,
    )
    error = await refused(resp)
    assert error["code"] == "invalid"
    assert error["message"].startswith("private:")
    assert await store.messages.count_documents({"text": "for colleagues only"}) == 0
    assert await store.outbox.count_documents({}) == 0


async def test_private_true_is_a_note(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMp2", "+15551230006", "x"))
    admin = await make_agent(api, "admin")
    resp = await api.post(
        f"/api/conversations/{conv}/messages",
        json={"text": "a note", "private": True},
        headers=admin.auth,
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["kind"] == "note"


@pytest.mark.parametrize("active", [0, 1, "false", "no"])
async def test_an_agents_active_flag_must_be_a_json_boolean(api, active):
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent")
    resp = await api.patch(f"/api/agents/{agent.id}", json={"active": active}, headers=admin.auth)
    assert (await refused(resp))["message"].startswith("active:")


@pytest.mark.parametrize("opted", [0, 1, "true", "off"])
async def test_opt_outs_must_be_json_booleans(api, opted):
    agent = await make_agent(api, "agent")
    created = await api.post("/api/contacts", json={"name": "Ann"}, headers=agent.auth)
    assert created.status == 201, await created.text()
    contact = await created.json()
    resp = await api.patch(
        f"/api/contacts/{contact['id']}", json={"opted_out": {"sms": opted}}, headers=agent.auth
    )
    assert (await refused(resp))["message"].startswith("opted_out.sms:")


@pytest.mark.parametrize("status", ["Open", " open", "OPEN", 1, True, ["open"]])
async def test_enums_take_only_their_exact_values(api, status):
    conv = await conversation_of(api, await inbound(api, "t1", "SMe1", "+15551230007", "x"))
    admin = await make_agent(api, "admin")
    resp = await api.patch(
        f"/api/conversations/{conv}", json={"status": status}, headers=admin.auth
    )
    assert (await refused(resp))["message"].startswith("status:")
    if isinstance(status, str):
        listed = await api.get("/api/conversations", params={"status": status}, headers=admin.auth)
        assert (await refused(listed))["message"].startswith("status:")


def _core_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from _core_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _core_nodes(value)


def request_models() -> set[type[BaseModel]]:
    return {m for r in ROUTES for m in (r.body, r.query) if m is not None}


@pytest.mark.parametrize("model", sorted(request_models(), key=lambda m: m.__name__))
def test_every_boolean_a_request_takes_is_strict(model):
    schema = model.__pydantic_core_schema__
    for node in _core_nodes(schema):
        if node["type"] == "bool":
            assert node.get("strict") is True, f"{model.__name__}: a lax bool"


def flags_model() -> type[BaseModel]:
    from hub.api.schemas import QueryBool

    class Flags(BaseModel):
        flag: QueryBool = False

    return Flags


@pytest.mark.parametrize(("given", "read"), [("true", True), ("false", False)])
def test_a_query_boolean_is_true_or_false(given, read):
    assert flags_model().model_validate({"flag": given}).flag is read


@pytest.mark.parametrize("given", ["1", "0", "yes", "on", "True", "FALSE", "", 1, 0])
def test_a_query_boolean_is_nothing_else(given):
    with pytest.raises(ValidationError):
        flags_model().model_validate({"flag": given})


def test_the_request_models_checked_include_those_that_matter_most():
    names = {m.__name__ for m in request_models()}
    assert {"MessageIn", "AgentPatch", "ContactPatch", "ConversationPatch"} <= names
