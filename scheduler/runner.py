"""The scheduler's runtime: fires every job in `BUILTIN_JOBS` on its interval.

Timing is APScheduler 3's `AsyncIOScheduler` on the hub's event loop; it only
says *when*. *Who* runs a job comes from the store: before each run the runner
takes the lease `job:<name>` (`hub.services.leases.take_lease`), so of many hub
processes on one store one runs it. The holder renews the lease while the job
runs and at every run; a process that dies stops renewing, and another takes the
job over once the lease has run out. A clean stop hands the leases back at once.

Nothing a job guarantees ("once per recipient", "once per occasion") rests on
the scheduler's memory: jobs keep their own records in the store, so a run that
is skipped, repeated or cut short by `kill -9` is caught up by the next one.

The clock is injectable (`clock`): a test passes its own and drives runs with
`run_job` (or `run_due`) instead of waiting for the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from hub.model import utcnow
from hub.ports import ScheduledJob
from hub.services.leases import release_leases, take_lease
from scheduler import BUILTIN_JOBS, job_class

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.scheduler")

Clock = Callable[[], datetime]


def lease_key(job: ScheduledJob) -> str:
    return f"job:{job.name}"


def build_jobs(hub: Hub, names: Sequence[str] | None = None) -> list[ScheduledJob]:
    """One instance of every registered job (or of `names`), each built as `cls(hub)`."""
    jobs: list[ScheduledJob] = []
    for name in BUILTIN_JOBS if names is None else names:
        cls = job_class(name)
        if cls is None:
            raise ValueError(f"no scheduled job {name!r}")
        jobs.append(cls(hub))  # type: ignore[call-arg]
    return jobs


class SchedulerRunner:
    """Runs scheduled jobs on their intervals, one process per job at a time."""

    def __init__(
        self,
        hub: Hub,
        *,
        jobs: Sequence[ScheduledJob] | None = None,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        clock: Clock = utcnow,
        grace: float = 10.0,
    ) -> None:
        self.hub = hub
        self.jobs: list[ScheduledJob] = list(jobs) if jobs is not None else build_jobs(hub)
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"scheduled job names must be unique: {names}")
        self.owner = owner or hub.instance_id
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.grace = grace
        self.runs: dict[str, int] = {name: 0 for name in names}  # runs done here
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: dict[str, asyncio.Task[bool]] = {}

    def lease_for(self, job: ScheduledJob) -> float:
        """How long one take of a job's lease lasts: past its next run, so the
        holder keeps the job from one run to the next; a dead holder's job is
        taken over this long after its last renewal at most."""
        return self.lease_seconds + float(job.every)

    # -- one run ------------------------------------------------------------------

    async def run_job(self, job: ScheduledJob) -> bool:
        """Take the job's lease and run it once; False when another process holds
        the lease (or the store could not be reached), True when it ran (a run
        that raised is logged and counts as run)."""
        store = self.hub.store
        if store is None:
            return False
        key = lease_key(job)
        try:
            held = await take_lease(store, key, self.owner, self.lease_for(job), now=self.clock())
        except Exception:
            log.warning("scheduler: could not take a lease", extra={"job": job.name}, exc_info=True)
            return False
        if not held:
            return False
        keeper = asyncio.ensure_future(self._keep_lease(job))
        try:
            await job.run(self.clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled job failed", extra={"job": job.name})
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self.runs[job.name] = self.runs.get(job.name, 0) + 1
        return True

    async def _keep_lease(self, job: ScheduledJob) -> None:
        """Renew the lease while a long run goes on."""
        store = self.hub.store
        assert store is not None
        period = max(self.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            try:
                kept = await take_lease(
                    store, lease_key(job), self.owner, self.lease_for(job), now=self.clock()
                )
            except Exception:
                log.warning("scheduler: could not renew a lease", extra={"job": job.name})
                continue
            if not kept:
                log.warning("scheduler: lost a running job's lease", extra={"job": job.name})
                return

    async def run_due(self) -> dict[str, bool]:
        """Run every job once now (those whose lease this process gets)."""
        return {job.name: await self.run_job(job) for job in self.jobs}

    # -- timing -------------------------------------------------------------------

    def _fire(self, name: str) -> None:
        """APScheduler's call: start the job's run unless its last one still runs."""
        running = self._tasks.get(name)
        if running is not None and not running.done():
            return
        job = next(j for j in self.jobs if j.name == name)
        self._tasks[name] = asyncio.ensure_future(self.run_job(job))

    async def _fire_async(self, name: str) -> None:
        self._fire(name)

    def start(self) -> None:
        """Start the timer on the running loop: every job runs now, then every `every` s."""
        if self._scheduler is not None:
            return
        scheduler = AsyncIOScheduler(timezone="UTC")
        first = datetime.now(scheduler.timezone)
        for job in self.jobs:
            scheduler.add_job(
                self._fire_async,
                IntervalTrigger(seconds=float(job.every), timezone="UTC"),
                args=[job.name],
                id=job.name,
                name=job.name,
                next_run_time=first,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler started", extra={"jobs": [j.name for j in self.jobs]})

    async def stop(self) -> None:
        """Stop firing, let running jobs finish (up to `grace` seconds), hand the leases back."""
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=self.grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.grace)
        self._tasks.clear()
        if self.hub.store is not None:
            await release_leases(self.hub.store, [lease_key(j) for j in self.jobs], self.owner)

