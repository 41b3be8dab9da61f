"""The hub's own webhook signature: `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.

Used by the channels whose wire format the hub defines itself (`pbx`, `form`), so
any PBX, relay or website back end can sign with a few lines of code. The
algorithm is ours and fixed; it is never read from the request.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

HEADER = "X-Signature"
PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value a sender puts on `body`."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, given: str | None) -> bool:
    """Whether `given` (the header as received) signs `body` with `secret`.

    Compared in constant time; upper-case hex is accepted as the same digest.
    """
    if not secret or not given:
        return False
    return hmac.compare_digest(given.strip().lower().encode(), sign(secret, body).encode())


async def read_limited(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) one larger than `max_bytes` before reading it all."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


async def verified_body(request: web.Request, secret: str, max_bytes: int) -> bytes:
    """The raw body of a request signed with `secret`; 403 when the signature is
    missing or wrong, 413 when the body is larger than `max_bytes`."""
    body = await read_limited(request, max_bytes)
    if not signature_matches(secret, body, request.headers.get(HEADER)):
        raise web.HTTPForbidden(text="missing or bad X-Signature")
    return body
