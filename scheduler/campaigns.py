"""The campaigns job: plans started campaigns and sends them through the outbox.

Every run, for each campaign with work left (`hub.services.campaigns.active`):
plan it once started (per-recipient records, idempotent), turn `scheduled` into
`running` at its `send_at`, copy its messages' statuses to its records, and,
while it runs, claim due recipients and queue their messages, keeping about
`BACKLOG_SECONDS` of the inboxes' pace queued so the dispatcher never waits for
this job. Every guarantee lives in the store (see hub.services.campaigns): the
job can be stopped, killed or run by another process at any point.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.model import IdentityRef
from hub.services import campaigns
from hub.services.outbox import Draft, enqueue_many
from hub.services.templates import TemplateRefused
from hub.store import find_by_ids

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.campaigns")

BACKLOG_SECONDS = 20.0  # queued ahead of the dispatcher, in seconds of the inboxes' pace
MIN_BACKLOG = 100
MAX_BACKLOG = 5000
FOLLOW_SENT_EVERY = 5.0  # seconds between looks at sent records (for delivery receipts)
FOLLOW_SENT_PAGE = 2000  # sent records looked at each time


class CampaignJob:
    """`hub.ports.ScheduledJob` for campaigns."""

    name = "campaigns"
    every = 1.0

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._sent_followed: dict[str, float] = {}
        self._sent_after: dict[str, str | None] = {}

    def _media(self) -> dict[str, tuple[str, ...]]:
        return {inbox: campaigns.inbox_media(ch) for inbox, ch in self.hub.adapters.items()}

    def backlog(self, campaign: Mapping[str, Any], media_of: Mapping[str, Any]) -> int:
        """How many of a campaign's messages to keep queued in the outbox."""
        inboxes = [campaign["inbox"]] if campaign.get("inbox") else list(media_of)
        rate = 0.0
        for inbox in inboxes:
            channel = self.hub.adapters.get(inbox)
            if channel is not None:
                rate = max(rate, channel.rate_limit().per_second)
        return int(min(MAX_BACKLOG, max(MIN_BACKLOG, rate * BACKLOG_SECONDS)))

    async def run(self, now: datetime) -> None:
        store = self.hub.store
        if store is None:
            return
        media_of = self._media()
        for campaign in await campaigns.active(store, now):
            try:
                await self.step(campaign, now, media_of)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign step failed", extra={"campaign": campaign["_id"]})

    async def step(
        self, campaign: dict[str, Any], now: datetime, media_of: Mapping[str, tuple[str, ...]]
    ) -> None:
        store = self.hub.store
        assert store is not None
        cid = str(campaign["_id"])
        status = campaign["status"]
        if status in campaigns.ACTIVE and campaign.get("planned_at") is None:
            targeted = await campaigns.plan(store, campaign, media_of, now=now)
            log.info("campaign planned", extra={"campaign": cid, "targeted": targeted})
        if status == "scheduled":
            send_at = campaign.get("send_at")
            if send_at is None or send_at <= now:
                await store.campaigns.update_one(
                    {"_id": cid, "status": "scheduled"}, {"$set": {"status": "running"}}
                )
                status = "running"
        missing, _, _ = await campaigns.follow(store, cid, ["queued"])
        clock = time.monotonic()
        if clock - self._sent_followed.get(cid, 0.0) >= FOLLOW_SENT_EVERY:
            # Delivery receipts for sent ones: a page at a time, from where the
            # last look stopped.
            self._sent_followed[cid] = clock
            _, _, self._sent_after[cid] = await campaigns.follow(
                store, cid, ["sent"], limit=FOLLOW_SENT_PAGE, after=self._sent_after.get(cid)
            )
        if status != "running":
            return
        if missing:
            # Claimed, but their message never reached the outbox (the process
            # stopped in between): queue them now, under the same message id.
            await self.send(campaign, missing)
        queued = await campaigns.count_stage(store, cid, "queued")
        room = self.backlog(campaign, media_of) - queued
        while room > 0:
            due = await campaigns.due_records(store, cid, now, min(room, 1000))
            if not due:
                break
            claimed = await campaigns.claim(store, cid, due, now)
            await self.send(campaign, claimed)
            room -= len(due)
            # A pause or cancel from the API stops the sending between batches.
            fresh = await store.campaigns.find_one({"_id": cid}, {"status": 1})
            if fresh is None or fresh["status"] != "running":
                return
        await campaigns.complete_if_done(store, cid, now)

    async def send(self, campaign: Mapping[str, Any], records: Sequence[dict[str, Any]]) -> None:
        """Queue the messages of claimed records; settle those that cannot go.

        In bulk: one read of the contacts, one of the conversations (those not yet
        open are opened together), then the messages are queued in a few writes
        (`enqueue_many`) under the ids planning gave them, which are the ids
        `Hub.reply` would give them with the campaign's key: queueing one again,
        by either way, queues nothing. Each inbox's reply rule (a closed WhatsApp
        window refuses a text, not a template) is asked first, as `Hub.reply` does.
        """
        if not records:
            return
        store, events, ingestor = self.hub.store, self.hub.events, self.hub.ingestor
        assert store is not None and events is not None and ingestor is not None
        cid = str(campaign["_id"])
        contacts = await find_by_ids(store.contacts, [r["contact_id"] for r in records])
        settled: list[tuple[str, str, dict[str, Any]]] = []
        going: list[tuple[dict[str, Any], str | None, dict[str, Any] | None]] = []
        for record in records:
            contact = contacts.get(record["contact_id"])
            medium = str(record.get("channel"))
            if contact is None:
                settled.append((record["_id"], "skipped", {"reason": "the contact is gone"}))
                continue
            if (contact.get("opted_out") or {}).get(medium):
                settled.append((record["_id"], "skipped", {"reason": f"opted out of {medium}"}))
                continue
            channel = self.hub.adapters.get(str(record.get("inbox")))
            if channel is None:
                reason = f"inbox {record.get('inbox')} is not configured"
                settled.append((record["_id"], "failed", {"reason": reason}))
                continue
            try:
                text, template = await campaigns.personal(campaign, contact, medium, channel)
            except TemplateRefused as error:
                settled.append((record["_id"], "failed", {"reason": str(error)}))
                continue
            if not text and template is None:
                reason = f"no text to send on {medium}"
                settled.append((record["_id"], "skipped", {"reason": reason}))
                continue
            going.append((record, text, template))
        wanted: dict[str, tuple[str, str, IdentityRef]] = {}
        for record, _, _ in going:
            try:
                ref = campaigns.identity_ref(str(record["identity"]))
            except ValueError as error:
                settled.append((record["_id"], "failed", {"reason": str(error)}))
                continue
            wanted[record["conversation_id"]] = (str(record["inbox"]), str(record["channel"]), ref)
        if wanted:
            await ingestor.open_conversations(wanted)
        conversations = await find_by_ids(store.conversations, list(wanted))
        drafts: list[Draft] = []
        for record, text, template in going:
            conv = conversations.get(record["conversation_id"])
            if conv is None:
                continue  # its identity was refused above
            channel = self.hub.adapters[str(record["inbox"])]
            refusal = channel.reply_refusal_on(
                conv.get("channel"), conv.get("last_inbound_at"), template is not None
            )
            if refusal:
                settled.append((record["_id"], "failed", {"reason": refusal}))
                continue
            drafts.append(
                Draft(
                    conversation_id=record["conversation_id"],
                    text=text,
                    sender={"type": "system", "id": None},
                    at_most_once=True,
                    campaign_id=cid,
                    template=template,
                    message_id=record["message_id"],
                )
            )
        if drafts:
            await enqueue_many(store, events, drafts)
            self.hub.wake_dispatcher()
        await campaigns.settle(store, cid, settled)
