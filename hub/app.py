"""The application factory: one place where the hub's parts are wired together."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bots import build_bots
from bots.runtime import BotRuntime
from channels import channel_class
from hub.api import http
from hub.metrics import Metrics
from hub.ports import BotHook, Channel
from hub.services.assignment import AssigningHook
from hub.services.dispatcher import Dispatcher
from hub.services.events import EventBus, Events
from hub.services.ingest import Ingestor
from hub.services.media_fetch import MediaFetcher
from hub.services.optout import OptOut
from hub.services.replies import Replies
from hub.services.runtime import HUB, ChannelServices, Hub
from hub.settings import Settings
from hub.store import Store
from scheduler.runner import SchedulerRunner

log = logging.getLogger("hub.app")


def build_adapters(hub: Hub) -> dict[str, Channel]:
    """One adapter per configured inbox, its class found by channel name in the registry."""
    ctx = ChannelServices(hub)
    adapters: dict[str, Channel] = {}
    for inbox in hub.settings.inboxes:
        cls = channel_class(inbox.channel)
        assert cls is not None  # the config was validated against the registry
        adapters[inbox.id] = cls(inbox.id, inbox.settings, ctx)
    return adapters


def build_app(settings: Settings, *, bot: BotHook | None = None) -> web.Application:
    """Wire the store, channels, ingest, events and dispatcher into one aiohttp app."""
    app = web.Application(middlewares=[http.error_middleware], client_max_size=16 * 1024 * 1024)
    sandbox = None
    if settings.sandbox.enabled:
        from hub.sandbox import Sandbox
        from hub.sandbox.page import setup_routes

        sandbox = Sandbox(settings)  # binds its loopback ports now: the inboxes name them
        settings = sandbox.settings
        setup_routes(app, sandbox)
    hub = Hub(
        settings=settings,
        instance_id=secrets.token_hex(4),
        metrics=Metrics(),
        bus=EventBus(),
    )
    app[HUB] = hub
    hub.adapters = build_adapters(hub)
    # The `[[bots]]` (flow files and knowledge read now); one runtime gives them their messages.
    bots = BotRuntime(hub, build_bots(hub)) if settings.bots and bot is None else None

    for adapter in hub.adapters.values():
        for route in adapter.webhook_routes():
            app.router.add_route(route.method, route.path, route.handler)
    http.setup_routes(app)
    from hub import api

    api.setup(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runner: SchedulerRunner | None = None
        store = await Store.for_settings(settings)
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
                store,
                hub.events,
                hub.metrics,
                bot=bot or bots,
                max_batch=settings.ingest.max_batch,
                bot_inboxes={i: b.id for b in settings.bots for i in b.inboxes},
            )
            # Then new conversations with people go round robin where an inbox says so.
            hub.ingestor.bot = AssigningHook(hub, hub.ingestor.bot)
            hub.ingestor.opt_out = OptOut(store, hub.events, settings.opt_out, hub.wake_dispatcher)
            hub.ingestor.start()
            hub.replies = Replies(
                store, hub.events, hub.ingestor, hub.adapters, hub.wake_dispatcher
            )
            if sandbox is not None:
                await sandbox.start(hub)  # before the adapters: they may call it at start
            for adapter in hub.adapters.values():
                await adapter.start()
            hub.dispatcher = Dispatcher(
                store, hub.events, hub.metrics, hub.adapters, settings.dispatcher, hub.instance_id
            )
            hub.dispatcher.start()
            hub.media = MediaFetcher(
                store, hub.events, hub.adapters, settings.media, hub.instance_id
            )
            hub.media.start()  # customers' files, fetched after their webhooks were answered
            if bots is not None:
                bots.start()  # the sweep: turns a crash interrupted
            if settings.scheduler.enabled:
                runner = SchedulerRunner(hub, lease_seconds=settings.scheduler.lease_seconds)
                runner.start()
            log.info(
                "hub started",
                extra={"instance": hub.instance_id, "inboxes": len(hub.adapters)},
            )
            yield
        finally:
            # The server has stopped taking requests and in-flight ones are done:
            # flush what was handed to ingest, then stop the loops, then close.
            # Adapters close before ingest stops: one that takes messages by other
            # means than HTTP (the SMTP receiver) stops taking them first.
            if runner is not None:
                await runner.stop()  # before the dispatcher: jobs queue sends
            if bots is not None:
                await bots.stop()
            if hub.media is not None:
                await hub.media.stop()
            if hub.dispatcher is not None:
                # Sends in flight get as long as requests did (docs/operations.md).
                await hub.dispatcher.stop(grace=settings.server.shutdown_timeout)
            for adapter in hub.adapters.values():
                try:
                    await adapter.close()
                except Exception:
                    log.exception("adapter close failed", extra={"inbox": adapter.inbox_id})
            if sandbox is not None:
                await sandbox.stop()
            if hub.ingestor is not None:
                await hub.ingestor.stop()
            if hub.events is not None:
                await hub.events.stop()
            await hub.http.close()
            await store.close()
            log.info("hub stopped", extra={"instance": hub.instance_id})

    app.cleanup_ctx.append(lifecycle)
    return app
