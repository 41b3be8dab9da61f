"""The agents' scheduled jobs: send-later replies, snooze wake-ups, reminders and
the first-response SLA. Each is a `hub.ports.ScheduledJob` built as `cls(hub)`;
the rules live in the services (hub.services.send_later, .snooze, .reminders,
.sla), each of which makes its "once" from the store, never from this process.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from hub.services import reminders, send_later, sla, snooze
from hub.settings import InboxSla

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.scheduler")


class _Job:
    name = ""
    every = 5.0

    def __init__(self, hub: Hub) -> None:
        self.hub = hub


class SendLaterJob(_Job):
    """Hands scheduled replies that are due to the outbox."""

    name = "send_later"
    every = 2.0

    async def run(self, now: datetime) -> None:
        hub = self.hub
        assert hub.store is not None and hub.events is not None
        queued = await send_later.queue_due(hub.store, hub.events, hub.adapters, now)
        if queued:
            hub.wake_dispatcher()
            log.info("scheduled replies queued", extra={"count": queued})


class SnoozeJob(_Job):
    """Opens snoozed conversations whose `snooze_until` came."""

    name = "snooze"
    every = 5.0

    async def run(self, now: datetime) -> None:
        hub = self.hub
        assert hub.store is not None and hub.events is not None
        woken = await snooze.wake_due(hub.store, hub.events, now)
        if woken:
            log.info("snoozed conversations opened", extra={"count": woken})


class RemindersJob(_Job):
    """Tells agents of their reminders that are due (`reminder.due`)."""

    name = "reminders"
    every = 2.0

    async def run(self, now: datetime) -> None:
        hub = self.hub
        assert hub.store is not None and hub.events is not None
        await reminders.fire_due(hub.store, hub.events, now)


class SlaJob(_Job):
    """Marks conversations past their inbox's first response, and escalates them."""

    name = "sla"
    every = 10.0

    def rules(self) -> dict[str, InboxSla]:
        return {i.id: i.sla for i in self.hub.settings.inboxes if i.sla.first_response}

    async def run(self, now: datetime) -> None:
        hub = self.hub
        assert hub.store is not None and hub.events is not None
        rules = self.rules()
        if not rules:
            return
        done = await sla.check(hub.store, hub.events, rules, now)
        if done:
            log.info("first-response SLA breached", extra={"count": len(done)})
