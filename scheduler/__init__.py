"""Scheduled work: campaigns, greetings, SLA reminders and snooze wake-ups.

A job is a `hub.ports.ScheduledJob`. Everything here sends through the hub's
outbox (`hub.ports.Replies`) and takes a lease in `leases` before firing
(`hub.services.leases`), so one of many hub processes runs each job.
`BUILTIN_JOBS` maps a job's name to its class, imported lazily like the channels'
registry; `scheduler.runner` runs every one of them on APScheduler's
`AsyncIOScheduler`, each under its lease `job:<name>`.
"""

from __future__ import annotations

import importlib

from hub.ports import ScheduledJob

BUILTIN_JOBS: dict[str, str] = {
    "campaigns": "scheduler.campaigns:CampaignJob",
    "greetings": "scheduler.greetings:GreetingJob",
    "send_later": "scheduler.agents:SendLaterJob",
    "snooze": "scheduler.agents:SnoozeJob",
    "reminders": "scheduler.agents:RemindersJob",
    "sla": "scheduler.agents:SlaJob",
}


def job_class(name: str) -> type[ScheduledJob] | None:
    """The job class registered under `name`, or None."""
    target = BUILTIN_JOBS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    cls: type[ScheduledJob] = getattr(importlib.import_module(module_name), attr)
    return cls


__all__ = ["BUILTIN_JOBS", "ScheduledJob", "job_class"]
