"""The baseline: a bare aiohttp endpoint doing the edge work of an inbound webhook
(read the body, check its HMAC signature, parse the form) and nothing else."""

import hashlib
import hmac
import sys
from urllib.parse import parse_qsl

from aiohttp import web

SECRET = sys.argv[2].encode() if len(sys.argv) > 2 else b"bench-secret-0001"


async def inbound(request: web.Request) -> web.Response:
    body = await request.read()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(request.headers.get("X-Signature", "").encode(), expected.encode()):
        raise web.HTTPForbidden()
    form = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
    if not form.get("MessageSid") or not form.get("From"):
        raise web.HTTPBadRequest()
    return web.json_response({"ok": True, "duplicate": False, "id": form["MessageSid"]})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/webhooks/testchan/bench", inbound)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
