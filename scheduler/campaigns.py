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

from hub.services import campaigns
from hub.services.outbox import OutboxError
from hub.store import find_by_ids

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.campaigns")

BACKLOG_SECONDS = 20.0  # queued ahead of the dispatcher, in seconds of the inboxes' pace
MIN_BACKLOG = 100
MAX_BACKLOG = 5000
FOLLOW_SENT_EVERY = 5.0  # seconds between looks at sent records (for delivery receipts)
FOLLOW_SENT_PAGE = 2000  # sent records looked at each time
CONCURRENCY = 16  # replies queued at once


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
        """Queue the messages of claimed records; settle those that cannot go."""
        if not records:
            return
        store = self.hub.store
        assert store is not None
        cid = str(campaign["_id"])
        contacts = await find_by_ids(store.contacts, [r["contact_id"] for r in records])
        settled: list[tuple[str, str, dict[str, Any]]] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(record: dict[str, Any]) -> None:
            contact = contacts.get(record["contact_id"])
            medium = str(record.get("channel"))
            if contact is None:
                settled.append((record["_id"], "skipped", {"reason": "the contact is gone"}))
                return
            if (contact.get("opted_out") or {}).get(medium):
                settled.append((record["_id"], "skipped", {"reason": f"opted out of {medium}"}))
                return
            text, template = campaigns.personal(campaign, contact, medium)
            if not text and template is None:
                settled.append(
                    (record["_id"], "skipped", {"reason": f"no text to send on {medium}"})
                )
                return
            async with gate:
                try:
                    assert self.hub.ingestor is not None
                    conv_id, _ = await self.hub.ingestor.open_conversation(
                        str(record["inbox"]), medium, campaigns.identity_ref(record["identity"])
                    )
                    await self.hub.reply(
                        conv_id,
                        text=text,
                        sender={"type": "system", "id": None},
                        template=template,
                        at_most_once=True,
                        campaign_id=cid,
                        key=campaigns.message_key(cid),
                    )
                except (OutboxError, ValueError) as error:
                    settled.append((record["_id"], "failed", {"reason": str(error)}))

        await asyncio.gather(*(one(r) for r in records))
        await campaigns.settle(store, cid, settled)
