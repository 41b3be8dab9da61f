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
    }
