"""Fixtures of the scheduler's tests (tests/scheduler/agents_support.py: the hub
for the send-later, snooze, reminders and SLA jobs)."""

from tests.scheduler.agents_support import api, sched_settings, second_hub

__all__ = ["api", "sched_settings", "second_hub"]
