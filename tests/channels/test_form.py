"""The lead-form channel (issue 3, point 7): a signed form post becomes a contact
(found or created by phone or e-mail, fields as attributes) and an open conversation.

Every test runs a real hub (embedded store) with two inboxes: `site` (the form
channel) and `t1`, a test-channel SMS inbox for contacts that already wrote.
"""

from __future__ import annotations

import html
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.base import PermanentSendError
from channels.form import NO_REPLY_REASON, FormChannel, FormSettings
from channels.signing import sign
from hub.app import build_app
from hub.config import ConfigError, Settings, parse_settings
from hub.model import OutboundMessage
from hub.services.outbox import OutboxError
from tests.conftest import SECRET, hub_of, post_inbound
from tests.support.context import detached_context
from tests.support.fakeprovider import FakeProvider

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "form"
FORM_SECRET = "form-secret-0123456789abcdef"
URL = "/webhooks/forms/site"
JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"

Client = TestClient[web.Request, web.Application]


def fixture_json(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_multipart() -> tuple[str, bytes]:
    """The multipart fixture: its Content-Type header line and its body."""
    head, _, body = (FIXTURES / "multipart.txt").read_bytes().partition(b"\r\n\r\n")
    return head.decode().split(":", 1)[1].strip(), body


def with_fields(fixture: str, /, **changes: Any) -> bytes:
    payload = json.loads(fixture_json(fixture))
    payload.update(changes)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


async def post(
    client: Client,
    body: bytes,
    content_type: str = JSON,
    *,
    secret: str = FORM_SECRET,
    signature: str | None = None,
) -> Any:
    headers = {"Content-Type": content_type}
    headers["X-Signature"] = sign(secret, body) if signature is None else signature
    return await client.post(URL, data=body, headers=headers)


async def counts(client: Client) -> dict[str, int]:
    store = hub_of(client).store
    assert store is not None
    return {
        name: await getattr(store, name).count_documents({})
        for name in ("contacts", "identities", "conversations", "messages", "events")
    }


NOTHING = {"contacts": 0, "identities": 0, "conversations": 0, "messages": 0, "events": 0}


@pytest.fixture
def form_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> Callable[..., Settings]:
    def make(**form: Any) -> Settings:
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "events": {"poll_interval": 0.05},
            "inboxes": [
                {"id": "site", "channel": "form", "secret": FORM_SECRET, **form},
                {"id": "t1", "channel": "testchan", "secret": SECRET, "api_base": provider.url},
            ],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def site(form_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(form_settings()))) as client:
        yield client


async def only_contact(client: Client) -> dict[str, Any]:
    (contact,) = await hub_of(client).store.contacts.find().to_list()
    return contact


# -- who the lead is -------------------------------------------------------------------


async def test_lead_with_phone_only_creates_the_contact_with_attributes_and_opens_a_conversation(
    site,
):
    resp = await post(site, fixture_json("phone_only"))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["ok"] is True
    contact = await only_contact(site)
    assert answer["contact_id"] == contact["_id"]
    assert contact["name"] == "Ada Lovelace"
    assert contact["phones"] == ["+15551230011"]
    assert contact["emails"] == []
    assert contact["attributes"] == {"company": "Analytical Engines Ltd", "utm_source": "google"}

    store = hub_of(site).store
    (conversation,) = await store.conversations.find().to_list()
    assert conversation["_id"] == answer["conversation_id"]
    assert conversation["contact_id"] == contact["_id"]
    assert conversation["inbox"] == "site"
    assert conversation["channel"] == "form"
    assert conversation["status"] == "open"
    assert conversation["unread"] == 1
    (message,) = await store.messages.find().to_list()
    assert message["text"] == "Please call me about the premium plan."
    assert message["direction"] == "in"
    assert message["channel"] == "form"
    assert message["extra"] == {"company": "Analytical Engines Ltd", "utm_source": "google"}


async def test_lead_with_email_only_creates_the_contact_by_its_lower_cased_email(site):
    resp = await post(site, fixture_json("email_only"))
    assert resp.status == 200, await resp.text()
    contact = await only_contact(site)
    assert contact["emails"] == ["grace.hopper@example.com"]
    assert contact["phones"] == []
    assert contact["name"] == "Grace Hopper"
    assert contact["attributes"] == {"page": "/pricing"}
    identity = await hub_of(site).store.identities.find_one({"kind": "email"})
    assert identity["value"] == "grace.hopper@example.com"


async def test_lead_with_phone_and_email_is_one_contact_holding_both_identities(site):
    resp = await post(site, fixture_json("phone_and_email"))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    contact = await only_contact(site)
    assert contact["phones"] == ["+15551230012"]  # written 555-123-0012, region US
    assert contact["emails"] == ["katherine@example.org"]
    identities = await hub_of(site).store.identities.find().to_list()
    assert sorted((i["kind"], i["value"]) for i in identities) == [
        ("email", "katherine@example.org"),
        ("phone", "+15551230012"),
    ]
    assert {i["contact_id"] for i in identities} == {answer["contact_id"]}
    assert contact["attributes"] == {
        "company": "NASA Langley",
        "budget": "10k-50k",
        "interests": "demo, pricing",
    }
    (message,) = await hub_of(site).store.messages.find().to_list()
    assert message["provider_id"] == "form:wf-5f1c2a9e"
    assert "submission_id" not in contact["attributes"]


async def test_lead_without_a_message_opens_the_conversation_with_a_summary_line(site):
    resp = await post(site, fixture_json("no_message"))
    assert resp.status == 200
    (message,) = await hub_of(site).store.messages.find().to_list()
    assert message["text"] == "New lead: Alan Turing, +15551230013, alan@example.co.uk"


async def test_lead_whose_phone_is_a_known_contact_lands_in_that_contact(site):
    wrote = await post_inbound(site, MessageSid="SMearlier", From="+15551230011", Body="hi")
    assert wrote.status == 200
    known = await only_contact(site)

    answer = await (await post(site, fixture_json("phone_only"))).json()
    assert answer["contact_id"] == known["_id"]
    contact = await only_contact(site)
    assert contact["attributes"]["company"] == "Analytical Engines Ltd"
    assert contact["name"] == "Ada Lovelace"  # it had none
    conversations = await hub_of(site).store.conversations.find().to_list()
    assert sorted(c["channel"] for c in conversations) == ["form", "sms"]
    assert {c["contact_id"] for c in conversations} == {known["_id"]}


async def test_a_later_form_keeps_the_contacts_name_and_updates_its_attributes(site):
    await post(site, fixture_json("phone_only"))
    again = with_fields("phone_only", name="Someone Else", company="New Co", message="Again")
    answer = await (await post(site, again)).json()
    assert answer["duplicate"] is False
    contact = await only_contact(site)
    assert contact["name"] == "Ada Lovelace"
    assert contact["attributes"]["company"] == "New Co"
    assert await hub_of(site).store.messages.count_documents({}) == 2


# -- encodings -------------------------------------------------------------------------


async def test_urlencoded_form_is_read_and_captcha_token_not_stored(site):
    body = (FIXTURES / "urlencoded.txt").read_bytes()
    resp = await post(site, body, URLENCODED)
    assert resp.status == 200, await resp.text()
    contact = await only_contact(site)
    assert contact["name"] == "Hedy Lamarr"
    assert contact["phones"] == ["+15551230014"]
    assert contact["emails"] == ["hedy@example.com"]
    assert contact["attributes"] == {"company": "Frequency Hopping Inc"}
    (message,) = await hub_of(site).store.messages.find().to_list()
    assert message["text"] == "I would like a quote."


async def test_multipart_form_is_read(site):
    content_type, body = fixture_multipart()
    resp = await post(site, body, content_type)
    assert resp.status == 200, await resp.text()
    contact = await only_contact(site)
    assert contact["name"] == "Margaret Hamilton"
    assert contact["emails"] == ["margaret@example.com"]
    assert contact["attributes"] == {"team_size": "25"}
    (message,) = await hub_of(site).store.messages.find().to_list()
    assert message["text"] == "Can we book a call next week?"


# -- resends ------------------------------------------------------------------------------


async def test_a_resent_submission_is_acknowledged_and_stored_once(site):
    first = await (await post(site, fixture_json("phone_only"))).json()
    again = await (await post(site, fixture_json("phone_only"))).json()
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert first["message_id"] == again["message_id"]
    assert first["conversation_id"] == again["conversation_id"]
    assert await hub_of(site).store.messages.count_documents({}) == 1


async def test_a_resend_with_the_same_submission_id_is_stored_once_even_if_fields_differ(site):
    await post(site, fixture_json("phone_and_email"))
    again = await (await post(site, with_fields("phone_and_email", budget="50k+"))).json()
    assert again["duplicate"] is True
    assert await hub_of(site).store.messages.count_documents({}) == 1


async def test_the_same_fields_in_another_encoding_are_the_same_submission(site):
    fields = json.loads(fixture_json("phone_only"))
    await post(site, json.dumps(fields).encode())
    form = urllib.parse.urlencode(fields).encode()
    again = await (await post(site, form, URLENCODED)).json()
    assert again["duplicate"] is True
    assert await hub_of(site).store.messages.count_documents({}) == 1


# -- refused requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="missing"),
        pytest.param(
            sign("another-secret-0123456789", fixture_json("phone_only")), id="other secret"
        ),
        pytest.param(sign(FORM_SECRET, fixture_json("email_only")), id="other body"),
        pytest.param(
            sign(FORM_SECRET, fixture_json("phone_only")).removeprefix("sha256="), id="bare hex"
        ),
    ],
)
async def test_bad_or_missing_signature_is_403_and_writes_nothing(site, signature):
    headers = {"Content-Type": JSON}
    if signature:
        headers["X-Signature"] = signature
    resp = await site.post(URL, data=fixture_json("phone_only"), headers=headers)
    assert resp.status == 403
    assert await counts(site) == NOTHING


@pytest.mark.parametrize(
    ("body", "content_type", "names"),
    [
        (with_fields("no_message", phone=None, email=None), JSON, "phone or email"),
        (with_fields("no_message", phone="", email=""), JSON, "phone or email"),
        (with_fields("no_message", phone="12"), JSON, "phone"),
        (with_fields("no_message", email="alan at example"), JSON, "email"),
        (b"{not json", JSON, "JSON"),
        (b'["phone", "+15551230013"]', JSON, "JSON object"),
        (with_fields("no_message", company={"$set": {"name": "x"}}), JSON, "company"),
        (with_fields("no_message", **{"a.b": "x"}), JSON, "a.b"),
        (with_fields("no_message", **{"$where": "1"}), JSON, "$where"),
        (with_fields("no_message", notes="x" * 501), JSON, "notes"),
        (with_fields("no_message", name="x" * 501), JSON, "name"),
        (with_fields("no_message", message="x" * 5001), JSON, "message"),
        (
            json.dumps({"phone": "+15551230013", **{f"f{i}": "v" for i in range(31)}}).encode(),
            JSON,
            "too many fields",
        ),
        (b"phone=%2B15551230013&phone=%2B15551230015", URLENCODED, "phone"),
        (b"phone", URLENCODED, "URL-encoded"),
        (b"phone=+15551230013", "text/plain", "Content-Type"),
        (
            b'--b\r\nContent-Disposition: form-data; name="cv"; filename="cv.pdf"\r\n\r\n%PDF'
            b"\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "files",
        ),
    ],
    ids=[
        "neither-phone-nor-email",
        "phone-and-email-blank",
        "phone-not-a-number",
        "email-not-an-address",
        "not-json",
        "json-array",
        "nested-object",
        "dotted-field-name",
        "operator-field-name",
        "attribute-too-long",
        "name-too-long",
        "message-too-long",
        "too-many-fields",
        "phone-given-twice",
        "urlencoded-garbage",
        "unsupported-content-type",
        "file-upload",
    ],
)
async def test_malformed_submission_is_400_naming_the_rule_and_writes_nothing(
    site, body, content_type, names
):
    resp = await post(site, body, content_type)
    assert resp.status == 400
    error = await resp.json()
    assert names in error["error"]["message"]
    assert await counts(site) == NOTHING


async def test_a_body_over_the_size_cap_is_413_and_writes_nothing(site):
    resp = await post(site, with_fields("no_message", notes="x" * (64 * 1024)))
    assert resp.status == 413
    assert await counts(site) == NOTHING


async def test_forms_answer_only_under_webhooks_forms(site):
    body = fixture_json("phone_only")
    resp = await site.post(
        "/webhooks/form/site", data=body, headers={"X-Signature": sign(FORM_SECRET, body)}
    )
    assert resp.status == 404
    assert await counts(site) == NOTHING


async def test_the_url_the_status_page_lists_for_a_form_inbox_takes_a_signed_submission(site):
    page = await (await site.get("/status")).text()
    (row,) = re.findall(r"<tr><td>site</td><td>form</td><td>(.*?)</td></tr>", page)
    (listed,) = re.findall(r"<code>(.*?)</code>", row)
    path = urllib.parse.urlsplit(html.unescape(listed)).path
    assert path == URL
    body = fixture_json("phone_only")

    resp = await site.post(
        path, data=body, headers={"Content-Type": JSON, "X-Signature": sign(FORM_SECRET, body)}
    )

    assert resp.status != 404
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["duplicate"] is False
    (message,) = await hub_of(site).store.messages.find().to_list()
    assert message["_id"] == answer["message_id"]
    assert message["inbox"] == "site"


# -- configuration and sending ---------------------------------------------------------------


async def test_allowed_fields_keep_only_the_listed_attributes_and_log_the_rest(
    form_settings, caplog
):
    settings = form_settings(allowed_fields=["company"])
    async with TestClient(TestServer(build_app(settings))) as client:
        with caplog.at_level(logging.INFO, logger="hub.channels"):
            resp = await post(client, fixture_json("phone_only"))
        assert resp.status == 200
        assert (await only_contact(client))["attributes"] == {"company": "Analytical Engines Ltd"}
    dropped = [r for r in caplog.records if r.getMessage() == "form fields dropped"]
    assert [getattr(r, "fields", None) for r in dropped] == [["utm_source"]]


def test_config_without_a_secret_is_refused_naming_the_key(form_settings):
    with pytest.raises(ConfigError, match="secret"):
        form_settings(secret="")
    with pytest.raises(ConfigError, match="unknown key"):
        form_settings(api_base="http://127.0.0.1:9")


async def test_adapter_refuses_to_start_without_its_secret():
    adapter = FormChannel("site", FormSettings.model_construct(secret=""), detached_context())
    with pytest.raises(ValueError, match="site: secret"):
        await adapter.start()


async def test_a_form_refuses_replies_with_a_clear_reason(site):
    hub = hub_of(site)
    adapter = hub.adapters["site"]
    assert adapter.reply_refusal(None, False) == NO_REPLY_REASON
    with pytest.raises(PermanentSendError, match="cannot carry a reply"):
        await adapter.send(OutboundMessage(id="m1", inbox="site", medium="form", to="x", text="x"))
    answer = await (await post(site, fixture_json("phone_only"))).json()
    with pytest.raises(OutboxError, match="cannot carry a reply"):
        await hub.reply(answer["conversation_id"], text="hi", sender={"type": "agent", "id": "a"})
