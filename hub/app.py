"""The application factory: one place where the hub's parts are wired together."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bots import BotHook
from channels import ChannelAdapter, ChannelContext, StoreUnavailable, channel_class
from hub.config import Settings
from hub.events import Event, EventBus, Events
from hub.identity import add_identity, merge_contacts, resolve_contact
from hub.ingest import Ingestor, IngestResult
from hub.metrics import Metrics
from hub.model import Attachment, ButtonReply, IdentityRef, InboundEvent, StatusUpdate
from hub.outbox import (
    Dispatcher,
    OutboxError,
    enqueue,
    provider_key,
    record_statuses,
    set_opt_out,
)
from hub.store import Store, identity_id
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

    async def reply(
        self,
        conversation_id: str,
        *,
        text: str | None,
        sender: dict[str, Any],
        template: dict[str, Any] | None = None,
        buttons: list[ButtonReply] | None = None,
        attachments: list[Attachment] | None = None,
        subject: str | None = None,
        at_most_once: bool = False,
        campaign_id: str | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Queue an outbound message in a conversation (an agent's reply, a bot's, a
        campaign's); raise OutboxError when it cannot be sent there now."""
        assert self.store is not None and self.events is not None
        conversation = await self.store.conversations.find_one(
            {"_id": conversation_id}, {"inbox": 1, "last_inbound_at": 1}
        )
        if conversation is None:
            raise OutboxError(f"no conversation {conversation_id}")
        adapter = self.adapters.get(str(conversation["inbox"]))
        if adapter is None:
            raise OutboxError(f"inbox {conversation['inbox']} is not configured")
        refusal = adapter.reply_refusal(conversation.get("last_inbound_at"), bool(template))
        if refusal:
            raise OutboxError(refusal)
        doc = await enqueue(
            self.store,
            self.events,
            conversation_id=conversation_id,
            text=text,
            sender=sender,
            template=template,
            buttons=buttons,
            attachments=attachments,
            subject=subject,
            at_most_once=at_most_once,
            campaign_id=campaign_id,
            key=key,
        )
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return doc

    # -- what channel adapters are given (ChannelContext) --------------------------

    async def send_text(
        self, inbox: str, medium: str, ref: IdentityRef, text: str, *, key: str | None = None
    ) -> str | None:
        """Queue a text from the system to `ref` (opening the conversation); None
        when the contact opted out of `medium`. With a `key`, once per key: safe to
        call again on every retry of the webhook that asks for it."""
        assert self.store is not None and self.ingestor is not None
        if self.settings.inbox(inbox) is None:
            raise ValueError(f"no inbox {inbox!r} is configured")
        conv_id, contact_id = await self.ingestor.open_conversation(inbox, medium, ref)
        contact = await self.store.contacts.find_one({"_id": contact_id}, {"opted_out": 1})
        if contact and (contact.get("opted_out") or {}).get(medium):
            log.info("not sent: the contact opted out", extra={"inbox": inbox, "medium": medium})
            return None
        doc = await self.reply(conv_id, text=text, sender={"type": "system", "id": None}, key=key)
        return str(doc["_id"])

    async def opt_out(self, ref: IdentityRef, medium: str, opted_out: bool = True) -> str:
        """Record that the owner of `ref` does (or no longer does) refuse `medium`."""
        assert self.store is not None and self.events is not None
        contact_id = await resolve_contact(self.store, ref)
        await set_opt_out(self.store, self.events, contact_id, medium, opted_out)
        return contact_id

    async def call_incoming(self, inbox: str, ref: IdentityRef, call_id: str) -> str:
        """Publish `call.incoming` with the caller's card the moment a call starts."""
        assert self.store is not None and self.events is not None and self.ingestor
        conv_id, contact_id = await self.ingestor.open_conversation(inbox, "voice", ref)
        contact = await self.store.contacts.find_one({"_id": contact_id}) or {}
        card = {
            "id": contact_id,
            "name": contact.get("name"),
            "phones": contact.get("phones", []),
            "emails": contact.get("emails", []),
            "labels": contact.get("labels", []),
        }
        data = {
            "inbox": inbox,
            "channel": "voice",
            "call_id": call_id,
            "from": ref.value,
            "conversation_id": conv_id,
            "contact": card,
        }
        await self.events.publish([Event("call.incoming", data)])
        return contact_id

    async def find_thread(self, inbox: str, message_ids: Sequence[str]) -> str | None:
        """The conversation of `inbox` holding one of these e-mail Message-IDs."""
        assert self.store is not None
        ids = [i.strip().strip("<>") for i in message_ids if i and i.strip().strip("<>")][:50]
        if not ids:
            return None
        # One indexed equality per id (the embedded engine scans for `$in`).
        projection = {"conversation_id": 1, "inbox": 1}
        for found in await asyncio.gather(
            *(
                self.store.messages.find_one({"provider_key": provider_key(inbox, i)}, projection)
                for i in ids
            ),
            *(self.store.messages.find_one({"email.message_id": i}, projection) for i in ids),
        ):
            if found is not None and found.get("inbox") == inbox:
                return str(found["conversation_id"])
        return None

    async def update_contact(
        self,
        ref: IdentityRef,
        also: Sequence[IdentityRef] = (),
        name: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Resolve-or-create the contact of `ref`, attach the identities in `also`
        that are no one's, give it `name` if it has none, and set `attributes`."""
        assert self.store is not None
        contact_id = None
        for known in (ref, *also):
            owner = await self.store.identities.find_one(
                {"_id": identity_id(known.kind, known.value)}, {"contact_id": 1}
            )
            if owner is not None:
                contact_id = str(owner["contact_id"])
                break
        if contact_id is None:
            contact_id = await resolve_contact(self.store, ref)
        for other in (ref, *also):
            if not await add_identity(self.store, contact_id, other):
                log.info(
                    "identity kept by another contact",
                    extra={"contact_id": contact_id, "identity_kind": other.kind},
                )
        if name:
            contact = await self.store.contacts.find_one({"_id": contact_id}, {"name": 1})
            if contact is not None and not contact.get("name"):
                await self.store.contacts.update_one({"_id": contact_id}, {"$set": {"name": name}})
        fields = {f"attributes.{attribute_key(k)}": str(v) for k, v in (attributes or {}).items()}
        if fields:
            await self.store.contacts.update_one({"_id": contact_id}, {"$set": fields})
        return contact_id

    async def publish(self, events: Sequence[Event]) -> None:
        assert self.events is not None
        await self.events.publish(list(events))

    def http_session(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


def attribute_key(key: str) -> str:
    """A contact attribute name that is only ever a field name: no path, no operator."""
    cleaned = re.sub(r"[^\w -]", "_", key.strip())[:64]
    return cleaned or "_"


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
        find_thread=hub.find_thread,
        opt_out=hub.opt_out,
        call_incoming=hub.call_incoming,
        send_text=hub.send_text,
        update_contact=hub.update_contact,
        publish=hub.publish,
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
    app.router.add_get("/status", index)
    from hub import api

    api.setup(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
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
                store, hub.events, hub.metrics, bot=bot, max_batch=settings.ingest.max_batch
            )
            hub.ingestor.start()
            if sandbox is not None:
                await sandbox.start(hub)  # before the adapters: they may call it at start
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
            # Adapters close before ingest stops: one that takes messages by other
            # means than HTTP (the SMTP receiver) stops taking them first.
            if hub.dispatcher is not None:
                await hub.dispatcher.stop()
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
    # What start-up built lives as long as the hub: out of the collector's way,
    # a full collection no longer walks it (tens of milliseconds each, in the
    # middle of whatever webhook is waiting).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
