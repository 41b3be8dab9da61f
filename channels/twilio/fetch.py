"""Twilio's inbound files: a message's `MediaUrl{N}` and a call's `RecordingUrl`.

Both are under the account's REST API and, with "HTTP Basic Auth for media"
on, need the account's credentials; they are only ever sent to the host of
`api_base` (a MediaUrl elsewhere is fetched without them). Twilio answers a
media URL with a redirect to its file store, which the download follows.
"""

from __future__ import annotations

import base64
import urllib.parse

import aiohttp

from channels.media import download
from channels.twilio.settings import TwilioSettings
from hub.ports import FetchedMedia


def _same_host(url: str, base: str) -> bool:
    one, two = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    return (one.scheme, one.netloc.lower()) == (two.scheme, two.netloc.lower())


async def fetch(
    session: aiohttp.ClientSession, settings: TwilioSettings, ref: str, max_bytes: int
) -> FetchedMedia:
    headers = {}
    if _same_host(ref, settings.api_base):
        pair = f"{settings.account_sid}:{settings.auth_token}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return await download(session, ref, max_bytes=max_bytes, headers=headers)
