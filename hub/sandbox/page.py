"""The customer-side page `/sandbox` and its small JSON API under `/sandbox/api/`.

Anyone who can open the page can write as a customer: that is the point of a
sandbox, and why it is off unless the config turns it on. State-changing calls
take only `application/json` bodies, which a page of another origin cannot send
without the browser asking first, so other sites cannot drive it.

| route | does |
|---|---|
| `GET /sandbox` | the page (static HTML, CSS, a script module) |
| `GET /sandbox/api/lines` | the lines a customer can use, and the demo login |
| `GET /sandbox/api/messages?line=&address=` | one customer's thread on a line |
| `POST /sandbox/api/messages` | `{line, name, address, text, subject?}`: write as the customer |
| `POST /sandbox/api/calls` | `{line, name, address}`: place a call |
| `POST /sandbox/api/calls/{id}/hangup` | `{voicemail?: bool}`: hang up (leaving a voicemail) |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from hub.api.ui import static_pages
from hub.sandbox.core import Sandbox, SandboxError

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES: dict[str, str] = {
    "sandbox.js": "text/javascript",
    "sandbox.css": "text/css",
}
SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox", Sandbox)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


page, static_file = static_pages(STATIC_DIR, STATIC_FILES)


def _sandbox(request: web.Request) -> Sandbox:
    sandbox = request.app[SANDBOX]
    sandbox.learn_hub_url(request.transport)
    return sandbox


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": {"code": "unsupported", "message": "send application/json"}}),
            content_type="application/json",
        )
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"code": "bad_request", "message": "a JSON object"}}),
            content_type="application/json",
        )
    return body


def _text(body: dict[str, Any], key: str, limit: int = 5000) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SandboxError(f"{key} must be a string")
    return value[:limit]


async def lines(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    admin = None
    if sandbox.config.demo_admin_email and sandbox.config.demo_admin_password:
        admin = {
            "email": sandbox.config.demo_admin_email,
            "password": sandbox.config.demo_admin_password,
        }
    return web.json_response(
        {"lines": [line.view() for line in sandbox.lines.values()], "demo_admin": admin}
    )


async def thread(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    line = sandbox.lines.get(request.query.get("line", ""))
    if line is None:
        return _error(400, "bad_request", "no such line")
    try:
        address = sandbox.customer_address(line, request.query.get("address", ""))
    except SandboxError as error:
        return _error(400, "bad_request", str(error))
    found = sandbox.find_thread(line.key, address)
    messages = [entry.view() for entry in found.entries] if found else []
    return web.json_response({"line": line.key, "address": address, "messages": messages})


async def send(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    try:
        found, entry = await sandbox.customer_message(
            _text(body, "line", 200),
            _text(body, "name", 200),
            _text(body, "address", 320),
            _text(body, "text"),
            _text(body, "subject", 500) or None,
        )
    except SandboxError as error:
        return _error(400, "bad_request", str(error))
    return web.json_response(
        {"line": found.line.key, "address": found.address, "message": entry.view()}, status=201
    )


async def call(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    try:
        placed = await sandbox.place_call(
            _text(body, "line", 200), _text(body, "name", 200), _text(body, "address", 320)
        )
    except SandboxError as error:
        return _error(400, "bad_request", str(error))
    return web.json_response({"call": placed.view(), "address": placed.thread.address}, status=201)


async def hangup(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    try:
        ended = await sandbox.hang_up(
            request.match_info["call_id"], voicemail=body.get("voicemail") is True
        )
    except SandboxError as error:
        return _error(404, "not_found", str(error))
    return web.json_response({"call": ended.view()})


def setup_routes(app: web.Application, sandbox: Sandbox) -> None:
    app[SANDBOX] = sandbox
    app.router.add_get("/sandbox", page)
    app.router.add_get("/sandbox/", page)
    app.router.add_get("/sandbox/static/{name}", static_file)
    app.router.add_get("/sandbox/api/lines", lines)
    app.router.add_get("/sandbox/api/messages", thread)
    app.router.add_post("/sandbox/api/messages", send)
    app.router.add_post("/sandbox/api/calls", call)
    app.router.add_post("/sandbox/api/calls/{call_id}/hangup", hangup)
