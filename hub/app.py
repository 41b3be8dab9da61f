"""The application factory: one place where the hub's parts are wired together."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bots import BotHook
from channels import ChannelAdapter, ChannelContext, StoreUnavailable, channel_class
from hub.config import Settings
from hub.events import Event, EventBus, Events
from hub.identity import merge_contacts
from hub.ingest import Ingestor, IngestResult
from hub.metrics import Metrics
from hub.model import InboundEvent, StatusUpdate
from hub.outbox import Dispatcher, record_statuses
from hub.store import Store
from hub.web import status_response

log = logging.getLogger("hub.app")


@dataclass
class Hub:
    """The running parts of one hub process."""

    settings: Settings
    instance_id: str
    metrics: Metrics
    bus: EventBus
    store: Store | None = None
    events: Events | None = None
    ingestor: Ingestor | None = None
    dispatcher: Dispatcher | None = None
    adapters: dict[str, ChannelAdapter] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None

    async def ingest(self, events: Sequence[InboundEvent]) -> list[IngestResult]:
        assert self.ingestor is not None
        return await self.ingestor.ingest(events)

    async def record_status(self, updates: Sequence[StatusUpdate]) -> int:
        assert self.store is not None and self.events is not None
        try:
            return await record_statuses(self.store, self.events, list(updates))
        except Exception as error:
            if _is_store_error(error):
                raise StoreUnavailable(str(error)) from error
            raise

    async def merge_contacts(self, keep_id: str, other_id: str) -> dict[str, Any]:
        """Fold contact `other_id` into `keep_id` and tell every hub process."""
        assert self.store is not None and self.events is not None
        merged = await merge_contacts(self.store, keep_id, other_id)
        await self.events.publish([Event("contact.merged", {"id": keep_id, "merged_id": other_id})])
        return merged

    def http_session(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


def _is_store_error(error: BaseException) -> bool:
    from pymongo.errors import PyMongoError

    return isinstance(error, PyMongoError)


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


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


async def index(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    store = "embedded" if hub.store is not None and hub.store.embedded else "MongoDB"
    inboxes = [(inbox.id, inbox.channel) for inbox in hub.settings.inboxes]
    return status_response(hub.settings.public_url, inboxes, store)


def build_adapters(hub: Hub) -> dict[str, ChannelAdapter]:
    ctx = ChannelContext(
        ingest=hub.ingest,  # type: ignore[arg-type]
        record_status=hub.record_status,
        http=hub.http_session,
        public_url=hub.settings.public_url,
        default_region=hub.settings.identity.default_region,
        logger=logging.getLogger("hub.channels"),
    )
    adapters: dict[str, ChannelAdapter] = {}
    for inbox in hub.settings.inboxes:
        cls = channel_class(inbox.channel)
        assert cls is not None  # the config was validated against the registry
        adapters[inbox.id] = cls(inbox.id, inbox.settings, ctx)
    return adapters


def build_app(settings: Settings, *, bot: BotHook | None = None) -> web.Application:
    """Wire the store, channels, ingest, events and dispatcher into one aiohttp app."""
    app = web.Application(middlewares=[error_middleware], client_max_size=16 * 1024 * 1024)
    hub = Hub(
        settings=settings,
        instance_id=secrets.token_hex(4),
        metrics=Metrics(),
        bus=EventBus(),
    )
    app[HUB] = hub
    hub.adapters = build_adapters(hub)

    for adapter in hub.adapters.values():
        for route in adapter.routes():
            app.router.add_route(
                route.method,
                adapter.webhook_prefix + route.path,
                route.handler,  # type: ignore[arg-type]
            )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = await Store.open(
            uri=settings.store.uri,
            database=settings.store.database,
            data_dir=settings.data_dir,
            server_selection_timeout_ms=settings.store.server_selection_timeout_ms,
        )
        hub.store = store
        if store.embedded is not None:
            # Keep the embedded store answering: restart it if its process dies or
            # the command that started it (when this hub attached to it) exits.
            store.embedded.supervise()
        hub.metrics.track_store_commands(lambda: store.commands.total)
        hub.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=5))
        try:
            await store.ensure_indexes()
            hub.events = Events(
                store,
                hub.bus,
                hub.instance_id,
                poll_interval=settings.events.poll_interval,
                retention_seconds=settings.events.retention_seconds,
            )
            hub.events.start()
            hub.ingestor = Ingestor(
                store, hub.events, hub.metrics, bot=bot, max_batch=settings.ingest.max_batch
            )
            hub.ingestor.start()
            for adapter in hub.adapters.values():
                await adapter.start()
            hub.dispatcher = Dispatcher(
                store, hub.events, hub.metrics, hub.adapters, settings.dispatcher, hub.instance_id
            )
            hub.dispatcher.start()
            log.info(
                "hub started",
                extra={"instance": hub.instance_id, "inboxes": len(hub.adapters)},
            )
            yield
        finally:
            # The server has stopped taking requests and in-flight ones are done:
            # flush what was handed to ingest, then stop the loops, then close.
            if hub.dispatcher is not None:
                await hub.dispatcher.stop()
            if hub.ingestor is not None:
                await hub.ingestor.stop()
            if hub.events is not None:
                await hub.events.stop()
            for adapter in hub.adapters.values():
                try:
                    await adapter.close()
                except Exception:
                    log.exception("adapter close failed", extra={"inbox": adapter.inbox_id})
            await hub.http.close()
            await store.close()
            log.info("hub stopped", extra={"instance": hub.instance_id})

    app.cleanup_ctx.append(lifecycle)
    return app


def json_body_error(message: str) -> web.HTTPBadRequest:
    """A 400 in the API's error shape, for adapters and handlers."""
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"code": "bad_request", "message": message}}),
        content_type="application/json",
    )


async def run_forever(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    import signal

    app = build_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.server.shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    port = settings.server.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    print(f"hub: inbox at http://{settings.server.host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
