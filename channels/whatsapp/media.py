"""WhatsApp Cloud media out: what a message may carry (Meta's supported media
types and sizes), and an agent's file uploaded to Graph
(`POST {api_base}/{phone_number_id}/media`, multipart) so the message names it
by the media id Graph answers.

Limits (Cloud API "supported media types"): images JPEG or PNG up to 5 MB; a
WebP sticker up to 500 KB; audio AAC, AMR, MP3, M4A or OGG (Opus) up to 16 MB;
video MP4 or 3GPP up to 16 MB; documents (text, PDF, Word, Excel, PowerPoint,
OpenDocument) up to 100 MB. Each file is one message.
"""

from __future__ import annotations

import json

import aiohttp

from channels.base import FileRefusal, TransientSendError
from channels.whatsapp.outbound import classify_graph_error
from channels.whatsapp.settings import WhatsAppSettings
from channels.whatsapp.wire import MEDIA_URL_PREFIX, GraphErrorBody
from hub.model import Attachment
from hub.ports import OutboundFile

MB = 1024 * 1024
# (types, limit in bytes, what the limit is called)
KINDS: tuple[tuple[frozenset[str], int, str], ...] = (
    (frozenset({"image/jpeg", "image/png"}), 5 * MB, "images (JPEG, PNG) up to 5 MB"),
    (frozenset({"image/webp"}), 500 * 1024, "stickers (WebP) up to 500 KB"),
    (
        frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
        16 * MB,
        "audio (AAC, AMR, MP3, M4A, OGG) up to 16 MB",
    ),
    (frozenset({"video/mp4", "video/3gpp"}), 16 * MB, "video (MP4, 3GPP) up to 16 MB"),
    (
        frozenset(
            {
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "application/vnd.oasis.opendocument.text",
                "application/vnd.oasis.opendocument.spreadsheet",
                "application/vnd.oasis.opendocument.presentation",
            }
        ),
        100 * MB,
        "documents (text, PDF, Word, Excel, PowerPoint, OpenDocument) up to 100 MB",
    ),
)
ACCEPTED = "; ".join(label for _, _, label in KINDS)


def refuse_file(content_type: str, size: int) -> FileRefusal | None:
    plain = content_type.split(";", 1)[0].strip().lower()
    for types, limit, label in KINDS:
        if plain in types:
            if size > limit:
                return FileRefusal(413, f"{size} bytes is over WhatsApp's limit for {label}")
            return None
    return FileRefusal(415, f"WhatsApp does not send {plain} files; it sends {ACCEPTED}")


async def upload(
    settings: WhatsAppSettings, http: aiohttp.ClientSession, file: OutboundFile
) -> str:
    """Upload the file to Graph; the media id it answers."""
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", file.content_type)
    form.add_field("file", file.data, filename=file.name or "file", content_type=file.content_type)
    url = f"{settings.api_base}/{settings.phone_number_id}/media"
    headers = {"Authorization": f"Bearer {settings.access_token}"}
    try:
        async with http.post(url, data=form, headers=headers) as response:
            status = response.status
            retry_after = response.headers.get("Retry-After")
            raw = await response.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        raise TransientSendError(
            f"media upload to the Graph API failed: {type(error).__name__}", maybe_sent=False
        ) from error
    try:
        body = json.loads(raw) if raw else None
    except (UnicodeDecodeError, ValueError):
        body = None
    if 200 <= status < 300 and isinstance(body, dict) and body.get("id"):
        return str(body["id"])
    try:
        details = GraphErrorBody.model_validate(body).error
    except ValueError:
        details = None
    refused = classify_graph_error(status, details, retry_after)
    if isinstance(refused, TransientSendError):
        refused.maybe_sent = False  # an upload sends nothing to the customer
    raise refused


def uploaded(attachment: Attachment, media_id: str) -> Attachment:
    """The attachment as the message payload names it: by Graph's media id."""
    return attachment.model_copy(update={"url": MEDIA_URL_PREFIX + media_id, "id": None})
