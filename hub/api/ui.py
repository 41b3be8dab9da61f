"""The agents' web inbox at `/`: one HTML page and its static files under `/ui/`.

The page is plain HTML, CSS and script modules, with no build step and nothing
loaded from the network. Every answer carries a strict Content-Security-Policy:
scripts only from this origin and never inline, so customer text that slipped
into the page as markup still could not run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# The page's script modules: app.js is the entry, and imports the others.
SCRIPT_MODULES = (
    "app.js",
    "state.js",
    "dom.js",
    "format.js",
    "api.js",
    "attachments.js",
    "auth.js",
    "pages.js",
    "conversations.js",
    "thread.js",
    "messages.js",
    "media.js",
    "composer.js",
    "labels.js",
    "contact-panel.js",
    "callpop.js",
    "contacts.js",
    "reports.js",
    "realtime.js",
    "handoff.js",
    "scheduling.js",
    "campaigns.js",
    "greetings.js",
    "audit.js",
)

# The files the page may load, by name: nothing else under /ui/ is served.
STATIC_FILES: dict[str, str] = {
    **{name: "text/javascript" for name in SCRIPT_MODULES},
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """No inline script or style, no plugins, no framing. Images and recordings may
    come from the providers' http(s) media URLs (and images from data: URLs); the
    script talks only to this origin, its WebSocket included."""
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: https: http:",
            "media-src 'self' https: http:",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ]
    )


def security_headers(request: web.Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request.host),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_pages(directory: Path, files: dict[str, str]) -> tuple[Handler, Handler]:
    """Handlers for a page (`index.html` in `directory`) and for the named files
    beside it (name -> content type; any other name is a 404), each sent with
    the security headers."""

    def send(name: str, content_type: str, request: web.Request) -> web.FileResponse:
        headers = security_headers(request)
        headers["Content-Type"] = f"{content_type}; charset=utf-8"
        return web.FileResponse(directory / name, headers=headers)

    async def page(request: web.Request) -> web.StreamResponse:
        return send("index.html", "text/html", request)

    async def static_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = files.get(name)
        if content_type is None:
            raise web.HTTPNotFound(text="no such file")
        return send(name, content_type, request)

    return page, static_file


# The inbox: the page itself asks the API whether someone is logged in.
inbox_page, static_file = static_pages(UI_DIR, STATIC_FILES)


def setup_ui(app: web.Application) -> None:
    """Serve the inbox at `/` and its files under `/ui/`."""
    app.router.add_get("/", inbox_page)
    app.router.add_get("/ui/{name}", static_file)
