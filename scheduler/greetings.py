"""The greeting job: birthdays and holidays at `local_hour` in each contact's zone.

Every guarantee comes from the store, not from this process's memory:

- **Planning.** For each local date that can be "today" somewhere (the UTC date
  before, of and two after `now`), once per date and settings, every contact with
  an occasion that day gets a record in `greetings_sent` whose `_id` is
  `<contact>:<occasion>:<year>` (`occasion` is `birthday` or `holiday:MM-DD`). Its
  `due_at` is `local_hour` on that date in the contact's zone (`contact_timezone`),
  moved to the end of the quiet hours when it falls in them; its channel is the
  conversation the contact wrote in last. Contacts that cannot be greeted get the
  record too, `skipped` with the reason (invalid birthday or time zone, no
  conversation): counted once, never a crash. Inserting an `_id` that exists is
  refused by the store, so planning twice (two processes) changes nothing.
- **Queueing ahead.** A greeting is prepared before its instant: when its
  `due_at` is less than `PREPARE_AHEAD` (5 minutes) away, a run takes the record,
  re-checks the contact (removed, opted out, birthday changed: skipped and
  counted; time zone changed: planned again for the new zone's hour), quiet hours
  at the instant (held until they end) and the channel's reply rules, and queues
  the message in the outbox with `next_attempt_at` at the instant, `at_most_once`
  and a message id derived from the record's `_id`: queueing the same greeting
  again is a no-op. The record becomes `sent` (handed to the outbox; `send_at`
  says when it leaves). The instant itself costs only the dispatcher's claim
  (found by the outbox's `next_attempt_at` index); the job wakes its process's
  dispatcher at the instant. The dispatcher checks the contact's opt-out again
  when it sends (`recheck_opt_out`): one who opts out in the last minutes gets
  nothing (the message is `cancelled`). A birthday or time zone changed within
  those last minutes is not seen: the greeting leaves as prepared.
- **Two processes.** One run at a time prepares (the `greetings:queue` lease,
  renewed per batch, given back at the end of the run; a process killed while
  holding it is replaced when it runs out, 60 s). A process killed between
  queueing and marking its records leaves them `planned`; the next run queues
  them again, which the outbox refuses as duplicates, and marks them.
- **Missing the day.** A greeting still unsent when its local date is over is
  `missed`; `hub greetings run --date D` (`catch_up`) sends those, and those never
  planned because the hub was down, at once (quiet hours do not hold it).

29 February birthdays go on 28 February in other years.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time as clock
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pymongo import UpdateOne

from hub.model import utcnow
from hub.services.greetings import (
    GreetingSettings,
    InvalidTimezone,
    contact_timezone,
    load_greeting_settings,
)
from hub.services.leases import release_leases, take_lease
from hub.services.outbox import Draft, enqueue_many
from hub.services.placeholders import fill
from hub.store import Store, derived_id, find_by_ids, insert_new
from hub.store import new_id as new_token

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.greetings")

# How long before its instant a greeting is queued in the outbox (to leave then).
PREPARE_AHEAD = timedelta(minutes=5)
QUEUE_LEASE = "greetings:queue"
QUEUE_LEASE_SECONDS = 60.0
BATCH = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the lower bound of a range of dates
LOOKUP_CHUNK = 25
PLAN_BATCH = 5000
# While planning a whole day, greetings coming due are queued at least this often.
PLAN_QUEUE_EVERY = 10.0  # seconds
SENDER = {"type": "system", "id": None}
# What planning reads (a projection: fewer bytes for the store to write out).
PLAN_FIELDS = {"birthday": 1, "timezone": 1, "phones": 1}
CONVERSATION_FIELDS = {"contact_id": 1, "inbox": 1, "channel": 1, "last_inbound_at": 1}


@dataclass
class GreetingCounts:
    """What one run did."""

    planned: int = 0  # records written for greetings to come
    sent: int = 0  # greetings queued in the outbox
    held: int = 0  # due, but in the contact's quiet hours: moved to their end
    missed: int = 0  # their local day ended unsent (left for `hub greetings run`)
    already: int = 0  # catch-up: sent before
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    message_ids: list[str] = field(default_factory=list)  # of those queued

    def add(self, other: GreetingCounts) -> None:
        self.planned += other.planned
        self.sent += other.sent
        self.held += other.held
        self.missed += other.missed
        self.already += other.already
        self.skipped.update(other.skipped)
        self.message_ids += other.message_ids

    def as_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "sent": self.sent,
            "held": self.held,
            "missed": self.missed,
            "already_sent": self.already,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
        }


def birthday_of(value: Any) -> tuple[int, int] | None:
    """(month, day) of a stored birthday, None when it is not a real date."""
    if not isinstance(value, Mapping):
        return None
    month, day = value.get("month"), value.get("day")
    if isinstance(month, bool) or isinstance(day, bool):
        return None
    if not isinstance(month, int) or not isinstance(day, int):
        return None
    try:
        date(2000, month, day)  # a leap year: 29 February is a birthday
    except ValueError:
        return None
    year = value.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        return None
    return month, day


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def birthday_on(month: int, day: int, on: date) -> bool:
    """Whether a birthday is greeted on the date `on` (29 Feb on 28 Feb in other years)."""
    if (month, day) == (on.month, on.day):
        return True
    return (month, day) == (2, 29) and (on.month, on.day) == (2, 28) and not is_leap(on.year)


def pick_template(templates: Mapping[str, str], locale: Any) -> str:
    """The template for a locale: exact, else its language (`pt` for `pt-BR`), else
    English, else the first."""
    if isinstance(locale, str) and locale:
        wanted = locale.replace("_", "-")
        for key, text in templates.items():
            if key.replace("_", "-").lower() == wanted.lower():
                return text
        language = wanted.split("-")[0].lower()
        for key, text in templates.items():
            if key.replace("_", "-").split("-")[0].lower() == language:
                return text
    if "en" in templates:
        return templates["en"]
    return next(iter(templates.values()))


def due_instant(on: date, zone: ZoneInfo, settings: GreetingSettings) -> tuple[datetime, datetime]:
    """(due_at, expires_at) in UTC: `local_hour` on `on` in `zone`, moved past quiet
    hours; it expires when that local day is over (or 12 hours after a due moved
    into the next day)."""
    local = datetime.combine(on, time(settings.local_hour), tzinfo=zone)
    local = settings.quiet_until(local)
    end_of_day = datetime.combine(on + timedelta(days=1), time(0), tzinfo=zone)
    due = local.astimezone(UTC)
    expires = max(end_of_day.astimezone(UTC), due + timedelta(hours=12))
    return due, expires


class _Zones:
    """The due instant of one local date per zone, worked out once per zone (a
    holiday's 100,000 contacts live in a few dozen zones)."""

    def __init__(self, on: date, settings: GreetingSettings) -> None:
        self.on = on
        self.settings = settings
        self._known: dict[str, tuple[datetime, datetime]] = {}

    def instant(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        found = self._known.get(zone.key)
        if found is None:
            found = self._known[zone.key] = due_instant(self.on, zone, self.settings)
        return found


class GreetingJob:
    """Sends the birthday and holiday greetings (`hub.ports.ScheduledJob`)."""

    name = "greetings"
    every = 1.0  # seconds; a greeting due sooner than this is waited for in the run

    def __init__(self, hub: Hub, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.hub = hub
        self.sleep = sleep
        self.last = GreetingCounts()
        self._planned: set[tuple[str, str]] = set()  # (date, settings) planned here
        # The instants of the greetings this job queued ahead: only to wake the
        # dispatcher then (it polls anyway); nothing relies on this memory.
        self._instants: set[datetime] = set()
        self._owner = f"{hub.instance_id}:{new_token()}"

    @property
    def store(self) -> Store:
        assert self.hub.store is not None
        return self.hub.store

    async def run(self, now: datetime) -> None:
        self.last = await self.run_once(now)

    async def run_once(self, now: datetime, *, lookahead: bool = True) -> GreetingCounts:
        """Queue what is due within `PREPARE_AHEAD` of `now`, plan the days around
        it, and wake the dispatcher at an instant due within `every` seconds."""
        counts = GreetingCounts()
        settings = await load_greeting_settings(self.store)
        if not settings.enabled:
            return counts
        started = clock.monotonic()

        def moving_now() -> datetime:  # `now`, advanced by the time this run took
            return now + timedelta(seconds=clock.monotonic() - started)

        counts.add(await self.send_due(now, settings))
        today = now.astimezone(UTC).date()
        for offset in (-1, 0, 1, 2):
            planned = await self.plan_date(today + timedelta(days=offset), settings, moving_now)
            counts.add(planned)
            if planned.planned:  # some may be due already (the first run of the day)
                counts.add(await self.send_due(moving_now(), settings))
        if lookahead:
            await self._wake_at_instant(moving_now())
        return counts

    async def _wake_at_instant(self, current: datetime) -> None:
        """Wait for the next instant this job queued greetings for, when it comes
        within `every`, and wake the dispatcher then (not at its next poll)."""
        self._instants = {t for t in self._instants if t > current}
        nxt = min(self._instants, default=None)
        if nxt is None:
            return
        wait = (nxt - current).total_seconds()
        if wait <= self.every:
            await self.sleep(wait)
            self._instants.discard(nxt)
            self.hub.wake_dispatcher()

    # -- planning ---------------------------------------------------------------------

    async def plan_date(
        self,
        on: date,
        settings: GreetingSettings,
        moving_now: Callable[[], datetime] | None = None,
        *,
        force: bool = False,
    ) -> GreetingCounts:
        """Write the records of every greeting of the local date `on` (once per date
        and settings; `force` plans again, adding only what is missing). While it
        plans, greetings coming due are queued now and then (`moving_now`)."""
        counts = GreetingCounts()
        version = _version(settings)
        marker = f"greetings-plan:{on.isoformat()}"
        if not force:
            if (on.isoformat(), version) in self._planned:
                return counts
            done = await self.store.settings.find_one({"_id": marker}, {"version": 1})
            if done is not None and done.get("version") == version:
                self._planned.add((on.isoformat(), version))
                return counts
        holidays = [h for h in settings.holidays if (h.month, h.day) == (on.month, on.day)]
        # A holiday concerns every contact; otherwise only birthdays in this month.
        query: dict[str, Any] = {} if holidays else {"birthday.month": on.month}
        # Every contact's conversation at once for a holiday (one scan is far
        # quicker than looking 100,000 contacts up), read while the first contacts
        # are; a birthday's few are looked up.
        scan = asyncio.ensure_future(self._all_preferred()) if holidays else None
        try:
            return await self._plan_contacts(on, settings, moving_now, query, holidays, scan)
        finally:
            if scan is not None and not scan.done():
                scan.cancel()

    async def _plan_contacts(
        self,
        on: date,
        settings: GreetingSettings,
        moving_now: Callable[[], datetime] | None,
        query: dict[str, Any],
        holidays: list[Any],
        scan: asyncio.Future[dict[str, dict[str, Any]]] | None,
    ) -> GreetingCounts:
        counts = GreetingCounts()
        version = _version(settings)
        marker = f"greetings-plan:{on.isoformat()}"
        everyone: dict[str, dict[str, Any]] | None = None
        zones = _Zones(on, settings)
        batch: list[dict[str, Any]] = []
        last_queue = clock.monotonic()
        # One batch's records are written while the next batch is read and worked
        # out (the store's work and this process's overlap).
        writing: asyncio.Task[GreetingCounts] | None = None
        cursor = self.store.contacts.find(query, PLAN_FIELDS).batch_size(PLAN_BATCH)
        async for contact in cursor:
            batch.append(contact)
            if len(batch) >= PLAN_BATCH:
                if scan is not None and everyone is None:
                    everyone = await scan
                records, early = await self._plan_records(
                    batch, on, settings, holidays, everyone, zones
                )
                counts.add(early)
                batch = []
                if writing is not None:
                    counts.add(await writing)
                writing = asyncio.ensure_future(self._write_records(records))
                if moving_now is not None and clock.monotonic() - last_queue >= PLAN_QUEUE_EVERY:
                    counts.add(await writing)
                    writing = None
                    counts.add(await self.send_due(moving_now(), settings))
                    last_queue = clock.monotonic()
        if writing is not None:
            counts.add(await writing)
        if batch:
            if scan is not None and everyone is None:
                everyone = await scan
            records, early = await self._plan_records(
                batch, on, settings, holidays, everyone, zones
            )
            counts.add(early)
            counts.add(await self._write_records(records))
        await self.store.settings.replace_one(
            {"_id": marker},
            {"_id": marker, "version": version, "planned_at": utcnow()},
            upsert=True,
        )
        self._planned.add((on.isoformat(), version))
        return counts

    async def _write_records(self, records: list[dict[str, Any]]) -> GreetingCounts:
        """Insert planned records (one command; those that exist are left as they
        are: planned by another process, or earlier) and count the new ones."""
        counts = GreetingCounts()
        refused = await insert_new(self.store.greetings_sent, records)
        for record in records:
            if record["_id"] in refused:
                continue
            if record["status"] == "planned":
                counts.planned += 1
            else:
                counts.skipped[record["reason"]] += 1
        return counts

    async def _plan_records(
        self,
        contacts: list[dict[str, Any]],
        on: date,
        settings: GreetingSettings,
        holidays: list[Any],
        everyone: dict[str, dict[str, Any]] | None = None,
        zones: _Zones | None = None,
    ) -> tuple[list[dict[str, Any]], GreetingCounts]:
        """The records of a batch of contacts (none written yet)."""
        counts = GreetingCounts()
        zones = zones or _Zones(on, settings)
        wanted: list[tuple[dict[str, Any], str, str | None]] = []  # contact, occasion, name
        records: list[dict[str, Any]] = []
        year = on.year
        for contact in contacts:
            raw_birthday = contact.get("birthday")
            if raw_birthday is not None:
                parsed = birthday_of(raw_birthday)
                if parsed is None:
                    if _month_of(raw_birthday) == on.month or holidays:
                        records.append(_skipped(contact, "birthday", year, on, "invalid birthday"))
                elif birthday_on(parsed[0], parsed[1], on):
                    wanted.append((contact, "birthday", None))
            for holiday in holidays:
                wanted.append((contact, f"holiday:{holiday.key}", holiday.name))
        if not wanted and not records:
            return records, counts
        if everyone is not None:
            preferred = everyone
        else:
            preferred = await self._preferred_conversations([c["_id"] for c, _, _ in wanted])
        day = on.isoformat()
        for contact, occasion, name in wanted:
            try:
                zone = contact_timezone(contact, settings.default_timezone)
            except InvalidTimezone:
                records.append(_skipped(contact, occasion, year, on, "invalid time zone"))
                continue
            conversation = preferred.get(contact["_id"])
            if conversation is None:
                records.append(_skipped(contact, occasion, year, on, "no conversation"))
                continue
            due, expires = zones.instant(zone)
            # Only what sending needs: 100,000 of them are written for a holiday.
            record = {
                "_id": f"{contact['_id']}:{occasion}:{year}",
                "contact_id": contact["_id"],
                "occasion": occasion,
                "date": day,
                "timezone": zone.key,
                "status": "planned",
                "due_at": due,
                "expires_at": expires,
                "conversation_id": conversation["_id"],
                "channel": conversation.get("channel"),
            }
            if name is not None:
                record["name"] = name  # a holiday's (its template if it is removed)
            records.append(record)
        return records, counts

    async def _preferred_conversations(self, contact_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each contact's conversation it wrote in last (its preferred channel)."""
        best: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(contact_ids))
        # Small `$in` lists: the embedded engine's cost grows fast with their length.
        for start in range(0, len(unique), LOOKUP_CHUNK):
            chunk = unique[start : start + LOOKUP_CHUNK]
            query = {"contact_id": {"$in": chunk}}
            async for conv in self.store.conversations.find(query, CONVERSATION_FIELDS):
                _keep_latest(best, conv)
        return best

    async def _all_preferred(self) -> dict[str, dict[str, Any]]:
        """Every contact's conversation it wrote in last, from one scan."""
        best: dict[str, dict[str, Any]] = {}
        async for conv in self.store.conversations.find({}, CONVERSATION_FIELDS).batch_size(5000):
            _keep_latest(best, conv)
        return best

    # -- queueing ---------------------------------------------------------------------

    async def send_due(self, now: datetime, settings: GreetingSettings) -> GreetingCounts:
        """Queue in the outbox every greeting due within `PREPARE_AHEAD` of `now`, to
        leave at its instant (held by quiet hours, or `missed` when its local day
        is over). One process at a time (the `greetings:queue` lease)."""
        counts = GreetingCounts()
        horizon = now + PREPARE_AHEAD
        if not await take_lease(self.store, QUEUE_LEASE, self._owner, QUEUE_LEASE_SECONDS):
            return counts  # another process (or job) is queueing them
        try:
            while True:
                # A lower bound too: settled records have no `due_at`, and a range
                # without one walks their index entries as well.
                due = await (
                    self.store.greetings_sent.find({"due_at": {"$gte": EPOCH, "$lte": horizon}})
                    .sort("due_at", 1)
                    .limit(BATCH)
                    .to_list()
                )
                if not due:
                    return counts
                ready: list[dict[str, Any]] = []
                moves: list[UpdateOne] = []
                for record in due:
                    if _aware(record["expires_at"]) <= now:
                        moves.append(_settle(record, "missed"))
                        counts.missed += 1
                        continue
                    leaves = max(_aware(record["due_at"]), now)
                    local = leaves.astimezone(ZoneInfo(record["timezone"]))
                    if settings.in_quiet_hours(local):
                        until = settings.quiet_until(local).astimezone(UTC)
                        moves.append(UpdateOne({"_id": record["_id"]}, {"$set": {"due_at": until}}))
                        counts.held += 1
                        continue
                    ready.append(record)
                if moves:
                    await self.store.greetings_sent.bulk_write(moves, ordered=False)
                counts.add(await self._queue(ready, now, settings))
                if len(due) < BATCH:
                    return counts
                await take_lease(self.store, QUEUE_LEASE, self._owner, QUEUE_LEASE_SECONDS)
        finally:
            await release_leases(self.store, [QUEUE_LEASE], self._owner)

    async def catch_up(self, on: date, now: datetime | None = None) -> GreetingCounts:
        """`hub greetings run --date`: plan `on` (adding what is missing) and send now
        every greeting of that date not sent yet, quiet hours or not."""
        now = now or utcnow()
        settings = await load_greeting_settings(self.store)
        await self.plan_date(on, settings, force=True)
        counts = GreetingCounts()
        cursor = self.store.greetings_sent.find({"date": on.isoformat()})
        records = await cursor.to_list()
        # `claimed`: a record an earlier version of the job was sending.
        pending = [r for r in records if r["status"] in ("planned", "missed", "claimed")]
        counts.already = sum(1 for r in records if r["status"] == "sent")
        for record in records:
            if record["status"] == "skipped":
                counts.skipped[record.get("reason") or "skipped"] += 1
        for start in range(0, len(pending), BATCH):
            chunk = pending[start : start + BATCH]
            counts.add(await self._queue(chunk, now, settings, catch_up=True))
        return counts

    async def _queue(
        self,
        records: list[dict[str, Any]],
        now: datetime,
        settings: GreetingSettings,
        *,
        catch_up: bool = False,
    ) -> GreetingCounts:
        """Queue the greetings of `records` in the outbox, each to leave at its
        `due_at` (now for a catch-up), and mark them `sent`; those that cannot be
        sent are `skipped` with the reason. Four store commands per batch besides
        the outbox's own."""
        counts = GreetingCounts()
        if not records:
            return counts
        contacts = await find_by_ids(self.store.contacts, [r["contact_id"] for r in records])
        conversations = await find_by_ids(
            self.store.conversations, [r["conversation_id"] for r in records]
        )
        drafts: list[Draft] = []
        queued: list[tuple[dict[str, Any], str, datetime]] = []  # record, message id, leaves
        settles: list[UpdateOne] = []
        for record in records:
            contact = contacts.get(record["contact_id"])
            conversation = conversations.get(record["conversation_id"])
            reason = self._refusal(record, contact, conversation)
            if reason is None and contact is not None and not catch_up:
                reason, moved = self._changed(record, contact, settings)
                if moved is not None:  # its zone changed: its hour there instead
                    settles.append(UpdateOne({"_id": record["_id"]}, {"$set": moved}))
                    counts.held += 1
                    continue
            if reason is not None:
                settles.append(_settle(record, "skipped", reason=reason))
                counts.skipped[reason] += 1
                continue
            assert contact is not None
            template = pick_template(self._templates(record, settings), contact.get("locale"))
            text = fill(template, contact)
            message_id = derived_id("keyed", record["conversation_id"], record["_id"])
            leaves = now if catch_up else max(now, _aware(record["due_at"]))
            drafts.append(
                Draft(
                    conversation_id=record["conversation_id"],
                    text=text,
                    sender=SENDER,
                    at_most_once=True,
                    message_id=message_id,
                    next_attempt_at=leaves,
                    recheck_opt_out=True,
                )
            )
            queued.append((record, message_id, leaves))
        if drafts:
            assert self.hub.events is not None
            # A greeting queued before (by a process killed before it marked the
            # record) is refused as a duplicate: queued once, marked now.
            await enqueue_many(self.store, self.hub.events, drafts)
            for record, message_id, leaves in queued:
                settles.append(
                    _settle(record, "sent", message_id=message_id, sent_at=now, send_at=leaves)
                )
                if leaves > now:
                    self._instants.add(leaves)
            counts.sent += len(queued)
            counts.message_ids += [message_id for _, message_id, _ in queued]
            if any(leaves <= now for _, _, leaves in queued):
                self.hub.wake_dispatcher()
        if settles:
            await self.store.greetings_sent.bulk_write(settles, ordered=False)
        return counts

    def _changed(
        self, record: Mapping[str, Any], contact: Mapping[str, Any], settings: GreetingSettings
    ) -> tuple[str | None, dict[str, Any] | None]:
        """What changed in the contact since the record was planned: a reason to
        skip it (its birthday is not this day any more, its time zone is invalid),
        or the record's new instant in the contact's new time zone."""
        on = date.fromisoformat(str(record["date"]))
        if record["occasion"] == "birthday":
            parsed = birthday_of(contact.get("birthday"))
            if parsed is None or not birthday_on(parsed[0], parsed[1], on):
                return "birthday changed", None
        try:
            zone = contact_timezone(contact, settings.default_timezone)
        except InvalidTimezone:
            return "invalid time zone", None
        if zone.key == record.get("timezone"):
            return None, None
        due, expires = due_instant(on, zone, settings)
        return None, {"timezone": zone.key, "due_at": due, "expires_at": expires}

    def _templates(self, record: Mapping[str, Any], settings: GreetingSettings) -> dict[str, str]:
        occasion = str(record["occasion"])
        if occasion == "birthday":
            return settings.birthday_templates
        key = occasion.removeprefix("holiday:")
        for holiday in settings.holidays:
            if holiday.key == key:
                return holiday.templates
        return {"en": str(record.get("name") or "")}  # a holiday removed since: its name

    def _refusal(
        self,
        record: Mapping[str, Any],
        contact: Mapping[str, Any] | None,
        conversation: Mapping[str, Any] | None,
    ) -> str | None:
        if contact is None:
            return "contact removed"
        if conversation is None:
            return "no conversation"
        channel = str(record.get("channel") or conversation.get("channel"))
        if (contact.get("opted_out") or {}).get(channel):
            return "opted out"
        adapter = self.hub.adapters.get(str(conversation.get("inbox")))
        if adapter is None:
            return "inbox not configured"
        refusal = adapter.reply_refusal_on(
            conversation.get("channel"), conversation.get("last_inbound_at"), False
        )
        if refusal:
            return "channel refuses: " + refusal
        return None


def _keep_latest(best: dict[str, dict[str, Any]], conv: Mapping[str, Any]) -> None:
    at = conv.get("last_inbound_at")
    if not isinstance(at, datetime):
        return
    contact_id = str(conv.get("contact_id"))
    current = best.get(contact_id)
    if current is None or _aware(at) > current["last_inbound_at"]:
        best[contact_id] = {
            "_id": conv["_id"],
            "inbox": conv.get("inbox"),
            "channel": conv.get("channel"),
            "last_inbound_at": _aware(at),
        }


def _version(settings: GreetingSettings) -> str:
    return derived_id(json.dumps(settings.raw, sort_keys=True, ensure_ascii=False))


def _month_of(value: Any) -> Any:
    return value.get("month") if isinstance(value, Mapping) else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _skipped(
    contact: Mapping[str, Any], occasion: str, year: int, on: date, reason: str
) -> dict[str, Any]:
    return {
        "_id": f"{contact['_id']}:{occasion}:{year}",
        "contact_id": contact["_id"],
        "occasion": occasion,
        "year": year,
        "date": on.isoformat(),
        "status": "skipped",
        "reason": reason,
        "planned_at": utcnow(),
    }


def _settle(record: Mapping[str, Any], status: str, **fields: Any) -> UpdateOne:
    update = {"$set": {"status": status, **fields}, "$unset": {"claim": "", "due_at": ""}}
    return UpdateOne({"_id": record["_id"]}, update)


__all__ = [
    "GreetingCounts",
    "GreetingJob",
    "birthday_of",
    "birthday_on",
    "due_instant",
    "pick_template",
]
