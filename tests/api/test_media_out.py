"""Media out (issue 15, point 3): an agent's files sent in a reply, multipart,
through each channel its own way, against the providers' simulators (loopback
HTTP and SMTP servers that take and keep the real bytes):

- Telegram: sendPhoto / sendDocument / sendVoice with the file uploaded (multipart);
- WhatsApp Cloud: the file uploaded to Graph (`/{phone_number_id}/media`), then
  the message names the media id;
- Twilio: `MediaUrl`, a signed and expiring hub URL the simulator fetches;
- e-mail: MIME attachments.

And: a file a channel cannot take (type or size) is 413/415 naming the limit
before anything is stored or queued; a private note keeps its files and sends
nothing; the signed URL refuses a forged or expired signature (403).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.email.simulator import SmtpSink
from channels.telegram.simulator import FakeTelegram
from channels.twilio.simulator import FakeTwilio
from channels.whatsapp.simulator import FakeWhatsApp
from hub.api.base import API
from hub.app import build_app
from hub.config import parse_settings
from hub.model import IdentityRef, utcnow
from hub.services import media, media_out
from hub.services.accounts import Passwords
from hub.services.runtime import HUB, Hub
from tests.api.conftest import FAST_HASHER, Agent, make_agent
from tests.support.twilio_fixtures import twilio_inbox
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
TOKEN = "123456789:AAE-fakeTokenForTheMediaOutTests_01"
ALL = ["wa", "tw", "tg", "mail"]
PHONE = "+16505551234"
CHAT = "424242"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 KB "image/png" by its bytes
PDF = b"%PDF-1.7\n" + os.urandom(30_000) + b"\n%%EOF\n"
OGG = b"OggS\x00\x02" + os.urandom(5_000)
HTML = b"<!doctype html><html><script>alert(1)</script></html>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    wa, tw, tg, sink = FakeWhatsApp(), FakeTwilio(), FakeTelegram(token=TOKEN), SmtpSink()
    for sim in (wa, tw, tg):
        await sim.start()
    await sink.start()
    yield {"wa": wa, "tw": tw, "tg": tg, "mail": sink}
    for sim in (wa, tw, tg):
        await sim.stop()
    await sink.stop()


@pytest.fixture
async def api(
    embedded_uri: str, db_name: str, tmp_path: Path, sims: dict[str, Any]
) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    port = free_port()
    wa, tw, tg, sink = sims["wa"], sims["tw"], sims["tg"], sims["mail"]
    data: dict[str, Any] = {
        "server": {"public_url": f"http://127.0.0.1:{port}"},
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
            {
                "id": "tg",
                "channel": "telegram",
                "token": TOKEN,
                "secret_token": "tg-webhook-secret_42",
                "api_base": tg.url,
            },
            {
                "id": "mail",
                "channel": "email",
                "address": "support@shop.example",
                "smtp_host": "127.0.0.1",
                "smtp_port": sink.port,
                "smtp_tls": "none",
                "inbound_smtp_port": free_port(),
                "webhook_secret": "mail-webhook-secret-0123",
                "smtp_timeout": 5,
                "max_message_bytes": 1024 * 1024,
            },
        ],
    }
    app = build_app(parse_settings(data, source="<test>", base_dir=tmp_path))
    async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        yield client


def hub(client: Client) -> Hub:
    return client.app[HUB]


async def open_conversation(client: Client, inbox: str, medium: str) -> str:
    """The customer's conversation in `inbox`, its last inbound message an hour ago."""
    kind, value = {
        "whatsapp": ("phone", PHONE),
        "sms": ("phone", PHONE),
        "telegram": ("telegram", CHAT),
        "email": ("email", "ann@example.com"),
    }[medium]
    the_hub = hub(client)
    assert the_hub.ingestor is not None and the_hub.store is not None
    conv_id, _ = await the_hub.ingestor.open_conversation(
        inbox,
        medium,
        IdentityRef(kind=kind, value=value),  # type: ignore[arg-type]
    )
    await the_hub.store.conversations.update_one(
        {"_id": conv_id}, {"$set": {"last_inbound_at": utcnow() - timedelta(hours=1)}}
    )
    return conv_id


def form(*files: tuple[str, bytes, str], **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in fields.items():
        data.add_field(key, value)
    for name, content, content_type in files:
        data.add_field("file", content, filename=name, content_type=content_type)
    return data


async def post_files(
    client: Client, agent: Agent, conv: str, *files: tuple[str, bytes, str], **fields: str
) -> Any:
    return await client.post(
        f"/api/conversations/{conv}/messages", data=form(*files, **fields), headers=agent.auth
    )


async def sent_messages(client: Client, conv: str, count: int) -> list[dict[str, Any]]:
    """The conversation's outbound messages, once `count` have left the outbox."""
    store = hub(client).store
    assert store is not None

    async def probe() -> list[dict[str, Any]]:
        found = await store.messages.find({"conversation_id": conv, "direction": "out"}).to_list()
        return sorted(found, key=lambda m: m["created_at"])

    return await eventually(
        probe,
        lambda ms: len(ms) == count and all(m["status"] not in ("queued", "sending") for m in ms),
    )


async def nothing_queued(client: Client) -> None:
    store = hub(client).store
    assert store is not None
    assert await store.outbox.count_documents({}) == 0
    assert await store.messages.count_documents({"direction": "out"}) == 0
    assert await store.db["media.files"].count_documents({}) == 0


# -- each channel its own way ---------------------------------------------------------


async def test_telegram_uploads_a_photo_a_voice_note_and_a_document_byte_for_byte(api, sims):
    tg: FakeTelegram = sims["tg"]
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tg", "telegram")
    resp = await post_files(
        api,
        agent,
        conv,
        ("photo.png", PNG, "image/png"),
        ("note.ogg", OGG, "audio/ogg"),
        ("terms.pdf", PDF, "application/pdf"),
        text="Here you go",
    )
    assert resp.status == 201, await resp.text()
    first = await resp.json()
    assert first["text"] == "Here you go"
    assert [a["content_type"] for a in first["attachments"]] == ["image/png"]
    assert first["attachments"][0]["url"] == f"/api/media/{first['attachments'][0]['id']}"
    messages = await sent_messages(api, conv, 3)  # one file per Telegram message
    assert [m["status"] for m in messages] == ["sent"] * 3, messages
    sends = {r["method"]: r for r in tg.requests if r["method"].startswith("send")}
    assert set(sends) == {"sendPhoto", "sendVoice", "sendDocument"}
    assert sends["sendPhoto"]["params"]["caption"] == "Here you go"
    uploaded = {method: next(iter(r["files"].values())) for method, r in sends.items()}
    assert uploaded["sendPhoto"]["data"] == PNG
    assert uploaded["sendVoice"]["data"] == OGG
    assert uploaded["sendDocument"]["data"] == PDF
    assert uploaded["sendDocument"]["filename"] == "terms.pdf"
    # The hub keeps what was sent (the thread's link serves it: hub.api.media).
    store = hub(api).store
    assert store is not None
    kept = await media.open_media(store, first["attachments"][0]["id"])
    assert kept is not None and await kept.read() == PNG
    got = await api.get(first["attachments"][0]["url"], headers=agent.auth)
    assert got.status == 200 and await got.read() == PNG


async def test_whatsapp_cloud_uploads_each_file_then_sends_it_by_media_id(api, sims):
    wa: FakeWhatsApp = sims["wa"]
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "wa", "whatsapp")
    resp = await post_files(
        api,
        agent,
        conv,
        ("photo.png", PNG, "image/png"),
        ("terms.pdf", PDF, "application/pdf"),
        text="Your invoice",
    )
    assert resp.status == 201, await resp.text()
    messages = await sent_messages(api, conv, 2)
    assert [m["status"] for m in messages] == ["sent", "sent"], messages
    assert [m["text"] for m in messages] == ["Your invoice", None]
    image, document = sorted(wa.sent, key=lambda s: s["type"] != "image")
    assert image["type"] == "image" and image["image"]["caption"] == "Your invoice"
    assert document["type"] == "document" and document["document"]["filename"] == "terms.pdf"
    assert wa.media[image["image"]["id"]]["bytes"] == PNG
    assert wa.media[image["image"]["id"]]["type"] == "image/png"
    assert wa.media[document["document"]["id"]]["bytes"] == PDF


async def test_twilio_gets_a_signed_hub_url_and_fetches_the_bytes_from_it(api, sims):
    tw: FakeTwilio = sims["tw"]
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tw", "sms")
    resp = await post_files(
        api,
        agent,
        conv,
        ("photo.png", PNG, "image/png"),
        ("terms.pdf", PDF, "application/pdf"),
        text="Two files",
    )
    assert resp.status == 201, await resp.text()
    (message,) = await sent_messages(api, conv, 1)  # an MMS carries both
    assert message["status"] == "sent", message
    (sent,) = tw.sent
    assert sent["text"] == "Two files"
    urls = sent["media"]
    assert len(urls) == 2
    public = hub(api).settings.public_url
    assert all(u.startswith(public + "/media/signed/") and "&sig=" in u for u in urls)
    assert [f["status"] for f in tw.fetched] == [200, 200]
    assert [f["data"] for f in tw.fetched] == [PNG, PDF]
    assert tw.fetched[0]["content_type"] == "image/png"


async def test_twilio_whatsapp_takes_one_file_per_message(api, sims):
    tw: FakeTwilio = sims["tw"]
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tw", "whatsapp")
    resp = await post_files(
        api, agent, conv, ("a.png", PNG, "image/png"), ("b.pdf", PDF, "application/pdf")
    )
    assert resp.status == 201, await resp.text()
    await sent_messages(api, conv, 2)
    assert [len(s["media"]) for s in tw.sent] == [1, 1]
    assert sorted(f["data"] for f in tw.fetched) == sorted([PNG, PDF])


async def test_email_attaches_the_files_to_one_message(api, sims):
    sink: SmtpSink = sims["mail"]
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "mail", "email")
    resp = await post_files(
        api,
        agent,
        conv,
        ("photo.png", PNG, "image/png"),
        ("terms.pdf", PDF, "application/pdf"),
        text="Please find attached",
        subject="Your order",
    )
    assert resp.status == 201, await resp.text()
    (message,) = await sent_messages(api, conv, 1)
    assert message["status"] == "sent", message
    (mail,) = await sink.wait_for(1)
    parsed = mail.parsed
    assert parsed["Subject"] == "Your order"
    parts = {p.get_filename(): p for p in parsed.iter_attachments()}
    assert set(parts) == {"photo.png", "terms.pdf"}
    assert parts["photo.png"].get_content() == PNG
    assert parts["photo.png"].get_content_type() == "image/png"
    assert parts["terms.pdf"].get_content() == PDF


# -- refused before anything is queued ------------------------------------------------


async def test_a_type_whatsapp_does_not_send_is_415_naming_what_it_sends(api, sims):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "wa", "whatsapp")
    resp = await post_files(api, agent, conv, ("page.html", HTML, "image/png"), text="x")
    assert resp.status == 415
    error = (await resp.json())["error"]
    assert error["code"] == "unsupported_type"
    # The type is the one the bytes show, not the one the browser declared.
    assert "page.html: WhatsApp does not send text/html files" in error["message"]
    assert "images (JPEG, PNG) up to 5 MB" in error["message"]
    await nothing_queued(api)
    assert sims["wa"].requests == []


async def test_a_file_over_a_channels_limit_is_413_naming_the_limit(api, sims):
    agent = await make_agent(api, "agent", inboxes=ALL)
    big_png = PNG + bytes(6 * 1024 * 1024)  # over WhatsApp's 5 MB for images
    conv = await open_conversation(api, "wa", "whatsapp")
    resp = await post_files(api, agent, conv, ("big.png", big_png, "image/png"))
    assert resp.status == 413
    assert "5 MB" in (await resp.json())["error"]["message"]
    mms = await open_conversation(api, "tw", "sms")
    resp = await post_files(api, agent, mms, ("big.png", big_png, "image/png"))
    assert resp.status == 413
    assert "5 MB limit of an MMS" in (await resp.json())["error"]["message"]
    mail = await open_conversation(api, "mail", "email")
    resp = await post_files(api, agent, mail, ("big.png", big_png, "image/png"))
    assert resp.status == 413
    assert "max_message_bytes 1048576" in (await resp.json())["error"]["message"]
    await nothing_queued(api)
    assert sims["tw"].requests == [] and sims["wa"].requests == []


async def test_files_outside_the_whatsapp_window_are_409_and_not_kept(api, sims):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "wa", "whatsapp")
    store = hub(api).store
    assert store is not None
    await store.conversations.update_one(
        {"_id": conv}, {"$set": {"last_inbound_at": utcnow() - timedelta(hours=25)}}
    )
    resp = await post_files(api, agent, conv, ("a.png", PNG, "image/png"))
    assert resp.status == 409
    await nothing_queued(api)


async def test_a_private_note_keeps_its_files_and_sends_nothing(api, sims):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tg", "telegram")
    resp = await post_files(
        api, agent, conv, ("photo.png", PNG, "image/png"), text="for the team", private="true"
    )
    assert resp.status == 201, await resp.text()
    note = await resp.json()
    assert note["kind"] == "note" and note["text"] == "for the team"
    (attachment,) = note["attachments"]
    store = hub(api).store
    assert store is not None
    kept = await media.open_media(store, attachment["id"])
    assert kept is not None and await kept.read() == PNG
    got = await api.get(attachment["url"], headers=agent.auth)
    assert got.status == 200 and await got.read() == PNG
    assert await store.outbox.count_documents({}) == 0
    assert [r for r in sims["tg"].requests if r["method"].startswith("send")] == []


async def test_a_multipart_reply_needs_text_or_a_file_and_known_fields(api):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tg", "telegram")
    url = f"/api/conversations/{conv}/messages"
    empty = aiohttp.FormData()
    empty.add_field("private", "false")
    assert (await api.post(url, data=empty, headers=agent.auth)).status == 400
    odd = form(("a.png", PNG, "image/png"), sneaky="1")
    assert (await api.post(url, data=odd, headers=agent.auth)).status == 400
    await nothing_queued(api)


async def test_an_agent_who_does_not_see_the_inbox_cannot_send_files_there(api):
    outsider = await make_agent(api, "agent", inboxes=["mail"])
    conv = await open_conversation(api, "tg", "telegram")
    resp = await post_files(api, outsider, conv, ("a.png", PNG, "image/png"))
    assert resp.status == 403
    await nothing_queued(api)


# -- the signed URL ---------------------------------------------------------------------


async def test_the_signed_url_serves_the_file_and_refuses_forgery_and_expiry(api, sims):
    agent = await make_agent(api, "agent", inboxes=ALL)
    conv = await open_conversation(api, "tg", "telegram")
    note = await (
        await post_files(api, agent, conv, ("a.png", PNG, "image/png"), private="true")
    ).json()
    media_id = note["attachments"][0]["id"]
    store = hub(api).store
    assert store is not None
    key = await media_out.signing_key(store)
    good = media_out.signed_url(key, "", media_id)
    resp = await api.get(good)  # no login: the signature is the authorisation
    assert resp.status == 200
    assert await resp.read() == PNG
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"] == "attachment"
    expired = media_out.signed_url(key, "", media_id, ttl=-1)
    forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
    other_key = media_out.signed_url(b"k" * 32, "", media_id)
    longer = media_out.signed_url(key, "", media_id, now=time.time() + 10**6)  # a later expiry
    swapped = good.replace(
        good.split("exp=")[1].split("&")[0], longer.split("exp=")[1].split("&")[0]
    )
    for url in (expired, forged, other_key, swapped, f"/media/signed/{media_id}"):
        refused = await api.get(url)
        assert refused.status == 403, url
        assert (await refused.json())["error"]["code"] == "forbidden"


async def test_the_api_document_names_the_multipart_form_of_a_reply(api):
    doc = await (await api.get("/api/openapi.json")).json()
    body = doc["paths"]["/api/conversations/{id}/messages"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["file"]["items"]["format"] == "binary"
    assert {"text", "private", "subject"} <= set(form)
    assert "application/json" in body
