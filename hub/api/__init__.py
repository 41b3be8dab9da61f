"""The agents' JSON API under /api (CONTRACT.md), its WebSocket and the inbox UI.

`setup(app)` is called by `hub.app.build_app` once the hub's parts are wired: it
adds the routes, the start-up work (the first admin) and the shutdown work
(closing WebSockets, cancelling their tasks).
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from hub.api import (
    audit,
    auth,
    campaigns,
    canned,
    contacts,
    contacts_io,
    conversations,
    greetings,
    handoff,
    media,
    media_out,
    openapi,
    realtime,
    reports,
    scheduled,
    templates,
    ui,
)
from hub.api.base import API, ApiState, Route, make_handler
from hub.services.accounts import AccountError, Accounts
from hub.services.runtime import HUB

log = logging.getLogger("hub.api")

ROUTES: list[Route] = [
    *auth.table.routes,
    *conversations.table.routes,
    *handoff.table.routes,
    *contacts_io.table.routes,  # before contacts: /api/contacts/export is not an {id}
    *contacts.table.routes,
    *realtime.table.routes,
    *reports.table.routes,
    *scheduled.table.routes,  # send later, reminders
    *campaigns.table.routes,
    *canned.table.routes,
    *greetings.table.routes,
    *templates.table.routes,
    *media.table.routes,
    *audit.table.routes,
    *openapi.table.routes,
]


def setup(app: web.Application) -> None:
    """Add the API's routes and lifecycle to the hub's application."""
    hub = app[HUB]
    state = ApiState(secure_cookies=hub.settings.public_url.startswith("https://"))
    app[API] = state
    for route in ROUTES:
        app.router.add_route(route.method, route.path, make_handler(route))
    ui.setup_ui(app)
    media_out.setup(app)  # GET /media/signed/{id}: a provider fetches an agent's file

    async def start(app: web.Application) -> None:
        # Runs after the hub's cleanup_ctx opened the store (it is registered first).
        assert hub.store is not None
        state.accounts = Accounts(hub.store)
        email = os.environ.get("HUB_ADMIN_EMAIL", "").strip()
        password = os.environ.get("HUB_ADMIN_PASSWORD", "")
        if email and password:
            try:
                admin = await state.accounts.ensure_first_admin(email, password)
            except AccountError as error:
                log.error("HUB_ADMIN_EMAIL/HUB_ADMIN_PASSWORD refused", extra={"error": str(error)})
            else:
                if admin is not None:
                    log.info("first admin created", extra={"agent_id": admin["_id"]})

    async def stop(app: web.Application) -> None:
        await realtime.close_all(app, state)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
