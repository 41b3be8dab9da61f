"""The agents' JSON API under /api (CONTRACT.md), its WebSocket and the inbox UI.

`setup(app)` is called by `hub.app.build_app` once the hub's parts are wired: it
adds the routes and middlewares, and any start-up work to `app.on_startup`.
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the API's routes to the hub's application (none yet)."""
