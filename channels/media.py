"""Downloading a customer's file from a provider, for `Channel.fetch_media`.

One helper every adapter uses: a GET with the adapter's own credentials that
never holds more than the hub's limit (`Content-Length` checked first, then the
bytes counted as they come), and that names what went wrong in the words the
hub stores on a failed attachment. The hub calls it after the webhook was
answered (its media fetcher), never inside a webhook.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from hub.ports import FetchedMedia, MediaFetchError, MediaTooLarge

CHUNK = 64 * 1024


def transient_status(status: int) -> bool:
    """A provider answer worth retrying: rate limits and the provider's own failures."""
    return status in (408, 425, 429) or status >= 500


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
) -> FetchedMedia:
    """GET `url` and answer its bytes (at most `max_bytes`) with the type the
    provider declared. Raises MediaTooLarge, or MediaFetchError (permanent for
    a 4xx other than 408/425/429)."""
    if not url.startswith(("http://", "https://")):
        raise MediaFetchError(f"not a download URL: {url[:80]!r}", permanent=True)
    try:
        async with session.get(url, headers=dict(headers or {})) as response:
            if response.status >= 400:
                raise MediaFetchError(
                    f"provider error: HTTP {response.status} for the file",
                    permanent=not transient_status(response.status),
                )
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise MediaTooLarge(declared, max_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise MediaTooLarge(None, max_bytes)
                chunks.append(chunk)
            content_type = response.headers.get("Content-Type")
            disposition = response.content_disposition
            if name is None and disposition is not None and disposition.filename:
                name = disposition.filename[:255]
    except aiohttp.ClientError as error:
        raise MediaFetchError(f"provider error: {type(error).__name__}") from None
    return FetchedMedia(data=b"".join(chunks), name=name, content_type=content_type)
