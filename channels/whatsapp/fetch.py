"""WhatsApp Cloud API inbound files: a notification names a media id
(`whatsapp-media:<id>`); `GET {api_base}/{id}` with the access token answers a
short-lived URL (about five minutes), downloaded with the same token."""

from __future__ import annotations

import aiohttp

from channels.media import download, transient_status
from channels.whatsapp.settings import WhatsAppSettings
from channels.whatsapp.wire import MEDIA_URL_PREFIX
from hub.ports import FetchedMedia, MediaFetchError, MediaTooLarge


async def fetch(
    session: aiohttp.ClientSession, settings: WhatsAppSettings, ref: str, max_bytes: int
) -> FetchedMedia:
    media_id = ref.removeprefix(MEDIA_URL_PREFIX)
    if not media_id.isdigit():
        raise MediaFetchError(f"not a WhatsApp media id: {media_id[:40]!r}", permanent=True)
    headers = {"Authorization": f"Bearer {settings.access_token}"}
    try:
        async with session.get(f"{settings.api_base}/{media_id}", headers=headers) as response:
            status = response.status
            info = await response.json(content_type=None) if status < 500 else None
    except (aiohttp.ClientError, ValueError) as error:
        raise MediaFetchError(f"provider error: {type(error).__name__}") from None
    if status >= 400 or not isinstance(info, dict) or not info.get("url"):
        detail = ""
        if isinstance(info, dict) and isinstance(info.get("error"), dict):
            detail = f": {str(info['error'].get('message', ''))[:200]}"
        raise MediaFetchError(
            f"provider error: HTTP {status} for media {media_id}{detail}",
            permanent=not transient_status(status),
        )
    size = info.get("file_size")
    if isinstance(size, int) and size > max_bytes:
        raise MediaTooLarge(size, max_bytes)
    got = await download(session, str(info["url"]), max_bytes=max_bytes, headers=headers)
    declared = info.get("mime_type")
    return FetchedMedia(data=got.data, content_type=str(declared) if declared else got.content_type)
