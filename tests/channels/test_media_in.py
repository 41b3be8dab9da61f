# ruff: noqa: F811  (the channels' fixtures, imported from their test modules)
"""Media in, on every channel, against the providers' simulators serving real bytes:
the webhook stores the file `pending`, the hub fetches it afterwards with the
inbox's own credentials (Telegram getFile, WhatsApp Cloud media id -> URL ->
download, Twilio's MediaUrl and RecordingUrl with basic auth, a PBX's
recording_url), keeps it and serves it from /api/media/{id}. E-mail attachments
are in tests/channels/test_email.py."""

from __future__ import annotations

import copy
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.simulator import FakeTelegram
from channels.twilio.simulator import PUBLIC_URL, FakeTwilio
from channels.whatsapp.simulator import FakeWhatsApp
from hub.app import build_app
from hub.config import Settings
from hub.services import media
from tests.channels.test_pbx import PBX_SECRET, pbx_settings  # noqa: F401 (fixtures)
from tests.channels.test_pbx import post as pbx_post
from tests.channels.test_telegram import fixture as tg_fixture
from tests.channels.test_telegram import post_update, telegram, tg_client, tg_settings  # noqa: F401
from tests.channels.test_twilio import PREFIX, client, fake, settings_for  # noqa: F401
from tests.channels.test_twilio import post as twilio_post
from tests.channels.test_whatsapp import fresh, graph, wa_client, wa_settings  # noqa: F401
from tests.channels.test_whatsapp import post as wa_post
from tests.conftest import hub_of
from tests.support.filehost import FileHost
from tests.support.twilio_fixtures import fixture_params
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40
OGG = b"OggS\x00\x02" + bytes(range(256)) * 30
WAV = b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(64)
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 20


async def settled(client: Client, query: dict[str, Any]) -> dict[str, Any]:
    store = hub_of(client).store
    assert store is not None
    found = await eventually(
        lambda: store.messages.find_one(query),
        lambda m: m is not None and "media_pending" not in m,
        deadline=15.0,
    )
    assert found is not None
    return dict(found)


async def served(client: Client, attachment: dict[str, Any]) -> bytes:
    store = hub_of(client).store
    assert store is not None
    found = await media.open_media(store, attachment["id"])
    assert found is not None
    return await found.read()


# -- Telegram -------------------------------------------------------------------------


async def test_telegram_photo_is_fetched_by_getfile_largest_size(
    tg_client: Client, telegram: FakeTelegram
) -> None:
    update = tg_fixture("message_photo")
    largest = max(update["message"]["photo"], key=lambda s: s["width"] * s["height"])
    smaller = [s for s in update["message"]["photo"] if s is not largest]
    telegram.put_file(largest["file_id"], JPEG)
    for size in smaller:
        telegram.put_file(size["file_id"], b"\xff\xd8\xff small")
    assert (await post_update(tg_client, update)).status == 200
    message = await settled(tg_client, {"kind": "media"})
    (item,) = message["attachments"]
    assert item["status"] == "ready", item
    assert (item["content_type"], item["size"]) == ("image/jpeg", len(JPEG))
    assert await served(tg_client, item) == JPEG
    (call,) = [c for c in telegram.calls("getFile")]
    assert call["params"]["file_id"] == largest["file_id"]


async def test_telegram_voice_note_is_fetched_and_a_missing_file_fails(
    tg_client: Client, telegram: FakeTelegram
) -> None:
    update = tg_fixture("message_voice")
    telegram.put_file(update["message"]["voice"]["file_id"], OGG)
    assert (await post_update(tg_client, update)).status == 200
    message = await settled(tg_client, {"provider_id": "1111111:1365"})
    (item,) = message["attachments"]
    assert (item["status"], item["content_type"]) == ("ready", "audio/ogg")
    assert await served(tg_client, item) == OGG

    gone = copy.deepcopy(tg_fixture("message_document"))
    gone["message"]["message_id"] = 1366
    gone["update_id"] += 1
    assert (await post_update(tg_client, gone)).status == 200
    message = await settled(tg_client, {"provider_id": "1111111:1366"})
    (item,) = message["attachments"]
    assert item["status"] == "failed"  # the simulator's placeholder is no PDF
    assert "type does not match" in item["error"]


# -- WhatsApp Cloud ---------------------------------------------------------------------


async def test_whatsapp_image_is_fetched_by_media_id_then_url_with_the_token(
    wa_client: Client, graph: FakeWhatsApp
) -> None:
    media_id = graph.put_media(JPEG, "image/jpeg")
    payload = fresh("image")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["image"]["id"] = media_id
    assert (await wa_post(wa_client, json.dumps(payload).encode())).status == 200
    stored = await settled(wa_client, {"kind": "media"})
    (item,) = stored["attachments"]
    assert item["status"] == "ready", item
    assert await served(wa_client, item) == JPEG
    assert graph.media_downloads == 1


async def test_whatsapp_media_the_graph_does_not_know_fails_with_its_error(
    wa_client: Client, graph: FakeWhatsApp
) -> None:
    payload = fresh("audio")
    assert (await wa_post(wa_client, json.dumps(payload).encode())).status == 200
    stored = await settled(wa_client, {"kind": "media"})
    (item,) = stored["attachments"]
    assert item["status"] == "failed"
    assert "provider error: HTTP 400" in item["error"]


# -- Twilio ---------------------------------------------------------------------------


async def test_twilio_mms_files_are_fetched_with_the_accounts_basic_auth(
    client: Client, fake: FakeTwilio
) -> None:
    photo = fake.put_media(JPEG, "image/jpeg")
    sound = fake.put_media(MP3, "audio/mpeg")
    params = [
        (k, v)
        for k, v in fixture_params("inbound_sms.txt")
        if not k.startswith(("NumMedia", "MediaUrl", "MediaContentType"))
    ]
    params += [
        ("NumMedia", "2"),
        ("MediaUrl0", photo),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl1", sound),
        ("MediaContentType1", "audio/mpeg"),
    ]
    assert (await twilio_post(client, fake, "/messages", params)).status == 200
    stored = await settled(client, {"kind": "media"})
    assert [a["status"] for a in stored["attachments"]] == ["ready", "ready"]
    assert [await served(client, a) for a in stored["attachments"]] == [JPEG, MP3]
    assert fake.media_requests == 2


async def test_twilio_voicemail_recording_is_fetched(client: Client, fake: FakeTwilio) -> None:
    recording = fake.put_recording(WAV)
    params = [
        (k, recording if k == "RecordingUrl" else v)
        for k, v in fixture_params("recording_completed.txt")
    ]
    path = PREFIX + "/voice/recording?" + urllib.parse.urlencode({"caller": "+15551230009"})
    body, headers = fake.signed(PUBLIC_URL + path, params)
    assert (await client.post(path, data=body, headers=headers)).status == 200
    stored = await settled(client, {"kind": "voicemail"})
    (item,) = stored["attachments"]
    assert (item["status"], item["content_type"]) == ("ready", "audio/wav")
    assert await served(client, item) == WAV


# -- PBX ------------------------------------------------------------------------------


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost()
    await host.start()
    yield host
    await host.stop()


async def test_pbx_recording_url_is_fetched_with_the_recording_token(
    pbx_settings: Callable[..., Settings], files: FileHost
) -> None:
    seen: list[str] = []

    async def guarded(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=MP3, content_type="audio/mpeg")

    app = web.Application()
    app.router.add_get("/rec.mp3", guarded)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        settings = pbx_settings(recording_token="rec-token-123")
        async with TestClient(TestServer(build_app(settings))) as pbx:
            event = json.loads(
                (
                    Path(__file__).parent.parent / "fixtures" / "pbx" / "recording.ready.json"
                ).read_bytes()
            )
            event["recording_url"] = f"http://127.0.0.1:{port}/rec.mp3"
            resp = await pbx_post(pbx, json.dumps(event).encode(), secret=PBX_SECRET)
            assert resp.status == 200, await resp.text()
            stored = await settled(pbx, {"kind": "voicemail"})
            (item,) = stored["attachments"]
            assert (item["status"], item["content_type"]) == ("ready", "audio/mpeg")
            assert await served(pbx, item) == MP3
            assert seen == ["Bearer rec-token-123"]
    finally:
        await runner.cleanup()
