"""The HTTP plumbing every route shares: the error middleware (a store that is down
is a 503, a client that hung up is logged, anything else a 500 in the API's error
shape) and the operational routes (`/healthz`, `/readyz`, `/metrics`, `/status`)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from hub.ports import StoreUnavailable
from hub.services.runtime import HUB
from hub.status_page import status_response

log = logging.getLogger("hub.http")


def _is_store_error(error: BaseException) -> bool:
    return isinstance(error, PyMongoError)


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except StoreUnavailable as error:
        log.warning("store unavailable", extra={"path": request.path, "error": str(error)})
        return _json_error(503, "store_unavailable", "the store is unavailable; retry later")
    except Exception as error:
        if isinstance(error, ConnectionError) and _client_gone(request):
            # The connection closed before the hub had the whole request (the client
            # hung up mid-body, or was cut off for sending too slowly): nothing broke
            # and nobody is left to answer. 499 is nginx's "client closed request".
            log.info("client disconnected", extra={"path": request.path, "error": str(error)})
            return web.Response(status=499)
        if _is_store_error(error):
            log.warning("store error", extra={"path": request.path, "error": str(error)})
            return _json_error(503, "store_unavailable", "the store is unavailable; retry later")
        log.exception("unhandled error", extra={"path": request.path})
        return _json_error(500, "internal", "internal error")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if hub.store is not None and await hub.store.ping():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "store unreachable"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[HUB].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def status(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    store = "embedded" if hub.store is not None and hub.store.embedded else "MongoDB"
    public_url = hub.settings.public_url
    inboxes = [
        (inbox_id, adapter.name, adapter.webhook_urls(public_url))
        for inbox_id, adapter in hub.adapters.items()
    ]
    return status_response(inboxes, store)


def setup_routes(app: web.Application) -> None:
    """The operational routes."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
