"""Fuzzing every webhook route of every channel (issue "Hardening").

One hub serves an inbox of each channel: two Twilio inboxes (one ringing agents,
one taking voicemail and texting missed callers), Telegram, WhatsApp, e-mail's
inbound-parse webhook, a PBX (whose missed calls are texted through Twilio) and
a web form. Each route is posted bodies of two kinds: the provider's recorded
payloads (tests/fixtures/<provider>/) with one to three places mutated, and
bodies of no structure at all. Every body is signed as its provider signs it,
so what is tested is the parser and what follows it, not the signature check.

The assertion, for every example: the hub answers below 500, the signature
was accepted (no 403 where the body was signed), and a 4xx JSON answer has the
API's error shape (`{"error": {"code", "message"}}`).
"""

from __future__ import annotations

import base64
import importlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import event, given, settings
from hypothesis import strategies as st
from yarl import URL

from channels.signing import sign
from channels.telegram import SECRET_HEADER
from channels.telegram.simulator import FakeTelegram
from channels.twilio.simulator import PUBLIC_URL, FakeTwilio
from channels.whatsapp.simulator import FakeWhatsApp
from channels.whatsapp.simulator import sign as meta_sign
from hub.config import Settings
from tests.fuzz.conftest import FUZZ, examples, running
from tests.fuzz.defects import (
    KNOWN_DEFECTS,
    check_status,
    collecting,
    is_error_shape,
    take_errors,
)
from tests.fuzz.strategies import (
    Pairs,
    Part,
    arbitrary_body,
    encode_multipart,
    encode_pairs,
    json_bodies,
    mutated_json,
    mutated_pairs,
    mutated_parts,
    mutated_text_lines,
    nasty_text,
    parse_multipart,
    weighted,
)
from tests.support.twilio_fixtures import FIXTURES as TWILIO_FIXTURES
from tests.support.twilio_fixtures import fixture_params, twilio_inbox

# Fuzzed multipart field names make aiohttp warn, as it should; that is not news here.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")

Client = TestClient[web.Request, web.Application]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

TELEGRAM_TOKEN = "123456789:AAE-fakeTokenForTheFuzzTests_00000"
TELEGRAM_SECRET = "tg-fuzz-secret_42"
META_APP_SECRET = "wa-app-secret-fuzz-0123456789"
META_VERIFY_TOKEN = "wa-verify-token-fuzz"
MAIL_SECRET = "mail-webhook-secret-0123456789"
PBX_SECRET = "pbx-secret-fuzz-0123456789abcdef"
FORM_SECRET = "form-secret-fuzz-0123456789abcdef"
MAIL_ADDRESS = "support@example.com"


def json_fixtures(provider: str) -> dict[str, Any]:
    return {
        path.stem: json.loads(path.read_bytes())
        for path in sorted((FIXTURES / provider).glob("*.json"))
    }


# -- the hub ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeTwilio, FakeTelegram]]:
    """The providers' APIs the hub answers through while handling webhooks
    (texts to missed callers, answers to Telegram's button presses)."""
    twilio = FakeTwilio()
    telegram = FakeTelegram(token=TELEGRAM_TOKEN)
    await twilio.start()
    await telegram.start()
    yield twilio, telegram
    await telegram.stop()
    await twilio.stop()


@pytest.fixture(scope="module")
async def hub(
    module_settings: Callable[..., Settings], fakes: tuple[FakeTwilio, FakeTelegram]
) -> AsyncIterator[Client]:
    twilio, telegram = fakes
    inboxes = [
        twilio_inbox(
            twilio.url, id="tw", agent_numbers=["+15005550001"], greeting="Hello", rate=1000.0
        ),
        twilio_inbox(twilio.url, id="tv", missed_call_sms="Sorry we missed you", rate=1000.0),
        {
            "id": "tg",
            "channel": "telegram",
            "token": TELEGRAM_TOKEN,
            "secret_token": TELEGRAM_SECRET,
            "api_base": telegram.url,
        },
        {
            "id": "wa",
            "channel": "whatsapp",
            "phone_number_id": FakeWhatsApp.phone_number_id,
            "access_token": FakeWhatsApp.access_token,
            "app_secret": META_APP_SECRET,
            "verify_token": META_VERIFY_TOKEN,
            "api_base": "http://127.0.0.1:9",
        },
        {
            "id": "mail",
            "channel": "email",
            "address": MAIL_ADDRESS,
            "smtp_host": "127.0.0.1",
            "smtp_port": 9,
            "smtp_tls": "none",
            "webhook_secret": MAIL_SECRET,
        },
        {
            "id": "pbx",
            "channel": "pbx",
            "secret": PBX_SECRET,
            "missed_call_sms": "Sorry we missed your call",
            "sms_inbox": "tv",
        },
        {"id": "site", "channel": "form", "secret": FORM_SECRET},
    ]
    client = await running(module_settings(inboxes, server={"public_url": PUBLIC_URL}))
    try:
        with collecting():
            yield client
    finally:
        await client.close()


# -- the assertion -----------------------------------------------------------------------------


async def check_answer(response: Any, what: str, *, signed: bool = True) -> None:
    """Below 500 (or a known defect); accepted as signed; a 4xx JSON answer in the
    API's error shape."""
    status = response.status
    body = await response.read()
    shown = f"{what} -> {status}: {body[:300]!r}"
    # How far the examples got (pytest --hypothesis-show-statistics).
    event(f"answered {status}")
    if status == 400:
        event(f"400: {body[:100].decode('utf-8', 'replace')}")
    check_status(status, shown)
    if signed:
        assert status != 403, f"the signature was refused, the parser not reached: {shown}"
    if 400 <= status < 500 and response.content_type == "application/json":
        assert is_error_shape(json.loads(body)), f"not the API's error shape: {shown}"


def fuzz(share: float = 1.0) -> settings:
    return settings(FUZZ, max_examples=examples(share))


# -- Twilio: five routes, form bodies signed with X-Twilio-Signature -------------------------

TWILIO_ROUTE_OF_FIXTURE = {
    "inbound_": "/messages",
    "status_": "/status",
    "voice_incoming": "/voice",
    "voice_dial_": "/voice/status",
    "voice_status_": "/voice/status",
    "voice_record_": "/voice/status",
    "recording_": "/voice/recording",
}
TWILIO_FORMS: dict[str, list[tuple[str, str]]] = {
    path.name: fixture_params(path.name) for path in sorted(TWILIO_FIXTURES.glob("*.txt"))
}


def twilio_fixtures(route: str) -> list[str]:
    return [
        name
        for name in TWILIO_FORMS
        for prefix, served in TWILIO_ROUTE_OF_FIXTURE.items()
        if name.startswith(prefix) and served == route
    ]


def twilio_route_forms(route: str) -> st.SearchStrategy[Pairs]:
    own = twilio_fixtures(route)
    assert own, f"no fixture for {route}"
    return weighted(
        (6, st.sampled_from(own).flatmap(lambda name: mutated_pairs(TWILIO_FORMS[name]))),
        (
            2,
            st.sampled_from(sorted(TWILIO_FORMS)).flatmap(lambda n: mutated_pairs(TWILIO_FORMS[n])),
        ),
        (
            1,
            st.lists(
                st.tuples(nasty_text(surrogates=False), nasty_text(surrogates=False)), max_size=8
            ),
        ),
    )


def twilio_raw_body() -> st.SearchStrategy[bytes]:
    """Bytes that may not be a form at all (sent with a signature of whatever
    the hub would parse out of them)."""
    return st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"", b"=", b"&&", b"a=%ZZ", b"a=%ff", b"a" * 300_000]),
        st.lists(st.just(b"a=1"), min_size=1001, max_size=1002).map(b"&".join),
    )


def twilio_signature(twilio: FakeTwilio, url: str, body: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True
        )
    except (UnicodeDecodeError, ValueError):
        pairs = []
    _, headers = twilio.signed(url, pairs)
    return headers


async def post_twilio(
    hub: Client, twilio: FakeTwilio, inbox: str, route: str, body: bytes, query: str = ""
) -> Any:
    path = f"/webhooks/twilio/{inbox}{route}" + (f"?{query}" if query else "")
    headers = twilio_signature(twilio, PUBLIC_URL + path, body)
    return await hub.post(URL(path, encoded=True), data=body, headers=headers)


TWILIO_INBOX = st.sampled_from(["tw", "tv"])


@pytest.mark.parametrize("route", ["/messages", "/status", "/voice", "/voice/status"])
@fuzz()
@given(data=st.data())
async def test_twilio_form_routes(hub, fakes, route, data) -> None:
    twilio = fakes[0]
    inbox = data.draw(TWILIO_INBOX, label="inbox")
    body = data.draw(
        weighted((5, twilio_route_forms(route).map(encode_pairs)), (1, twilio_raw_body())),
        label="body",
    )
    response = await post_twilio(hub, twilio, inbox, route, body)
    await check_answer(response, f"POST {route} to {inbox}: {body[:200]!r}")


CALLERS = weighted(
    (2, st.sampled_from(["+15551230001", "+8656696", "", "whatsapp:+15551230001", "+1"])),
    (1, nasty_text(surrogates=False)),
)


@fuzz()
@given(data=st.data())
async def test_twilio_recording_route(hub, fakes, data) -> None:
    """`/voice/recording` also reads the caller from its (signed) query string."""
    twilio = fakes[0]
    inbox = data.draw(TWILIO_INBOX, label="inbox")
    body = data.draw(
        weighted(
            (5, twilio_route_forms("/voice/recording").map(encode_pairs)), (1, twilio_raw_body())
        ),
        label="body",
    )
    caller = data.draw(weighted((1, st.none()), (4, CALLERS)), label="caller")
    query = "" if caller is None else urllib.parse.urlencode({"caller": caller})
    response = await post_twilio(hub, twilio, inbox, "/voice/recording", body, query)
    await check_answer(response, f"POST /voice/recording?{query[:100]}: {body[:200]!r}")


# -- Telegram: a JSON Update with the secret-token header ---------------------------------------

TELEGRAM_UPDATES = json_fixtures("telegram")


@fuzz(1.5)
@given(body=json_bodies(TELEGRAM_UPDATES))
async def test_telegram_update(hub, body) -> None:
    headers = {"Content-Type": "application/json", SECRET_HEADER: TELEGRAM_SECRET}
    response = await hub.post("/webhooks/telegram/tg", data=body, headers=headers)
    await check_answer(response, f"telegram update {body[:300]!r}")


# -- WhatsApp: notifications signed with X-Hub-Signature-256; the GET handshake --------------

WHATSAPP_NOTIFICATIONS = json_fixtures("whatsapp")


@fuzz(1.5)
@given(body=json_bodies(WHATSAPP_NOTIFICATIONS))
async def test_whatsapp_notification(hub, body) -> None:
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta_sign(META_APP_SECRET, body),
    }
    response = await hub.post("/webhooks/whatsapp/wa", data=body, headers=headers)
    await check_answer(response, f"whatsapp notification {body[:300]!r}")


@fuzz(0.5)
@given(
    params=st.dictionaries(
        st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
        st.one_of(
            st.sampled_from(["subscribe", META_VERIFY_TOKEN, "1158201444"]),
            nasty_text(surrogates=False),
        ),
    ),
    known=weighted((3, st.just(True)), (1, st.just(False))),
)
async def test_whatsapp_verification(hub, params, known) -> None:
    if known:  # mostly the right mode and token, so the challenge itself is read
        params = {**params, "hub.mode": "subscribe", "hub.verify_token": META_VERIFY_TOKEN}
    query = urllib.parse.urlencode(params)
    response = await hub.get(URL("/webhooks/whatsapp/wa?" + query, encoded=True))
    await check_answer(response, f"whatsapp verification ?{query[:300]}", signed=False)


# -- E-mail: SendGrid's inbound-parse multipart form, with the webhook secret ----------------

SENDGRID_BOUNDARY = "001a11447dc881e40b0537fe6d58"
SENDGRID_PARTS = parse_multipart(
    (FIXTURES / "email" / "sendgrid_inbound_parse.txt").read_bytes(), SENDGRID_BOUNDARY
)
RAW_MAILS = {
    path.name: path.read_text(encoding="utf-8", errors="surrogateescape")
    for path in sorted((FIXTURES / "email").glob("*.eml"))
}


def raw_bytes(text: str) -> bytes:
    """A fixture read with surrogateescape back to its bytes; a lone surrogate a
    mutation put in, as the bytes that are not UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def raw_mode_parts(mail: str, sender: str) -> list[Part]:
    """SendGrid's "post the raw, full MIME message" layout."""
    return [
        Part("from", sender.encode("utf-8", "surrogatepass")),
        Part("to", MAIL_ADDRESS.encode()),
        Part("email", raw_bytes(mail)),
    ]


SENDGRID_FORMS = weighted(
    (2, mutated_parts(SENDGRID_PARTS, json_fields=("envelope", "charsets", "attachment-info"))),
    (
        1,
        st.builds(
            raw_mode_parts,
            st.sampled_from(sorted(RAW_MAILS)).flatmap(lambda n: mutated_text_lines(RAW_MAILS[n])),
            weighted((3, st.just("Jane <jane@example.org>")), (1, nasty_text())),
        ),
    ),
)


@fuzz(1.5)
@given(
    parts=SENDGRID_FORMS,
    boundary=weighted(
        (9, st.just(SENDGRID_BOUNDARY)),
        (1, st.sampled_from(["", "x", '"quoted"', "a b", "-" * 80])),
    ),
    basic=st.booleans(),
)
async def test_email_inbound_parse(hub, parts, boundary, basic) -> None:
    body = encode_multipart(parts, boundary or SENDGRID_BOUNDARY)
    credentials = (
        "Basic " + base64.b64encode(f"hub:{MAIL_SECRET}".encode()).decode()
        if basic
        else f"Bearer {MAIL_SECRET}"
    )
    headers = {
        "Authorization": credentials,
        "Content-Type": f"multipart/form-data; boundary={boundary}"
        if boundary
        else "multipart/form-data",
    }
    response = await hub.post("/webhooks/email/mail", data=body, headers=headers)
    await check_answer(response, f"inbound parse {[(p.name, p.data[:60]) for p in parts]}")


@fuzz(0.5)
@given(body=arbitrary_body())
async def test_email_inbound_parse_arbitrary_body(hub, body) -> None:
    headers = {
        "Authorization": f"Bearer {MAIL_SECRET}",
        "Content-Type": f"multipart/form-data; boundary={SENDGRID_BOUNDARY}",
    }
    response = await hub.post("/webhooks/email/mail", data=body, headers=headers)
    await check_answer(response, f"inbound parse {body[:300]!r}")


# -- PBX: one JSON call event signed with X-Signature ------------------------------------------

PBX_EVENTS = json_fixtures("pbx")


@fuzz(1.5)
@given(body=json_bodies(PBX_EVENTS))
async def test_pbx_call_event(hub, body) -> None:
    headers = {"Content-Type": "application/json", "X-Signature": sign(PBX_SECRET, body)}
    response = await hub.post("/webhooks/pbx/pbx", data=body, headers=headers)
    await check_answer(response, f"pbx event {body[:300]!r}")


# -- Web forms: JSON, URL-encoded or multipart, signed with X-Signature -------------------------

FORM_JSON = json_fixtures("form")
FORM_URLENCODED = urllib.parse.parse_qsl(
    (FIXTURES / "form" / "urlencoded.txt").read_text().strip(), keep_blank_values=True
)
_head, _, _multipart = (FIXTURES / "form" / "multipart.txt").read_bytes().partition(b"\r\n\r\n")
FORM_MULTIPART_TYPE = _head.decode().split(":", 1)[1].strip()
FORM_BOUNDARY = FORM_MULTIPART_TYPE.partition("boundary=")[2]
FORM_PARTS = parse_multipart(_multipart, FORM_BOUNDARY)

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/vnd.api+json",
        "text/plain",
        "",
        "application/json; charset=latin-1",
    ]
)
FORM_SUBMISSIONS = weighted(
    (3, st.tuples(st.just("application/json"), mutated_json(FORM_JSON))),
    (
        2,
        st.tuples(
            st.just("application/x-www-form-urlencoded"),
            mutated_pairs(FORM_URLENCODED).map(encode_pairs),
        ),
    ),
    (
        2,
        st.tuples(
            st.just(FORM_MULTIPART_TYPE),
            mutated_parts(FORM_PARTS).map(lambda parts: encode_multipart(parts, FORM_BOUNDARY)),
        ),
    ),
    (1, st.tuples(CONTENT_TYPES, arbitrary_body())),
)


@fuzz(1.5)
@given(submission=FORM_SUBMISSIONS)
async def test_form_submission(hub, submission) -> None:
    content_type, body = submission
    headers = {"X-Signature": sign(FORM_SECRET, body)}
    if content_type:
        headers["Content-Type"] = content_type
    response = await hub.post("/webhooks/forms/site", data=body, headers=headers)
    await check_answer(response, f"form {content_type!r} {body[:300]!r}")


# -- Found by the fuzzers: each 5xx they found, as its smallest reproducer ------------------
# (fixed; kept so it stays fixed). A new one goes in tests/fuzz/defects.py with a
# strict-xfail reproducer here until it is fixed.


async def test_a_form_field_with_a_lone_surrogate_is_not_a_server_error(hub) -> None:
    body = b'{"name": "\\ud800", "email": "grace@example.com"}'
    headers = {"Content-Type": "application/json", "X-Signature": sign(FORM_SECRET, body)}
    response = await hub.post("/webhooks/forms/site", data=body, headers=headers)
    take_errors()
    assert response.status < 500, await response.text()


async def test_a_form_submission_nested_too_deep_is_not_a_server_error(hub) -> None:
    body = b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # under the 64 KB limit
    headers = {"Content-Type": "application/json", "X-Signature": sign(FORM_SECRET, body)}
    response = await hub.post("/webhooks/forms/site", data=body, headers=headers)
    take_errors()
    assert response.status < 500, await response.text()


@pytest.mark.parametrize(
    "part_head",
    [
        pytest.param(b'Content-Disposition: form-data; name="text"; filename="\x1f"', id="ctl"),
        pytest.param(
            b'Content-Disposition: form-data; name="text"\r\n'
            b"Content-Type: text/plain\r\nContent-Type: text/plain",
            id="duplicate-header",
        ),
    ],
)
async def test_a_mail_part_header_aiohttp_refuses_is_not_a_server_error(hub, part_head) -> None:
    body = (
        b"--xYzZY\r\n"
        b'Content-Disposition: form-data; name="from"\r\n\r\n'
        b"Jane <jane@example.org>\r\n"
        b"--xYzZY\r\n" + part_head + b"\r\n\r\nhello\r\n--xYzZY--\r\n"
    )
    headers = {
        "Authorization": f"Bearer {MAIL_SECRET}",
        "Content-Type": "multipart/form-data; boundary=xYzZY",
    }
    response = await hub.post("/webhooks/email/mail", data=body, headers=headers)
    take_errors()
    assert response.status < 500, await response.text()


@pytest.mark.parametrize(
    "charset", ["idna", "utf\\u00008", "\\ud800"], ids=["idna", "nul", "surrogate"]
)
async def test_a_mail_charset_that_cannot_decode_is_not_a_server_error(hub, charset) -> None:
    fields = {
        "from": "Jane <jane@example.org>",
        "to": MAIL_ADDRESS,
        "text": "hello",
        "charsets": f'{{"text": "{charset}"}}',
    }
    parts = [Part(name, value.encode()) for name, value in fields.items()]
    headers = {
        "Authorization": f"Bearer {MAIL_SECRET}",
        "Content-Type": "multipart/form-data; boundary=xYzZY",
    }
    body = encode_multipart(parts, "xYzZY")
    response = await hub.post("/webhooks/email/mail", data=body, headers=headers)
    take_errors()
    assert response.status < 500, await response.text()


def test_every_known_defect_has_a_strict_xfail_reproducer() -> None:
    """So a fix is noticed: the fuzzers only pass over a defect that has one."""
    for defect in KNOWN_DEFECTS:
        path, _, name = defect.reproducer.partition("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        marks = getattr(getattr(module, name), "pytestmark", [])
        assert any(m.name == "xfail" and m.kwargs.get("strict") is True for m in marks), name
