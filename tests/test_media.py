"""Media: the file storage on GridFS (embedded store), the sniffer and the
fetcher that downloads what customers send."""

from __future__ import annotations

import io
import zipfile

import pytest

from hub.services import media
from hub.store import Store

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
OGG = b"OggS" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"x" * 64


def _docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (OGG, "audio/ogg"),
        (b"ID3\x03\x00", "audio/mpeg"),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00", "audio/mp4"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00", "video/mp4"),
        (PDF, "application/pdf"),
        (_docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        (b"<!DOCTYPE html><html><script>alert(1)</script>", "text/html"),
        (b"  <html><body>hi", "text/html"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        (b"<svg onload=alert(1)>", "image/svg+xml"),
        (b'<?xml version="1.0"?><note/>', "application/xml"),
        (
            b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"/>',
            "application/xhtml+xml",
        ),
        (b"just some words\n", "text/plain"),
        (b"\x00\x01\x02\x03garbage", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_sniff_names_the_type_from_the_bytes(data: bytes, expected: str) -> None:
    assert media.sniff(data) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/xml",
        "text/xml",
        "application/javascript",
        "text/javascript",
        "application/octet-stream",
        "application/zip",
    ],
)
def test_types_a_browser_could_run_are_downloads(content_type: str) -> None:
    assert media.needs_attachment_disposition(content_type)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "audio/ogg", "text/plain"])
def test_images_sound_and_text_show_inline(content_type: str) -> None:
    assert not media.needs_attachment_disposition(content_type)


def test_a_page_declared_as_a_photo_is_a_mismatch() -> None:
    assert media.type_mismatch("image/jpeg", "text/html")
    assert media.type_mismatch("image/jpeg", "image/svg+xml")
    assert media.type_mismatch("application/pdf", "text/html")
    assert not media.type_mismatch("image/jpeg", "image/png")
    assert not media.type_mismatch("audio/ogg", "video/webm")
    assert not media.type_mismatch("application/octet-stream", "text/html")
    assert not media.type_mismatch(None, "text/html")


async def test_save_and_open_round_trip_on_gridfs(store: Store) -> None:
    data = PNG + bytes(range(256)) * 2000  # several GridFS chunks
    saved = await media.save(
        store,
        data,
        name="photo.png",
        declared_type="image/png",
        conversation_id="c1",
        message_id="m1",
    )
    assert saved["status"] == "ready"
    assert saved["content_type"] == "image/png"
    assert saved["size"] == len(data)
    assert saved["url"] == f"/api/media/{saved['id']}"
    opened = await media.open_media(store, saved["id"])
    assert opened is not None
    assert (opened.name, opened.content_type, opened.size) == ("photo.png", "image/png", len(data))
    assert (opened.conversation_id, opened.message_id) == ("c1", "m1")
    assert await opened.read() == data
    again = await media.open_media(store, saved["id"])
    assert again is not None
    assert b"".join([c async for c in again.chunks()]) == data
    await media.delete_media(store, saved["id"])
    assert await media.open_media(store, saved["id"]) is None


async def test_saving_again_under_one_id_replaces_the_file(store: Store) -> None:
    first = await media.save(
        store,
        b"first words",
        name=None,
        declared_type=None,
        conversation_id="c1",
        message_id="m1",
        media_id="fixed",
    )
    second = await media.save(
        store,
        PNG,
        name="p.png",
        declared_type="image/png",
        conversation_id="c1",
        message_id="m1",
        media_id="fixed",
    )
    assert first["id"] == second["id"] == "fixed"
    opened = await media.open_media(store, "fixed")
    assert opened is not None and await opened.read() == PNG


def test_attachment_view_hides_the_provider_reference() -> None:
    stored = {
        "id": "a1",
        "name": None,
        "content_type": "image/jpeg",
        "size": None,
        "status": "pending",
        "url": "/api/media/a1",
        "ref": "tg-file-id",
    }
    assert media.attachment_view(stored) == {
        "id": "a1",
        "name": None,
        "content_type": "image/jpeg",
        "size": None,
        "status": "pending",
        "url": "/api/media/a1",
        "error": None,
    }


# -- the fetcher, through a running hub and the test channel -------------------------------

import asyncio  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from typing import Any  # noqa: E402

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from hub.app import build_app  # noqa: E402
from hub.config import Settings  # noqa: E402
from hub.services.runtime import HUB  # noqa: E402
from tests.conftest import post_inbound  # noqa: E402
from tests.support.filehost import FileHost  # noqa: E402

Client = TestClient[web.Request, web.Application]
QUICK = {"fetch_timeout": 0.5, "retry_base": 0.05, "sweep_interval": 0.1, "max_attempts": 3}


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost()
    await host.start()
    yield host
    await host.stop()


async def _hub(make_settings: Callable[..., Settings], **media_settings: Any) -> Client:
    client: Client = TestClient(
        TestServer(build_app(make_settings(media={**QUICK, **media_settings})))
    )
    await client.start_server()
    return client


async def _send_file(
    client: Client,
    files: FileHost,
    sid: str,
    data: bytes,
    declared: str = "image/png",
    **options: Any,
) -> str:
    url = files.put(sid, data, declared, **options)
    resp = await post_inbound(
        client,
        MessageSid=sid,
        From="+15551230001",
        Body="",
        NumMedia="1",
        MediaUrl0=url,
        MediaContentType0=declared,
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["id"])


async def _settled(store: Store, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            doc = await store.messages.find_one({"_id": message_id})
            assert doc is not None
            if "media_pending" not in doc:
                assert all(a["status"] != "pending" for a in doc["attachments"])
                return doc
            await asyncio.sleep(0.05)


def _store_of(client: Client) -> Store:
    store = client.app[HUB].store
    assert store is not None
    return store


async def test_the_webhook_answers_before_the_file_is_fetched(
    make_settings: Callable[..., Settings], files: FileHost
) -> None:
    client = await _hub(make_settings, fetch_timeout=5.0)
    try:
        started = asyncio.get_running_loop().time()
        message_id = await _send_file(client, files, "MMslow", PNG, delay=1.0)
        assert asyncio.get_running_loop().time() - started < 0.9
        store = _store_of(client)
        doc = await store.messages.find_one({"_id": message_id})
        assert doc is not None and doc["attachments"][0]["status"] == "pending"
        assert doc["media_pending"] is True
        assert "ref" in doc["attachments"][0]
        doc = await _settled(store, message_id)
        assert doc["attachments"][0]["status"] == "ready"
        assert "media_pending" not in doc
    finally:
        await client.close()


async def test_a_provider_error_is_tried_again_and_then_fetched(
    make_settings: Callable[..., Settings], files: FileHost
) -> None:
    client = await _hub(make_settings)
    try:
        message_id = await _send_file(client, files, "MMflaky", PNG, fail=2, status=503)
        doc = await _settled(_store_of(client), message_id)
        assert doc["attachments"][0]["status"] == "ready"
        assert files.hits["MMflaky"] == 3
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("options", "data", "declared", "reason"),
    [
        ({"fail": 99, "status": 500}, PNG, "image/png", "provider error: HTTP 500"),
        ({"fail": 1, "status": 404}, PNG, "image/png", "provider error: HTTP 404"),
        ({"delay": 3.0}, PNG, "image/png", "timeout"),
        ({}, PNG + b"x" * 5000, "image/png", "too large"),
        ({}, b"<html><script>alert(1)</script></html>", "image/jpeg", "type does not match"),
    ],
    ids=["keeps-failing", "gone", "timeout", "too-large", "type-mismatch"],
)
async def test_a_file_that_cannot_be_had_fails_with_the_reason_and_the_message_stays(
    make_settings: Callable[..., Settings],
    files: FileHost,
    options: dict[str, Any],
    data: bytes,
    declared: str,
    reason: str,
) -> None:
    client = await _hub(make_settings, max_inbound_bytes=4096)
    try:
        bus = client.app[HUB].bus.subscribe()
        message_id = await _send_file(client, files, "MMbad", data, declared, **options)
        store = _store_of(client)
        doc = await _settled(store, message_id, timeout=15.0)
        (item,) = doc["attachments"]
        assert item["status"] == "failed"
        assert reason in item["error"]
        assert doc["conversation_id"]  # the message is kept
        assert await media.open_media(store, item["id"]) is None
        assert await store.media_fetches.count_documents({}) == 0
        async with asyncio.timeout(5):
            while True:
                event = await bus.get()
                if event.type == "message.updated" and event.data["id"] == message_id:
                    break
        assert event.data["attachments"][0]["status"] == "failed"
        assert "ref" not in event.data["attachments"][0]
        if reason == "provider error: HTTP 404":
            assert files.hits["MMbad"] == 1  # a refusal is not tried again
    finally:
        await client.close()


async def test_a_message_over_its_total_limit_keeps_what_fits(
    make_settings: Callable[..., Settings], files: FileHost
) -> None:
    client = await _hub(make_settings, max_message_bytes=3000)
    try:
        first = files.put("a.png", PNG + b"a" * 1500, "image/png")
        second = files.put("b.png", PNG + b"b" * 1500, "image/png")
        resp = await post_inbound(
            client,
            MessageSid="MMtwo",
            From="+15551230001",
            Body="",
            NumMedia="2",
            MediaUrl0=first,
            MediaContentType0="image/png",
            MediaUrl1=second,
            MediaContentType1="image/png",
        )
        assert resp.status == 200
        message_id = str((await resp.json())["id"])
        doc = await _settled(_store_of(client), message_id)
        statuses = sorted(a["status"] for a in doc["attachments"])
        assert statuses == ["failed", "ready"]
        failed = next(a for a in doc["attachments"] if a["status"] == "failed")
        assert "the limit is 3000 bytes" in failed["error"]
    finally:
        await client.close()


async def test_a_restart_resumes_the_pending_fetches(
    make_settings: Callable[..., Settings], files: FileHost
) -> None:
    first = await _hub(make_settings, fetch_timeout=30.0)
    message_id = await _send_file(first, files, "MMrestart", PNG, delay=30.0)
    store = _store_of(first)
    async with asyncio.timeout(5):
        while not await store.media_fetches.count_documents({}):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await first.close()  # the hub stops with the download in flight
    files.files["MMrestart"].delay = 0.0
    second = await _hub(make_settings)
    try:
        doc = await _settled(_store_of(second), message_id)
        assert doc["attachments"][0]["status"] == "ready"
        assert "media_pending" not in doc
    finally:
        await second.close()


async def test_two_hubs_fetch_each_file_once(
    make_settings: Callable[..., Settings], files: FileHost
) -> None:
    one = await _hub(make_settings)
    two = await _hub(make_settings)
    try:
        ids = [await _send_file(one, files, f"MMpair{n}", PNG, delay=0.2) for n in range(4)]
        for message_id in ids:
            doc = await _settled(_store_of(one), message_id)
            assert doc["attachments"][0]["status"] == "ready"
        assert all(files.hits[f"MMpair{n}"] == 1 for n in range(4))
    finally:
        await one.close()
        await two.close()
