"""The e-mail channel (issue 3, point 5), against real SMTP on 127.0.0.1 both ways.

Out: the hub sends through `SmtpSink` (channels/email/simulator.py, aiosmtpd) as its relay.
In: mail is delivered with aiosmtplib to the hub's own SMTP receiver, and posted to
the inbound-parse webhook in SendGrid's form. Fixtures under tests/fixtures/email.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
import typing
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from channels import PermanentSendError, RateLimit, StoreUnavailable, TransientSendError
from channels.email import SUPPORTED_EVENTS, EmailChannel, EmailSettings
from channels.email.parse import (
    EmailKind,
    classify,
    html_from_text,
    parse_raw,
    parse_sendgrid,
    split_quoted,
)
from channels.email.simulator import SmtpSink
from hub.addresses import InvalidIdentity, normalize_email
from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.model import Attachment, OutboundMessage
from hub.services import media
from hub.services.outbox import enqueue
from tests.conftest import hub_of
from tests.support.context import replaced
from tests.support.waiting import eventually

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
ADDRESS = "support@hub.example"
SECRET = "wh-secret-0123456789abcdef"
SENDGRID_BOUNDARY = "001a11447dc881e40b0537fe6d58"

Client = TestClient[web.Request, web.Application]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the hub with an e-mail inbox ----------------------------------------------------------


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    relay = SmtpSink()
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture
def mail_settings(
    embedded_uri: str, db_name: str, tmp_path: Path, sink: SmtpSink
) -> Callable[..., Settings]:
    def make(**inbox: Any) -> Settings:
        config: dict[str, Any] = {
            "id": "mail",
            "channel": "email",
            "address": ADDRESS,
            "display_name": "Support",
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "smtp_tls": "none",
            "inbound_smtp_port": free_port(),
            "webhook_secret": SECRET,
            "smtp_timeout": 5,
        }
        config.update(inbox)
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [config],
        }
        return parse_settings(data, source="<test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def mail_hub(mail_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(mail_settings()))) as client:
        yield client


def channel_of(client: Client) -> EmailChannel:
    adapter = hub_of(client).adapters["mail"]
    assert isinstance(adapter, EmailChannel)
    return adapter


async def deliver(
    client: Client, raw: bytes, *, mail_from: str = "jdoe@machine.example", to: str = ADDRESS
) -> tuple[int, str]:
    """Send `raw` to the hub's SMTP receiver; the server's final answer.

    `mail_from=""` is the null sender of bounces and receipts (MAIL FROM:<>).
    """
    port = channel_of(client).smtp_port
    assert port is not None
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test", timeout=10
    )
    await smtp.connect()
    try:
        await smtp.mail(mail_from, options=[f"SIZE={len(raw)}"])
        try:
            await smtp.rcpt(to)
        except aiosmtplib.SMTPRecipientRefused as refused:
            raise aiosmtplib.SMTPRecipientsRefused([refused]) from None
        answer = await smtp.data(raw)
        return answer.code, answer.message
    finally:
        smtp.close()


async def inbound_messages(client: Client) -> list[dict[str, Any]]:
    store = hub_of(client).store
    assert store is not None
    return await store.messages.find({"direction": "in"}).sort("created_at", 1).to_list()


async def store_counts(client: Client) -> dict[str, int]:
    store = hub_of(client).store
    assert store is not None
    return {
        name: await getattr(store, name).count_documents({})
        for name in ("contacts", "conversations", "messages")
    }


def sendgrid_headers(secret: str = SECRET, boundary: str = SENDGRID_BOUNDARY) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {secret}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }


def form_body(fields: dict[str, str], boundary: str = "xYzZY") -> bytes:
    """A multipart body in SendGrid's layout (its parse posts use boundary xYzZY)."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


# -- settings and start-up ------------------------------------------------------------------


def test_settings_need_an_address_and_normalise_it():
    with pytest.raises(ValidationError):
        EmailSettings.model_validate({})
    with pytest.raises(ValidationError):
        EmailSettings.model_validate({"address": "not-an-address"})
    settings = EmailSettings.model_validate({"address": "Support@Hub.Example"})
    assert settings.address == "support@hub.example"
    assert settings.max_message_bytes == 25 * 1024 * 1024
    assert settings.inbound_smtp_host == "127.0.0.1"
    assert settings.tls_verify is True


def test_settings_refuse_unknown_keys():
    with pytest.raises(ValidationError, match="smtp_pasword"):
        EmailSettings.model_validate({"address": ADDRESS, "smtp_pasword": "x"})


async def test_adapter_refuses_to_start_without_webhook_secret_or_smtp_receiver():
    adapter = EmailChannel("mail", EmailSettings(address=ADDRESS), typing.cast(Any, None))
    with pytest.raises(ValueError, match="mail: webhook_secret or inbound_smtp_port"):
        await adapter.start()


async def test_adapter_refuses_a_short_webhook_secret():
    settings = EmailSettings(address=ADDRESS, webhook_secret="short")
    adapter = EmailChannel("mail", settings, typing.cast(Any, None))
    with pytest.raises(ValueError, match="webhook_secret must be at least 16"):
        await adapter.start()


def test_rate_limit_is_the_configured_rate():
    default = EmailChannel("m", EmailSettings(address=ADDRESS), typing.cast(Any, None))
    assert default.rate_limit() == RateLimit(per_second=5.0)
    faster = EmailChannel("m", EmailSettings(address=ADDRESS, rate=12), typing.cast(Any, None))
    assert faster.rate_limit().per_second == 12


async def test_receiver_listens_while_running_and_stops_on_close(mail_settings):
    settings = mail_settings()
    port = settings.inboxes[0].settings.inbound_smtp_port
    async with TestClient(TestServer(build_app(settings))) as client:
        assert channel_of(client).smtp_port == port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# -- the map of inbound kinds -------------------------------------------------------------------


def test_every_inbound_kind_has_a_declared_handler():
    declared = set(typing.get_args(EmailKind))
    assert set(SUPPORTED_EVENTS) == declared
    assert set(EmailChannel.EVENT_HANDLERS) == declared
    for kind, handler in EmailChannel.EVENT_HANDLERS.items():
        assert callable(handler), kind


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.eml")))
def test_every_fixture_classifies_to_a_declared_kind(name):
    assert parse_raw(fixture(name)).kind in SUPPORTED_EVENTS


def test_classify_names_bounces_receipts_and_autoreplies():
    kinds = {
        name: parse_raw(fixture(name)).kind
        for name in ("plain.eml", "delivery_status_failed.eml", "read_receipt_displayed.eml")
    }
    assert kinds == {
        "plain.eml": "message",
        "delivery_status_failed.eml": "delivery_status",
        "read_receipt_displayed.eml": "read_receipt",
    }
    assert parse_raw(fixture("auto_reply.eml")).kind == "auto_reply"
    plain = EmailMessage()
    plain["Precedence"] = "bulk"
    assert classify(plain) == "message"  # a newsletter is still someone's mail


# -- quoted history --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "new", "history_starts"),
    [
        ("reply_quoted_history.eml", "Hello", "> On 22 Aug 2015, at 19:21, Adam Renberg"),
        ("reply_on_wrote_iphone.eml", "Hello\n\nSent from my iPhone", "On Apr 3, 2012, at 4:19"),
        ("reply_bottom_posted_thunderbird.eml", "Hello", "On 04/02/2012 06:26 PM, Megan One"),
        ("reply_outlook_yahoo.eml", "Hello", "----- Original Message -----"),
    ],
)
def test_quoted_history_is_split_from_the_new_text(name, new, history_starts):
    parsed = parse_raw(fixture(name))
    assert parsed.text is not None
    text, quoted = split_quoted(parsed.text)
    assert text == new
    assert quoted is not None and quoted.startswith(history_starts)


def test_wrapped_gmail_attribution_is_history_and_plain_text_is_not():
    body = (
        "Thanks, that works.\n\nOn Tue, 3 Apr 2012 at 16:19, Bob Example <\n"
        "bob@example.com> wrote:\n\n> Try turning it off and on.\n> Bob\n"
    )
    text, quoted = split_quoted(body)
    assert text == "Thanks, that works."
    assert quoted is not None and quoted.startswith("On Tue, 3 Apr 2012 at 16:19")
    assert quoted.endswith("> Bob")
    # "On Monday I wrote: ..." with nothing quoted after it is the sender's own text.
    assert split_quoted("On Monday I wrote: the plan.\nSee you") == (
        "On Monday I wrote: the plan.\nSee you",
        None,
    )


def test_a_bare_forward_keeps_its_text():
    assert split_quoted("> only quoted\n> lines") == ("> only quoted\n> lines", None)


# -- receiving over SMTP ---------------------------------------------------------------------------


async def test_smtp_plain_message_is_stored_with_sender_subject_and_message_id(mail_hub):
    code, _ = await deliver(mail_hub, fixture("plain.eml"))
    assert code == 250
    (message,) = await inbound_messages(mail_hub)
    assert message["kind"] == "email"
    assert message["channel"] == "email"
    assert message["text"] == 'This is a message just to say hello.\nSo, "Hello".'
    assert message["provider_id"] == "1234@local.machine.example"
    assert message["email"]["subject"] == "Saying Hello"
    assert message["email"]["message_id"] == "1234@local.machine.example"
    assert message["email"]["quoted"] is None
    store = hub_of(mail_hub).store
    assert store is not None
    (contact,) = await store.contacts.find().to_list()
    assert contact["emails"] == ["jdoe@machine.example"]
    assert contact["name"] == "John Doe"


async def test_smtp_reply_threads_into_the_earlier_conversation_even_from_another_sender(
    mail_hub,
):
    await deliver(mail_hub, fixture("plain.eml"))  # John writes in
    # Mary answers John's message (In-Reply-To his Message-ID) from her own address,
    # then John answers her (In-Reply-To hers, References both).
    await deliver(mail_hub, fixture("reply.eml"), mail_from="mary@example.net")
    await deliver(mail_hub, fixture("reply_to_reply.eml"))
    messages = await inbound_messages(mail_hub)
    assert [m["provider_id"] for m in messages] == [
        "1234@local.machine.example",
        "3456@example.net",
        "abcd.1234@local.machine.test",
    ]
    assert len({m["conversation_id"] for m in messages}) == 1
    assert messages[1]["email"]["in_reply_to"] == "1234@local.machine.example"
    assert messages[2]["email"]["references"] == [
        "1234@local.machine.example",
        "3456@example.net",
    ]
    assert (await store_counts(mail_hub))["conversations"] == 1


async def test_smtp_receiver_refuses_other_recipients_with_550(mail_hub):
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await deliver(mail_hub, fixture("plain.eml"), to="someone-else@hub.example")
    assert refused.value.recipients[0].code == 550
    assert await store_counts(mail_hub) == {"contacts": 0, "conversations": 0, "messages": 0}


async def test_smtp_receiver_bounces_mail_over_the_size_limit_with_552(mail_settings):
    settings = mail_settings(max_message_bytes=4096)
    async with TestClient(TestServer(build_app(settings))) as client:
        big = fixture("plain.eml") + b"x" * 10_000 + b"\r\n"
        with pytest.raises(aiosmtplib.SMTPResponseException) as bounced:
            await deliver(client, big)
        assert bounced.value.code == 552
        assert await store_counts(client) == {"contacts": 0, "conversations": 0, "messages": 0}


async def test_smtp_receiver_answers_451_when_the_store_is_down_and_the_retry_is_stored(mail_hub):
    channel = channel_of(mail_hub)
    working = channel.ctx

    async def store_down(events):
        raise StoreUnavailable("store unavailable: AutoReconnect")

    channel.ctx = replaced(working, ingest=store_down)
    with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
        await deliver(mail_hub, fixture("plain.eml"))
    assert deferred.value.code == 451
    assert await store_counts(mail_hub) == {"contacts": 0, "conversations": 0, "messages": 0}

    channel.ctx = working  # the store is back; the sending server retries
    await deliver(mail_hub, fixture("plain.eml"))
    assert len(await inbound_messages(mail_hub)) == 1


async def test_smtp_same_message_id_twice_is_stored_once(mail_hub):
    await deliver(mail_hub, fixture("plain.eml"))
    await deliver(mail_hub, fixture("plain.eml"))
    assert len(await inbound_messages(mail_hub)) == 1


async def test_smtp_message_without_message_id_is_deduplicated_by_its_content(mail_hub):
    raw = b"From: a@example.org\r\nTo: support@hub.example\r\nSubject: hi\r\n\r\nno id here\r\n"
    await deliver(mail_hub, raw, mail_from="a@example.org")
    await deliver(mail_hub, raw, mail_from="a@example.org")
    (message,) = await inbound_messages(mail_hub)
    assert message["provider_id"].startswith("sha256:")
    assert message["email"]["message_id"] is None


async def test_smtp_quoted_history_is_kept_folded_apart_from_the_new_text(mail_hub):
    await deliver(mail_hub, fixture("reply_quoted_history.eml"), mail_from="adam@tictail.com")
    (message,) = await inbound_messages(mail_hub)
    assert message["text"] == "Hello"
    assert message["email"]["quoted"] == (
        "> On 22 Aug 2015, at 19:21, Adam Renberg <tgwizard@gmail.com> wrote:\n>\n> Hi there!"
    )
    assert message["email"]["subject"] == "Re: Hello there"


async def settled_attachments(client: Client, message_id: str) -> list[dict[str, Any]]:
    """The message's attachments once the hub's media fetcher has filed them."""
    store = hub_of(client).store
    assert store is not None
    found = await eventually(
        lambda: store.messages.find_one({"_id": message_id}),
        lambda m: m is not None and "media_pending" not in m,
    )
    assert found is not None
    return list(found["attachments"])


async def test_smtp_attachment_is_kept_in_the_hub_with_name_type_and_size(mail_hub):
    await deliver(mail_hub, fixture("multipart_attachment.eml"), mail_from="foo@example.com")
    (message,) = await inbound_messages(mail_hub)
    assert message["text"] == "This is the first part."
    (attachment,) = message["attachments"]
    assert attachment["ref"].startswith(media.STAGED_PREFIX)  # kept as the mail came in
    (attachment,) = await settled_attachments(mail_hub, message["_id"])
    assert attachment["status"] == "ready"
    assert attachment["name"] == "api.rb"
    assert attachment["content_type"] == "text/plain"  # what the bytes are
    assert attachment["size"] == 28
    store = hub_of(mail_hub).store
    assert store is not None
    kept = await media.open_media(store, attachment["id"])
    assert kept is not None
    assert await kept.read() == b'puts "Hello, world!"\r\ngets\r\n'
    staged = attachment["ref"][len(media.STAGED_PREFIX) :]
    assert await media.open_media(store, staged) is None  # filed under its message


async def test_smtp_attachment_over_the_media_limit_is_recorded_by_name_and_size_only(mail_hub):
    channel_of(mail_hub).ctx.max_media_bytes = 100_000  # type: ignore[misc]
    mail = EmailMessage()
    mail["From"] = "Ann <ann@example.org>"
    mail["To"] = ADDRESS
    mail["Subject"] = "the scan"
    mail["Message-ID"] = "<scan-1@example.org>"
    mail.set_content("Scan attached.")
    mail.add_attachment(
        b"\x89PNG" + b"\x00" * 299_996, maintype="image", subtype="png", filename="scan.png"
    )
    await deliver(mail_hub, mail.as_bytes(), mail_from="ann@example.org")
    (message,) = await inbound_messages(mail_hub)
    (attachment,) = message["attachments"]
    assert {k: attachment[k] for k in ("ref", "content_type", "name", "size", "status")} == {
        "ref": "",
        "content_type": "image/png",
        "name": "scan.png",
        "size": 300_000,
        "status": "failed",
    }
    assert "too large" in attachment["error"]


async def test_smtp_html_only_mail_gets_a_text_version(mail_hub):
    mail = EmailMessage()
    mail["From"] = "ann@example.org"
    mail["To"] = ADDRESS
    mail["Message-ID"] = "<html-1@example.org>"
    mail.set_content("<p>Hello <b>there</b></p><p>Second&nbsp;line</p>", subtype="html")
    await deliver(mail_hub, mail.as_bytes(), mail_from="ann@example.org")
    (message,) = await inbound_messages(mail_hub)
    assert message["text"] == "Hello there\n\nSecond line"
    assert "<b>there</b>" in message["email"]["html"]


async def test_smtp_auto_reply_is_acknowledged_and_ignored(mail_hub, caplog):
    await deliver(mail_hub, fixture("plain.eml"))
    before = await store_counts(mail_hub)
    with caplog.at_level("INFO", logger="hub.channels.email"):
        code, _ = await deliver(mail_hub, fixture("auto_reply.eml"), mail_from="mary@example.net")
    assert code == 250
    assert await store_counts(mail_hub) == before
    assert any("auto-reply ignored" in r.getMessage() for r in caplog.records)


async def test_smtp_mail_without_any_sender_is_refused_with_550(mail_hub):
    raw = b"To: support@hub.example\r\nSubject: who\r\nMessage-ID: <x@y.z>\r\n\r\nhi\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await deliver(mail_hub, raw, mail_from="")
    assert refused.value.code == 550
    assert (await store_counts(mail_hub))["messages"] == 0


# -- the inbound-parse webhook ---------------------------------------------------------------------


async def test_webhook_sendgrid_documented_payload_is_stored(mail_hub):
    resp = await mail_hub.post(
        "/webhooks/email/mail",
        data=fixture("sendgrid_inbound_parse.txt"),
        headers=sendgrid_headers(),
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["outcome"] == "stored"
    (message,) = await inbound_messages(mail_hub)
    assert message["text"] == "Here's an email with multiple attachments"
    assert message["provider_id"] == "CABQbZKGSEWPBtYVn3W_JUb70n-Oe=fykq@mail.gmail.com"
    assert message["email"]["subject"] == "Different File Types"
    assert "<b>multiple attachments</b>" in message["email"]["html"]
    assert [(a["name"], a["size"]) for a in message["attachments"]] == [
        ("image.png", 16),
        ("document.pdf", 16),
    ]
    # The form's files are placeholders ("[binary content]"), not the PNG and PDF
    # they claim to be: kept with the message, failed as a type mismatch.
    attachments = await settled_attachments(mail_hub, message["_id"])
    assert [a["status"] for a in attachments] == ["failed", "failed"]
    assert all("type does not match" in a["error"] for a in attachments)
    assert message["extra"]["spf"] == "pass"
    assert message["extra"]["envelope_to"] == "example@example.com"
    store = hub_of(mail_hub).store
    assert store is not None
    (contact,) = await store.contacts.find().to_list()
    assert (contact["emails"], contact["name"]) == (["sender@example.com"], "Sender Name")


async def test_webhook_retry_is_stored_once(mail_hub):
    for expected in ("stored", "duplicate"):
        resp = await mail_hub.post(
            "/webhooks/email/mail",
            data=fixture("sendgrid_inbound_parse.txt"),
            headers=sendgrid_headers(),
        )
        assert (await resp.json())["outcome"] == expected
    assert len(await inbound_messages(mail_hub)) == 1


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-secret-0123456789", SECRET, "Basic x"]
)
async def test_webhook_bad_or_missing_secret_is_403_and_writes_nothing(mail_hub, authorization):
    headers = sendgrid_headers()
    if authorization is None:
        del headers["Authorization"]
    else:
        headers["Authorization"] = authorization
    resp = await mail_hub.post(
        "/webhooks/email/mail", data=fixture("sendgrid_inbound_parse.txt"), headers=headers
    )
    assert resp.status == 403
    assert await store_counts(mail_hub) == {"contacts": 0, "conversations": 0, "messages": 0}


async def test_webhook_accepts_the_secret_as_the_password_of_basic_auth(mail_hub):
    # SendGrid sends the credentials of a destination URL https://hub:<secret>@host/...
    headers = sendgrid_headers()
    headers["Authorization"] = "Basic " + base64.b64encode(f"hub:{SECRET}".encode()).decode()
    resp = await mail_hub.post(
        "/webhooks/email/mail", data=fixture("sendgrid_inbound_parse.txt"), headers=headers
    )
    assert resp.status == 200
    assert len(await inbound_messages(mail_hub)) == 1
    headers["Authorization"] = "Basic " + base64.b64encode(b"hub:wrong-secret").decode()
    resp = await mail_hub.post(
        "/webhooks/email/mail", data=fixture("sendgrid_inbound_parse.txt"), headers=headers
    )
    assert resp.status == 403


async def test_webhook_is_off_without_a_secret(mail_settings):
    async with TestClient(TestServer(build_app(mail_settings(webhook_secret="")))) as client:
        headers = sendgrid_headers(secret="")
        resp = await client.post(
            "/webhooks/email/mail", data=fixture("sendgrid_inbound_parse.txt"), headers=headers
        )
        assert resp.status == 403


async def test_webhook_body_over_the_limit_is_413_and_writes_nothing(mail_settings):
    async with TestClient(TestServer(build_app(mail_settings(max_message_bytes=2048)))) as client:
        body = fixture("sendgrid_inbound_parse.txt")
        assert len(body) > 2048
        resp = await client.post("/webhooks/email/mail", data=body, headers=sendgrid_headers())
        assert resp.status == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        resp = await client.post("/webhooks/email/mail", data=chunked(), headers=sendgrid_headers())
        assert resp.status == 413
        assert await store_counts(client) == {"contacts": 0, "conversations": 0, "messages": 0}


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (form_body({"to": ADDRESS, "subject": "x", "text": "no sender"}), None, "from"),
        (form_body({"from": "not an address", "text": "x"}), None, "from"),
        (form_body({"from": "a@example.org", "envelope": "{not json"}), None, "envelope"),
        (b'{"from": "a@example.org"}', "application/json", "multipart"),
        (b'--xYzZY\r\nContent-Disposition: form-data; name="from"\r\n\r\na@', None, "multipart"),
    ],
)
async def test_webhook_malformed_body_is_400_and_writes_nothing(mail_hub, body, content_type, why):
    headers = sendgrid_headers(boundary="xYzZY")
    if content_type:
        headers["Content-Type"] = content_type
    resp = await mail_hub.post("/webhooks/email/mail", data=body, headers=headers)
    assert resp.status == 400
    assert why in (await resp.json())["error"]["message"]
    assert await store_counts(mail_hub) == {"contacts": 0, "conversations": 0, "messages": 0}


async def test_webhook_raw_mime_mode_splits_quoted_history(mail_hub):
    raw = fixture("reply_quoted_history.eml").decode()
    body = form_body({"from": "Adam Renberg <adam@tictail.com>", "to": ADDRESS, "email": raw})
    resp = await mail_hub.post(
        "/webhooks/email/mail", data=body, headers=sendgrid_headers(boundary="xYzZY")
    )
    assert resp.status == 200, await resp.text()
    (message,) = await inbound_messages(mail_hub)
    assert message["text"] == "Hello"
    assert message["email"]["quoted"].startswith("> On 22 Aug 2015")
    assert message["provider_id"] == "68001B29-8EA4-444C-A894-0537D2CA5208@tictail.com"


async def test_webhook_answers_503_when_the_store_is_down(mail_hub):
    channel = channel_of(mail_hub)
    working = channel.ctx

    async def store_down(events):
        raise StoreUnavailable("store unavailable")

    channel.ctx = replaced(working, ingest=store_down)
    try:
        resp = await mail_hub.post(
            "/webhooks/email/mail",
            data=fixture("sendgrid_inbound_parse.txt"),
            headers=sendgrid_headers(),
        )
    finally:
        channel.ctx = working
    assert resp.status == 503  # SendGrid retries 5xx for days
    assert (await store_counts(mail_hub))["messages"] == 0


def test_sendgrid_fields_decode_with_their_declared_charsets():
    fields = {
        "from": "Ren\xe9 <rene@example.org>".encode("latin-1"),
        "text": "Caf\xe9".encode("latin-1"),
        "charsets": b'{"from": "iso-8859-1", "text": "iso-8859-1"}',
    }
    parsed = parse_sendgrid(fields, {})
    assert (parsed.sender, parsed.sender_name, parsed.text) == ("rene@example.org", "René", "Café")


# -- sending ---------------------------------------------------------------------------------------


@pytest.fixture
async def files() -> AsyncIterator[str]:
    """A web server the outbound attachments are fetched from."""
    app = web.Application()

    async def invoice(request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.4 invoice", content_type="application/pdf")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"0" * 50_000, content_type="application/octet-stream")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app.router.add_get("/invoice.pdf", invoice)
    app.router.add_get("/big.bin", big)
    app.router.add_get("/broken", broken)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def conversation_of_first_mail(client: Client) -> str:
    await deliver(client, fixture("plain.eml"))
    (message,) = await inbound_messages(client)
    return str(message["conversation_id"])


async def test_reply_reaches_the_relay_as_text_and_html_with_threading_headers_and_attachment(
    mail_hub, sink, files
):
    conversation_id = await conversation_of_first_mail(mail_hub)
    hub = hub_of(mail_hub)
    assert hub.store is not None and hub.events is not None
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=conversation_id,
        text="Hello John,\nthe invoice is attached.\n<Mary & co>",
        sender={"type": "agent", "id": None},
        attachments=[Attachment(url=f"{files}/invoice.pdf", name="invoice.pdf")],
    )
    (sent,) = await sink.wait_for(1)
    mail = sent.parsed
    assert sent.mail_from == ADDRESS and sent.rcpt_tos == ["jdoe@machine.example"]
    assert mail["From"] == f"Support <{ADDRESS}>"
    assert mail["To"] == "jdoe@machine.example"
    assert mail["Subject"] == "Re: Saying Hello"
    assert mail["Message-ID"] == f"<hub.{doc['_id']}@hub.example>"
    assert mail["In-Reply-To"] == "<1234@local.machine.example>"
    assert mail["References"] == "<1234@local.machine.example>"
    assert mail.get_content_type() == "multipart/mixed"
    alternative, attachment = mail.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, rich = alternative.iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == (
        "Hello John,\nthe invoice is attached.\n<Mary & co>\n"
    )
    assert "Hello John,<br>\nthe invoice is attached.<br>\n&lt;Mary &amp; co&gt;" in (
        rich.get_content().replace("\r\n", "\n")
    )
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 invoice"

    store = hub.store
    stored = await eventually(
        lambda: store.messages.find_one({"_id": doc["_id"]}), lambda d: d["status"] == "sent"
    )
    assert stored["provider_id"] == f"hub.{doc['_id']}@hub.example"


async def test_customer_reply_to_our_message_threads_into_the_conversation(mail_hub, sink):
    conversation_id = await conversation_of_first_mail(mail_hub)
    hub = hub_of(mail_hub)
    assert hub.store is not None and hub.events is not None
    await enqueue(
        hub.store,
        hub.events,
        conversation_id=conversation_id,
        text="How can we help?",
        sender={"type": "agent", "id": None},
    )
    (sent,) = await sink.wait_for(1)
    ours = sent.parsed["Message-ID"]
    await eventually(
        lambda: hub.store.messages.find_one({"direction": "out"}),  # type: ignore[union-attr]
        lambda d: d["status"] == "sent",
    )
    answer = EmailMessage()
    answer["From"] = "John's colleague <colleague@machine.example>"
    answer["To"] = ADDRESS
    answer["Subject"] = "Re: Re: Saying Hello"
    answer["Message-ID"] = "<colleague-1@machine.example>"
    answer["In-Reply-To"] = ours
    answer["References"] = f"<1234@local.machine.example> {ours}"
    answer.set_content("Answering for John.")
    await deliver(mail_hub, answer.as_bytes(), mail_from="colleague@machine.example")
    messages = await inbound_messages(mail_hub)
    assert [m["conversation_id"] for m in messages] == [conversation_id, conversation_id]


def outbound(**fields: Any) -> OutboundMessage:
    base: dict[str, Any] = {
        "id": "665f1c2e9d1e4a0012345678",
        "inbox": "mail",
        "medium": "email",
        "to": "jdoe@machine.example",
        "text": "Hi",
    }
    base.update(fields)
    return OutboundMessage(**base)


async def test_send_returns_the_message_id_it_wrote_and_keeps_it_on_a_retry(mail_hub, sink):
    channel = channel_of(mail_hub)
    first = await channel.send(outbound(subject="Your order", attempt=1))
    again = await channel.send(outbound(subject="Your order", attempt=2))
    assert first.provider_id == again.provider_id == "hub.665f1c2e9d1e4a0012345678@hub.example"
    one, two = await sink.wait_for(2)
    assert one.parsed["Message-ID"] == two.parsed["Message-ID"] == f"<{first.provider_id}>"
    assert one.parsed["Subject"] == "Your order"  # not a reply: no "Re:"
    assert one.parsed["In-Reply-To"] is None


async def test_reply_subject_gets_one_re_prefix_and_references_end_with_the_parent(mail_hub, sink):
    channel = channel_of(mail_hub)
    await channel.send(
        outbound(
            subject="Re: Saying Hello",
            in_reply_to="abcd.1234@local.machine.test",
            references=("1234@local.machine.example", "3456@example.net"),
        )
    )
    await channel.send(outbound(subject="Saying Hello", in_reply_to="1234@local.machine.example"))
    first, second = await sink.wait_for(2)
    assert first.parsed["Subject"] == "Re: Saying Hello"
    assert first.parsed["References"] == (
        "<1234@local.machine.example> <3456@example.net> <abcd.1234@local.machine.test>"
    )
    assert second.parsed["Subject"] == "Re: Saying Hello"


async def test_no_nul_or_control_character_reaches_an_outbound_header(mail_hub, sink):
    channel = channel_of(mail_hub)
    await channel.send(outbound(subject="Order\x00 #12\x07 shipped\x1b[0m\u0085", text="ok"))
    (mail,) = await sink.wait_for(1)
    raw_headers = mail.raw.split(b"\r\n\r\n", 1)[0]
    assert not any(byte < 32 and byte not in (9, 10, 13) for byte in raw_headers)
    assert mail.parsed["Subject"] == "Order #12 shipped[0m"


def test_an_address_with_a_control_character_is_not_an_address():
    for raw in ("ann\x00@example.com", "ann@exam\x07ple.com", "ann@example.com\x7f"):
        with pytest.raises(InvalidIdentity):
            normalize_email(raw)


def test_html_alternative_is_escaped_text_with_line_breaks_kept():
    markup = html_from_text('<script>alert("x")</script> & co\nline two')
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co<br>\nline two" in markup
    assert "<script>" not in markup


# -- error classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply", "kind", "code"),
    [
        (
            "RCPT",
            "550 5.1.1 <jdoe@machine.example>: Recipient address rejected",
            "permanent",
            "550",
        ),
        ("RCPT", "450 4.2.0 Greylisted, try again in 5 minutes", "transient", "450"),
        ("MAIL", "451 4.7.1 Rate limit exceeded, try again later", "transient", "451"),
        ("MAIL", "553 5.7.1 Sender address rejected: not owned by user", "permanent", "553"),
        ("DATA", "554 5.7.1 Message rejected as spam", "permanent", "554"),
        ("DATA", "552 5.3.4 Message size exceeds fixed maximum message size", "permanent", "552"),
        ("DATA", "452 4.3.1 Insufficient system storage", "transient", "452"),
    ],
)
async def test_server_refusals_are_classified_with_the_servers_text(
    mail_hub, sink, command, reply, kind, code
):
    sink.fail_next(command, reply)
    expected = PermanentSendError if kind == "permanent" else TransientSendError
    with pytest.raises(expected) as failed:
        await channel_of(mail_hub).send(outbound())
    assert failed.value.code == code
    assert reply[4:] in failed.value.reason  # the server's own words reach the agent
    if isinstance(failed.value, TransientSendError):
        assert failed.value.maybe_sent is False  # an explicit refusal: not sent
    assert sink.messages == []


async def test_refused_connection_is_transient_and_certainly_not_sent(mail_settings):
    settings = mail_settings(smtp_port=free_port())
    async with TestClient(TestServer(build_app(settings))) as client:
        with pytest.raises(TransientSendError) as failed:
            await channel_of(client).send(outbound())
        assert failed.value.maybe_sent is False
        assert "connect" in failed.value.reason


async def test_timeout_before_the_content_is_not_sent_and_during_it_may_be(mail_settings, sink):
    async with TestClient(TestServer(build_app(mail_settings(smtp_timeout=0.5)))) as client:
        channel = channel_of(client)
        sink.hang_next("MAIL")
        with pytest.raises(TransientSendError) as before:
            await channel.send(outbound())
        assert before.value.maybe_sent is False
        assert "timeout during envelope" in before.value.reason
        sink.hang_next("DATA")
        with pytest.raises(TransientSendError) as during:
            await channel.send(outbound())
        assert during.value.maybe_sent is True


async def test_connection_lost_after_the_content_may_have_been_sent(mail_hub, sink):
    sink.drop_next("DATA")
    with pytest.raises(TransientSendError) as failed:
        await channel_of(mail_hub).send(outbound())
    assert failed.value.maybe_sent is True


async def test_permanent_refusal_fails_the_queued_reply_with_the_servers_reason(mail_hub, sink):
    conversation_id = await conversation_of_first_mail(mail_hub)
    hub = hub_of(mail_hub)
    assert hub.store is not None and hub.events is not None
    sink.fail_next("RCPT", "550 5.1.1 <jdoe@machine.example>: User unknown")
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=conversation_id,
        text="Hello?",
        sender={"type": "agent", "id": None},
    )
    store = hub.store
    failed = await eventually(
        lambda: store.messages.find_one({"_id": doc["_id"]}), lambda d: d["status"] == "failed"
    )
    assert "550 5.1.1 <jdoe@machine.example>: User unknown" in failed["error"]


async def test_smtp_login_is_used_and_a_refused_login_is_permanent(mail_settings):
    relay = SmtpSink(users={"hub": "right-password"})
    await relay.start()
    try:
        good = mail_settings(smtp_port=relay.port, smtp_user="hub", smtp_password="right-password")
        async with TestClient(TestServer(build_app(good))) as client:
            await channel_of(client).send(outbound())
        assert len(relay.messages) == 1
        bad = mail_settings(smtp_port=relay.port, smtp_user="hub", smtp_password="wrong")
        async with TestClient(TestServer(build_app(bad))) as client:
            with pytest.raises(PermanentSendError, match="SMTP login refused: 535"):
                await channel_of(client).send(outbound())
        assert len(relay.messages) == 1
    finally:
        await relay.stop()


async def test_attachment_fetch_failures_name_the_attachment(mail_settings, files, sink):
    settings = mail_settings(max_message_bytes=20_000)
    async with TestClient(TestServer(build_app(settings))) as client:
        channel = channel_of(client)
        cases = [
            (f"{files}/missing.pdf", PermanentSendError, "missing.pdf: HTTP 404"),
            (f"{files}/broken", TransientSendError, "broken: HTTP 503"),
            (f"{files}/big.bin", PermanentSendError, "big.bin is over the 20000 bytes"),
            ("ftp://example.org/x.txt", PermanentSendError, "x.txt has no content"),
            ("", PermanentSendError, "has no content the hub can send"),
        ]
        for url, error, words in cases:
            with pytest.raises(error) as failed:
                await channel.send(outbound(attachments=(Attachment(url=url),)))
            assert words in failed.value.reason
            if isinstance(failed.value, TransientSendError):
                assert failed.value.maybe_sent is False
        assert sink.messages == []
        # A data: URL (an attachment the hub received inline) is sent as it is.
        data = "data:text/plain;base64," + base64.b64encode(b"notes").decode()
        await channel.send(outbound(attachments=(Attachment(url=data, name="notes.txt"),)))
        (sent,) = await sink.wait_for(1)
        (_, attached) = sent.parsed.iter_parts()
        assert (attached.get_filename(), attached.get_content()) == ("notes.txt", "notes")


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(  # noqa: S603
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_relay_with_a_self_signed_certificate(mail_settings, self_signed, mode):
    relay = (
        SmtpSink(starttls=self_signed) if mode == "starttls" else SmtpSink(implicit_tls=self_signed)
    )
    await relay.start()
    try:
        trusting = mail_settings(smtp_port=relay.port, smtp_tls=mode, tls_verify=False)
        async with TestClient(TestServer(build_app(trusting))) as client:
            await channel_of(client).send(outbound())
        assert len(relay.messages) == 1
        verifying = mail_settings(smtp_port=relay.port, smtp_tls=mode, tls_verify=True)
        async with TestClient(TestServer(build_app(verifying))) as client:
            with pytest.raises(TransientSendError) as failed:
                await channel_of(client).send(outbound())
            assert "certificate" in failed.value.reason.lower()
            assert failed.value.maybe_sent is False
        assert len(relay.messages) == 1
    finally:
        await relay.stop()


# -- bounces and read receipts (the e-mail status callbacks) ---------------------------------------


async def sent_reply(client: Client, sink: SmtpSink) -> tuple[str, str]:
    """A reply the hub sent: its message id and its Message-ID header value."""
    conversation_id = await conversation_of_first_mail(client)
    hub = hub_of(client)
    assert hub.store is not None and hub.events is not None
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=conversation_id,
        text="Hello",
        sender={"type": "agent", "id": None},
    )
    store = hub.store
    await eventually(
        lambda: store.messages.find_one({"_id": doc["_id"]}), lambda d: d["status"] == "sent"
    )
    (sent,) = await sink.wait_for(1)
    return str(doc["_id"]), str(sent.parsed["Message-ID"]).strip("<>")


async def test_bounce_moves_the_sent_message_to_failed_with_the_remote_reason(mail_hub, sink):
    message_id, header_id = await sent_reply(mail_hub, sink)
    dsn = fixture("delivery_status_failed.eml").replace(
        b"original-message-id@cs.utk.edu", header_id.encode()
    )
    code, _ = await deliver(mail_hub, dsn, mail_from="")
    assert code == 250
    store = hub_of(mail_hub).store
    assert store is not None
    failed = await store.messages.find_one({"_id": message_id})
    assert failed is not None and failed["status"] == "failed"
    assert "426 connection timed out" in failed["error"]
    assert "louisl@larry.slip.umd.edu" in failed["error"]
    assert len(await inbound_messages(mail_hub)) == 1  # the bounce itself is not a message


async def test_bounce_about_a_message_we_never_sent_is_ignored(mail_hub):
    code, _ = await deliver(mail_hub, fixture("delivery_status_failed.eml"), mail_from="")
    assert code == 250
    assert await store_counts(mail_hub) == {"contacts": 0, "conversations": 0, "messages": 0}


async def test_read_receipt_moves_the_sent_message_to_read(mail_hub, sink):
    message_id, header_id = await sent_reply(mail_hub, sink)
    mdn = fixture("read_receipt_displayed.eml").replace(
        b"original-message-id@cs.utk.edu", header_id.encode()
    )
    await deliver(mail_hub, mdn, mail_from="jdoe@machine.example")
    store = hub_of(mail_hub).store
    assert store is not None
    read = await store.messages.find_one({"_id": message_id})
    assert read is not None and read["status"] == "read"


async def test_bounce_posted_to_the_webhook_in_raw_mode_also_moves_the_message(mail_hub, sink):
    message_id, header_id = await sent_reply(mail_hub, sink)
    dsn = fixture("delivery_status_failed.eml").replace(
        b"original-message-id@cs.utk.edu", header_id.encode()
    )
    body = form_body({"from": "MAILER-DAEMON@CS.UTK.EDU", "email": dsn.decode()})
    resp = await mail_hub.post(
        "/webhooks/email/mail", data=body, headers=sendgrid_headers(boundary="xYzZY")
    )
    assert (await resp.json())["outcome"] == "status"
    store = hub_of(mail_hub).store
    assert store is not None
    failed = await store.messages.find_one({"_id": message_id})
    assert failed is not None and failed["status"] == "failed"


async def test_http_session_is_the_hubs_own(mail_hub):
    # Attachments are fetched through the hub's shared client session.
    assert isinstance(channel_of(mail_hub).ctx.http(), aiohttp.ClientSession)
