"""Media: the files of messages, kept in the store's own file storage (GridFS).

The bytes go to GridFS through PyMongo's async bucket (`gridfs.AsyncGridFSBucket`,
bucket `media`: collections `media.files` and `media.chunks`), so the same code
runs on the embedded store and on MongoDB. A file's `_id` is the attachment's id;
its metadata holds the conversation and message it belongs to (what the media
route authorises against), the type the sender declared and the type the hub
detected from the bytes (the only one it ever serves).

What other parts may call (media-out included):

- `sniff(data) -> str`: the content type of `data` from its first bytes, never
  from a name or a sender's word; `application/octet-stream` when unknown.
- `needs_attachment_disposition(content_type) -> bool`: True for anything a
  browser could run or render as a page (HTML, XHTML, SVG, XML, JavaScript) and
  for whatever is not on the short list of types safe to show inline.
- `save(store, data, *, name, declared_type, conversation_id, message_id,
  media_id=None) -> dict`: stores the bytes and answers the attachment as the
  API shows it, `{id, name, content_type, size, status: "ready", url}` with url
  `/api/media/{id}` (`media_id` when given, else a new id).
- `open_media(store, media_id) -> MediaFile | None`: the stored file (its
  metadata, and `read()` / `chunks()` for the bytes).
- `delete_media(store, media_id)`: removes a file (no error when absent).
- `attachment_view(item)`: the public shape of a stored attachment (drops the
  hub's own fields, such as the provider reference of a pending download).
- `stage(store, data, *, name, content_type) -> str`: keeps bytes that came
  inside a webhook until their message is stored; the reference to put in the
  attachment's `url` (the fetcher adopts the file under the attachment's id).
- `media_url(media_id)`: `/api/media/{id}`.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from gridfs.errors import NoFile

from hub.model import utcnow
from hub.shapes import attachment_view
from hub.store import Store, new_id

__all__ = [
    "MediaFile",
    "attachment_view",
    "delete_media",
    "media_url",
    "needs_attachment_disposition",
    "open_media",
    "save",
    "sniff",
    "stage",
]

BUCKET = "media"
UNKNOWN = "application/octet-stream"

# Types a browser shows as an image, a player or plain text, and never runs:
# served inline. Everything else is served as a download (a PDF too: its viewer
# runs the document's scripts, and the route's sandbox policy would block it).
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "audio/wav",
        "audio/webm",
        "audio/flac",
        "audio/amr",
        "video/mp4",
        "video/webm",
        "video/quicktime",
        "video/3gpp",
        "text/plain",
    }
)

# A file kept for a message not stored yet (an e-mail's attachment, received with
# the mail): its attachment's reference until the media fetcher adopts it.
STAGED_PREFIX = "hub-media:"


def media_url(media_id: str) -> str:
    return f"/api/media/{media_id}"


def bucket(store: Store) -> AsyncGridFSBucket:
    return AsyncGridFSBucket(store.db, bucket_name=BUCKET)


# -- what the bytes are -----------------------------------------------------------


def _ftyp(data: bytes) -> str:
    brand = data[8:12]
    if brand in (b"M4A ", b"M4B ", b"M4P "):
        return "audio/mp4"
    if brand == b"qt  ":
        return "video/quicktime"
    if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "image/avif" if brand == b"avif" else "image/heic"
    if brand.startswith(b"3g"):
        return "video/3gpp"
    return "video/mp4"


def _zip(data: bytes) -> str:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return "application/zip"
    office = {
        "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
    for prefix, kind in office.items():
        if any(n.startswith(prefix) for n in names):
            return kind
    if "mimetype" in names:
        try:
            declared = zipfile.ZipFile(io.BytesIO(data)).read("mimetype").decode("ascii").strip()
        except (KeyError, UnicodeDecodeError, zipfile.BadZipFile, ValueError, OSError):
            declared = ""
        if declared.startswith("application/vnd.oasis.opendocument."):
            return declared
    return "application/zip"


_MARKUP_HTML = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<script",
    b"<iframe",
    b"<title",
    b"<div",
    b"<style",
    b"<a ",
    b"<img",
    b"<meta",
    b"<table",
    b"<p>",
    b"<!--",
)


def _text(data: bytes) -> str:
    head = data[:2048]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"\x00" in head:
        return UNKNOWN
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < 4090:  # not only a character cut at the end of the sample
            return UNKNOWN
    low = head.lstrip().lower()
    if low.startswith(b"<?xml") or low.startswith(b"<svg") or b"<svg" in low[:512]:
        if b"<svg" in low:
            return "image/svg+xml"
        if b"http://www.w3.org/1999/xhtml" in low:
            return "application/xhtml+xml"
        if b"<html" in low:
            return "text/html"
        return "application/xml"
    if any(low.startswith(marker) for marker in _MARKUP_HTML) or b"<script" in low:
        return "text/html"
    if low.startswith(b"begin:vcard"):
        return "text/vcard"
    return "text/plain"


def sniff(data: bytes) -> str:
    """The content type of `data` from its bytes; `application/octet-stream` when unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"RIFF") and len(data) >= 12:
        kind = data[8:12]
        if kind == b"WEBP":
            return "image/webp"
        if kind == b"WAVE":
            return "audio/wav"
        if kind == b"AVI ":
            return "video/x-msvideo"
        return UNKNOWN
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"OggS"):
        return "audio/ogg"
    if data.startswith(b"fLaC"):
        return "audio/flac"
    if data.startswith(b"#!AMR"):
        return "audio/amr"
    if data.startswith(b"ID3") or (
        len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0 and data[1] & 0x06
    ):
        return "audio/mpeg"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _ftyp(data)
    if data.startswith(b"\x1aE\xdf\xa3"):
        return "video/webm"
    if data.startswith(b"BM") and len(data) >= 14:
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if data.startswith(b"PK\x03\x04"):
        return _zip(data)
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "application/x-ole-storage"  # the old Office formats
    if data.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if data.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "application/x-7z-compressed"
    if data.startswith(b"Rar!"):
        return "application/vnd.rar"
    if not data:
        return UNKNOWN
    return _text(data)


def plain_type(content_type: str | None) -> str:
    """`type/subtype` in lower case, without parameters ("" when none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def needs_attachment_disposition(content_type: str | None) -> bool:
    """Whether a browser must download the file rather than show it: anything it
    could run or render as a page (HTML, XHTML, SVG, XML, JavaScript) and
    whatever the hub did not identify as a type safe to show inline."""
    return plain_type(content_type) not in INLINE_TYPES


def _family(content_type: str) -> str:
    major = content_type.split("/", 1)[0]
    return "av" if major in ("audio", "video") else major


def type_mismatch(declared: str | None, detected: str) -> bool:
    """Whether the bytes contradict the type the sender declared: an image,
    sound, video or PDF that is something else (a page disguised as a photo)."""
    want = plain_type(declared)
    if not want or want == UNKNOWN:
        return False
    if want.startswith(("image/", "audio/", "video/")):
        if want == "image/svg+xml":
            return detected != "image/svg+xml"
        return _family(want) != _family(detected) or detected == "image/svg+xml"
    if want == "application/pdf":
        return detected != "application/pdf"
    return False


# -- storage ----------------------------------------------------------------------


async def save(
    store: Store,
    data: bytes,
    *,
    name: str | None,
    declared_type: str | None,
    conversation_id: str | None,
    message_id: str | None,
    media_id: str | None = None,
) -> dict[str, Any]:
    """Store `data` and answer the attachment `{id, name, content_type, size,
    status: "ready", url}`; the content type is sniffed from the bytes.
    Saving the same `media_id` again replaces the file (a retried download)."""
    media_id = media_id or new_id()
    content_type = sniff(data)
    files = bucket(store)
    with contextlib.suppress(NoFile):
        await files.delete(media_id)  # a half-written earlier try
    await files.upload_from_stream_with_id(
        media_id,
        name or media_id,
        data,
        metadata={
            "name": name,
            "content_type": content_type,
            "declared_type": plain_type(declared_type) or None,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "saved_at": utcnow(),
        },
    )
    return {
        "id": media_id,
        "name": name,
        "content_type": content_type,
        "size": len(data),
        "status": "ready",
        "url": media_url(media_id),
    }


@dataclass
class MediaFile:
    """A stored file: what the media route needs to authorise and answer it."""

    id: str
    name: str | None
    content_type: str
    size: int
    conversation_id: str | None
    message_id: str | None
    _grid: AsyncGridOut

    async def read(self) -> bytes:
        return await self._grid.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._grid.readchunk()
            if not chunk:
                return
            yield chunk


async def open_media(store: Store, media_id: str) -> MediaFile | None:
    """The stored file `media_id`, or None when there is none."""
    try:
        grid = await bucket(store).open_download_stream(media_id)
    except NoFile:
        return None
    meta = grid.metadata or {}
    return MediaFile(
        id=media_id,
        name=meta.get("name"),
        content_type=meta.get("content_type") or UNKNOWN,
        size=int(grid.length),
        conversation_id=meta.get("conversation_id"),
        message_id=meta.get("message_id"),
        _grid=grid,
    )


async def stage(store: Store, data: bytes, *, name: str | None, content_type: str | None) -> str:
    """Keep bytes received inside a webhook (an e-mail attachment) for a message
    not stored yet; answer the reference `hub-media:<id>` for its attachment."""
    staged_id = "staged-" + new_id()
    await bucket(store).upload_from_stream_with_id(
        staged_id,
        name or staged_id,
        data,
        metadata={
            "name": name,
            "declared_type": plain_type(content_type) or None,
            "staged": True,
            "saved_at": utcnow(),
        },
    )
    return STAGED_PREFIX + staged_id


async def delete_media(store: Store, media_id: str) -> None:
    with contextlib.suppress(NoFile):
        await bucket(store).delete(media_id)
