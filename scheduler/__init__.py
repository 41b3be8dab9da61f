"""Scheduled work: campaigns, greetings, SLA reminders and snooze wake-ups.

Everything here sends through the hub's outbox and takes a lease in `leases`
before firing, so one of many hub processes runs each job. The jobs arrive with
the scheduler issue; the outbox already supports their at-most-once sends.
"""
