"""The agents' web inbox at `/`: static pages served by the hub."""

from __future__ import annotations

from aiohttp import web


def setup_ui(app: web.Application) -> None:
    """Add the inbox's pages and static files (none yet: `/status` shows the hub)."""
