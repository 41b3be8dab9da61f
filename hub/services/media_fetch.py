"""The media fetcher: downloads customers' files after their webhook was answered.

A webhook only stores each attachment `pending` with the provider's reference
(`ref`), and the message `media_pending` (hub.services.messages). Then, in every
hub process:

- a new message with a pending file wakes the fetcher (the `message.created`
  event, from this process or another), and a sweep every `[media]
  sweep_interval` looks for pending files anyway, so a file a crash or a
  restart interrupted is fetched when the hub is back;
- each file is claimed before it is fetched: a document in `media_fetches`
  whose `_id` is the attachment's, with its owner, the time the claim runs out
  and the tries so far. Of several processes one holds it; a claim whose holder
  died runs out and is taken again;
- the inbox's adapter downloads it (`Channel.fetch_media`, with the inbox's own
  credentials; never more than `max_inbound_bytes`), within `fetch_timeout`;
- the bytes are checked (their type, sniffed, against the type the sender
  declared; the message's total against `max_message_bytes`), kept in GridFS
  under the attachment's id (hub.services.media) and the attachment becomes
  `ready` with the stored type and size; or `failed` with the reason (too
  large, timeout, provider error, type does not match the bytes). A timeout or a
  provider's transient error is tried again after `retry_base` seconds,
  doubling, up to `max_attempts` tries;
- every change is published as `message.updated`. The message itself is kept
  whatever becomes of its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from hub.model import Event, utcnow
from hub.ports import Channel, FetchedMedia, MediaFetchError, MediaTooLarge
from hub.services import media
from hub.services.events import Events
from hub.settings import MediaSettings
from hub.shapes import message_view
from hub.store import Store

log = logging.getLogger("hub.media")

CLAIM_SLACK = 10.0  # seconds a claim outlives the download's timeout
SWEEP_BATCH = 200  # messages one look reads at most
STAGED_MAX_AGE = timedelta(days=1)  # staged files no message adopted are removed after


class MediaFetcher:
    """Fetches pending attachments: one instance per hub process."""

    def __init__(
        self,
        store: Store,
        events: Events,
        adapters: Mapping[str, Channel],
        settings: MediaSettings,
        instance_id: str,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.events = events
        self.adapters = adapters
        self.settings = settings
        self.instance_id = instance_id
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_cleanup: datetime | None = None

    # -- running ---------------------------------------------------------------------

    def start(self) -> None:
        self.events.bus.listen("message.created", self._on_created)
        self._task = asyncio.create_task(self._run(), name="media-fetcher")

    def _on_created(self, event: Event) -> None:
        items = event.data.get("attachments") or []
        if any(isinstance(a, dict) and a.get("status") == "pending" for a in items):
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop looking and cancel the downloads in flight: their claims run out
        and a hub (this one restarted, or another) fetches them again."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        # Hand back what this process held: a restarted hub takes it up at once.
        with contextlib.suppress(PyMongoError):
            await self.store.media_fetches.update_many(
                {"owner": self.instance_id}, {"$set": {"owner": None, "until": self.clock()}}
            )

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no download runs here (tests)."""
        async with asyncio.timeout(timeout):
            while self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.sweep()
            except PyMongoError as error:
                log.warning("media sweep failed", extra={"error": str(error)[:200]})
            except Exception:
                log.exception("media sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sweep_interval)

    # -- one look --------------------------------------------------------------------

    async def sweep(self) -> int:
        """Claim and start the download of each pending file no one holds, up to
        `workers` at once here; the number started."""
        now = self.clock()
        started = 0
        cursor = self.store.messages.find(
            {"media_pending": True},
            {"attachments": 1, "conversation_id": 1, "inbox": 1},
            limit=SWEEP_BATCH,
        )
        async for message in cursor:
            for index, item in enumerate(message.get("attachments") or []):
                if not isinstance(item, dict) or item.get("status") != "pending":
                    continue
                media_id = str(item.get("id"))
                if media_id in self._running:
                    continue
                if len(self._running) >= self.settings.workers:
                    return started  # a finishing download wakes the next look
                attempt = await self._claim(media_id, now)
                if attempt is None:
                    continue
                task = asyncio.create_task(
                    self._fetch(message, index, item, attempt), name=f"media-{media_id}"
                )
                self._running[media_id] = task
                started += 1
        await self._cleanup(now)
        return started

    async def _claim(self, media_id: str, now: datetime) -> int | None:
        """Take the file `media_id` for this process; its try number, or None when
        another holds it (or it waits for its next try)."""
        until = now + timedelta(seconds=self.settings.fetch_timeout + CLAIM_SLACK)
        try:
            doc = await self.store.media_fetches.find_one_and_update(
                {"_id": media_id, "until": {"$lt": now}},
                {"$set": {"owner": self.instance_id, "until": until}, "$inc": {"attempts": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None
        return int((doc or {}).get("attempts") or 1)

    async def _cleanup(self, now: datetime) -> None:
        """Remove staged files (e-mail attachments) that no stored message took:
        their mail was a provider's retry of one stored already."""
        if self._last_cleanup is not None and now - self._last_cleanup < timedelta(hours=1):
            return
        self._last_cleanup = now
        files = self.store.db[f"{media.BUCKET}.files"]
        async for doc in files.find(
            {"metadata.staged": True, "metadata.saved_at": {"$lt": now - STAGED_MAX_AGE}},
            {"_id": 1},
        ):
            await media.delete_media(self.store, doc["_id"])

    # -- one file --------------------------------------------------------------------

    async def _fetch(
        self, message: dict[str, Any], index: int, item: dict[str, Any], attempt: int
    ) -> None:
        media_id = str(item["id"])
        try:
            await self._fetch_one(message, index, item, attempt)
        except PyMongoError as error:
            # The store went away mid-way: the claim runs out and the file is tried again.
            log.warning(
                "media fetch interrupted", extra={"media": media_id, "error": str(error)[:200]}
            )
        except Exception:
            log.exception("media fetch failed", extra={"media": media_id})
            await self._retry_later(media_id, attempt, "the hub could not fetch the file")
        finally:
            self._running.pop(media_id, None)
            self.wake()

    async def _fetch_one(
        self, message: dict[str, Any], index: int, item: dict[str, Any], attempt: int
    ) -> None:
        media_id = str(item["id"])
        current = await self.store.messages.find_one(
            {"_id": message["_id"]}, {"attachments": 1, "conversation_id": 1}
        )
        items = (current or {}).get("attachments") or []
        if index >= len(items) or items[index].get("id") != media_id:
            await self.store.media_fetches.delete_one({"_id": media_id})
            return
        if items[index].get("status") != "pending":
            await self.store.media_fetches.delete_one({"_id": media_id})
            return
        try:
            got = await self._download(message, item)
            data = got.data
            limit = self.settings.max_inbound_bytes
            if len(data) > limit:
                raise MediaTooLarge(len(data), limit)
            detected = media.sniff(data)
            declared = item.get("content_type") or got.content_type
            if media.type_mismatch(declared, detected):
                raise MediaFetchError(
                    f"type does not match the bytes: declared {media.plain_type(declared)}, "
                    f"the file is {detected}",
                    permanent=True,
                )
            others = sum(
                int(other.get("size") or 0)
                for n, other in enumerate(items)
                if n != index and other.get("status") == "ready"
            )
            if others + len(data) > self.settings.max_message_bytes:
                raise MediaFetchError(
                    f"too large: the message's files would hold {others + len(data)} bytes, "
                    f"the limit is {self.settings.max_message_bytes} bytes",
                    permanent=True,
                )
        except MediaFetchError as error:
            if error.permanent or attempt >= self.settings.max_attempts:
                reason = error.reason
                if not error.permanent:
                    reason = f"{reason} (after {attempt} tries)"
                await self._finish(message, index, media_id, {"status": "failed", "error": reason})
            else:
                await self._retry_later(media_id, attempt, error.reason)
            return
        saved = await media.save(
            self.store,
            data,
            name=item.get("name") or got.name,
            declared_type=declared,
            conversation_id=message.get("conversation_id"),
            message_id=str(message["_id"]),
            media_id=media_id,
        )
        ref = str(item.get("ref") or "")
        if ref.startswith(media.STAGED_PREFIX):
            await media.delete_media(self.store, ref[len(media.STAGED_PREFIX) :])
        await self._finish(
            message,
            index,
            media_id,
            {
                "status": "ready",
                "error": None,
                "content_type": saved["content_type"],
                "size": saved["size"],
                **({"name": saved["name"]} if saved["name"] else {}),
            },
        )

    async def _download(self, message: dict[str, Any], item: dict[str, Any]) -> FetchedMedia:
        ref = str(item.get("ref") or "")
        if ref.startswith(media.STAGED_PREFIX):
            staged = await media.open_media(self.store, ref[len(media.STAGED_PREFIX) :])
            if staged is None:
                raise MediaFetchError("the received file was lost", permanent=True)
            if staged.size > self.settings.max_inbound_bytes:
                raise MediaTooLarge(staged.size, self.settings.max_inbound_bytes)
            return FetchedMedia(data=await staged.read(), name=staged.name)
        adapter = self.adapters.get(str(message.get("inbox")))
        if adapter is None:
            raise MediaFetchError(
                f"inbox {message.get('inbox')} is not configured here", permanent=True
            )
        timeout = self.settings.fetch_timeout
        try:
            async with asyncio.timeout(timeout):
                return await adapter.fetch_media(ref, self.settings.max_inbound_bytes)
        except TimeoutError:
            raise MediaFetchError(f"timeout: no file after {timeout:g} s") from None

    async def _retry_later(self, media_id: str, attempt: int, reason: str) -> None:
        delay = self.settings.retry_base * 2 ** max(0, attempt - 1)
        log.info(
            "media fetch will be tried again",
            extra={"media": media_id, "attempt": attempt, "in_seconds": delay, "reason": reason},
        )
        with contextlib.suppress(PyMongoError):
            await self.store.media_fetches.update_one(
                {"_id": media_id, "owner": self.instance_id},
                {
                    "$set": {
                        "owner": None,
                        "until": self.clock() + timedelta(seconds=delay),
                        "error": reason,
                    }
                },
            )

    async def _finish(
        self, message: dict[str, Any], index: int, media_id: str, fields: dict[str, Any]
    ) -> None:
        """Write what became of one file, drop its claim, tell the inbox.

        The message's files are rewritten together, on the condition that they
        are still as read (another process may finish another file of the same
        message at the same time): the message's total is checked against what
        the others hold now."""
        doc: dict[str, Any] | None = None
        for _ in range(20):
            current = await self.store.messages.find_one({"_id": message["_id"]})
            items = list((current or {}).get("attachments") or [])
            if current is None or index >= len(items) or items[index].get("id") != media_id:
                break
            if items[index].get("status") != "pending":
                break
            change = dict(fields)
            if change["status"] == "ready":
                others = sum(
                    int(other.get("size") or 0)
                    for n, other in enumerate(items)
                    if n != index and other.get("status") == "ready"
                )
                limit = self.settings.max_message_bytes
                if others + int(change["size"]) > limit:
                    await media.delete_media(self.store, media_id)
                    change = {
                        "status": "failed",
                        "error": f"too large: the message's files would hold "
                        f"{others + int(change['size'])} bytes, the limit is {limit} bytes",
                    }
            fields = change
            updated = [dict(item) for item in items]
            updated[index].update(change)
            update: dict[str, Any] = {"$set": {"attachments": updated}}
            if not any(item.get("status") == "pending" for item in updated):
                update["$unset"] = {"media_pending": ""}
            result = await self.store.messages.update_one(
                {"_id": message["_id"], "attachments": items}, update
            )
            if result.matched_count:
                doc = {**current, "attachments": updated}
                if "$unset" in update:
                    doc.pop("media_pending", None)
                break
            await asyncio.sleep(0.01)
        await self.store.media_fetches.delete_one({"_id": media_id})
        if fields["status"] == "failed":
            log.info("media fetch failed", extra={"media": media_id, "reason": fields["error"]})
        if doc is not None:
            await self.events.publish([Event("message.updated", message_view(doc))])
