"""The running parts of one hub process, and the services they make up.

`Hub` holds what the factory (`hub.app`) opened: the store, the events, ingest,
the dispatcher, the inboxes' channels. Handlers, bots and scheduled jobs reach the
operations through it; the operations themselves live in the subject modules
beside this one. `ChannelServices` is what a channel adapter is given
(`hub.ports.ChannelContext`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pymongo.errors import PyMongoError

from hub.metrics import Metrics
from hub.model import Attachment, ButtonReply, Event, IdentityRef, InboundEvent, StatusUpdate
from hub.ports import Channel, IngestResult, OutboundFile, StoreUnavailable
from hub.services import contacts, conversations, media, media_out
from hub.services.dispatcher import Dispatcher
from hub.services.events import EventBus, Events
from hub.services.ingest import Ingestor
from hub.services.media_fetch import MediaFetcher
from hub.services.outbox import record_statuses
from hub.services.replies import Replies
from hub.settings import Settings
from hub.store import Store


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
    replies: Replies | None = None
    adapters: dict[str, Channel] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    media: MediaFetcher | None = None  # fetches customers' files (hub.services.media_fetch)

    async def ingest(self, events: Sequence[InboundEvent]) -> list[IngestResult]:
        assert self.ingestor is not None
        return await self.ingestor.ingest(events)

    async def record_status(self, updates: Sequence[StatusUpdate]) -> int:
        assert self.store is not None and self.events is not None
        try:
            return await record_statuses(self.store, self.events, list(updates))
        except PyMongoError as error:
            raise StoreUnavailable(str(error)) from error

    async def merge_contacts(self, keep_id: str, other_id: str) -> dict[str, Any]:
        """Fold contact `other_id` into `keep_id` and tell every hub process."""
        assert self.store is not None and self.events is not None
        return await contacts.merge_and_tell(self.store, self.events, keep_id, other_id)

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
        """Queue an outbound message in a conversation (`Replies.reply`)."""
        assert self.replies is not None
        return await self.replies.reply(
            conversation_id,
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

    def wake_dispatcher(self) -> None:
        """Something was queued: let the dispatcher look now, not at its next poll."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def publish(self, events: Sequence[Event]) -> None:
        assert self.events is not None
        await self.events.publish(list(events))


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


class ChannelServices:
    """What the hub gives channel adapters (`hub.ports.ChannelContext`)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.public_url = hub.settings.public_url
        self.default_region = hub.settings.identity.default_region
        self.logger = logging.getLogger("hub.channels")
        self.max_media_bytes = hub.settings.media.max_inbound_bytes

    def _store(self) -> tuple[Store, Events]:
        hub = self._hub
        assert hub.store is not None and hub.events is not None
        return hub.store, hub.events

    async def ingest(self, events: Sequence[InboundEvent]) -> list[IngestResult]:
        return await self._hub.ingest(events)

    async def record_status(self, updates: Sequence[StatusUpdate]) -> int:
        return await self._hub.record_status(updates)

    def http(self) -> aiohttp.ClientSession:
        assert self._hub.http is not None
        return self._hub.http

    async def find_thread(self, inbox: str, message_ids: Sequence[str]) -> str | None:
        store, _ = self._store()
        return await conversations.find_thread(store, inbox, message_ids)

    async def opt_out(self, ref: IdentityRef, medium: str, opted_out: bool = True) -> str:
        store, events = self._store()
        return await contacts.opt_out(store, events, ref, medium, opted_out)

    async def call_incoming(self, inbox: str, ref: IdentityRef, call_id: str) -> str:
        store, events = self._store()
        assert self._hub.ingestor is not None
        return await conversations.call_incoming(
            store, events, self._hub.ingestor, inbox, ref, call_id
        )

    async def send_text(
        self, inbox: str, medium: str, ref: IdentityRef, text: str, *, key: str | None = None
    ) -> str | None:
        assert self._hub.replies is not None
        return await self._hub.replies.send_text(inbox, medium, ref, text, key=key)

    async def update_contact(
        self,
        ref: IdentityRef,
        also: Sequence[IdentityRef] = (),
        name: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        store, _ = self._store()
        return await contacts.update_from_channel(store, ref, also, name, attributes)

    async def outbound_file(self, attachment: Attachment) -> OutboundFile:
        store, _ = self._store()
        return await media_out.read_file(store, attachment)

    async def signed_media_url(self, attachment: Attachment) -> str:
        store, _ = self._store()
        key = await media_out.signing_key(store)
        media_id = attachment.id or attachment.url.removeprefix("/api/media/")
        return media_out.signed_url(key, self.public_url, media_id)

    async def keep_media(self, data: bytes, *, name: str | None, content_type: str | None) -> str:
        store, _ = self._store()
        try:
            return await media.stage(store, data, name=name, content_type=content_type)
        except PyMongoError as error:
            raise StoreUnavailable(str(error)) from error
