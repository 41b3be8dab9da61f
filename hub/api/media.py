"""`GET /api/media/{id}`: a message's file, to an agent who may see its conversation.

By Bearer token or by the inbox's session cookie (so `<img src>` and `<audio
src>` work). The answer is served so that a customer's file never runs in the
hub's origin: the content type is the one the hub detected from the bytes
(never the sender's), always `X-Content-Type-Options: nosniff`, `Content-
Disposition: attachment` for anything a browser could run or render as a page
(and whatever the hub could not identify), and a sandboxing Content-Security-
Policy on top.
"""

from __future__ import annotations

import re
import urllib.parse

from aiohttp import web

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.services import conversations, media
from hub.store import Store

table = RouteTable()

# Even a file shown inline runs nothing and loads nothing (a browser shows an
# image, a player or text without either).
SANDBOX_POLICY = (
    "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'"
)


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


def content_disposition(kind: str, name: str | None) -> str:
    """`kind` ("attachment" or "inline") with the file's name, quoted safely:
    an ASCII fallback and the UTF-8 name (RFC 6266 / RFC 5987)."""
    if not name:
        return kind
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", name)[:150].strip() or "file"
    encoded = urllib.parse.quote(name[:200], safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


@table.route("GET", "/api/media/{id}", summary="A message's file (the bytes)")
async def get_media(call: Call) -> web.StreamResponse:
    media_id = call.param("id")
    store = _store(call)
    found = await media.open_media(store, media_id)
    if found is None or found.id.startswith("staged-"):
        raise not_found("file")
    conversation = (
        await conversations.get(store, found.conversation_id) if found.conversation_id else None
    )
    inbox = (conversation or {}).get("inbox")
    if call.me.inboxes is not None and (inbox is None or not call.me.sees(inbox)):
        raise ApiError(403, "forbidden", "this file is in a conversation you do not see")
    download = media.needs_attachment_disposition(found.content_type)
    content_type = found.content_type
    if content_type == "text/plain":
        content_type += "; charset=utf-8"  # the sniffer calls text plain only when it is UTF-8
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Length": str(found.size),
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": content_disposition(
                "attachment" if download else "inline", found.name
            ),
            "Content-Security-Policy": SANDBOX_POLICY,
            "Cache-Control": "private, max-age=86400",
            "Cross-Origin-Resource-Policy": "same-origin",
        }
    )
    await response.prepare(call.request)
    async for chunk in found.chunks():
        await response.write(chunk)
    await response.write_eof()
    return response
