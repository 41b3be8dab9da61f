"""The scheduler's runtime: jobs fire on their interval, once among many hub
processes on one store (a lease per job), a dead holder's jobs are taken over
when its lease runs out, a clean stop hands them back at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.app import build_app
from hub.config import parse_settings
from hub.metrics import Metrics
from hub.services.events import EventBus
from hub.services.runtime import Hub
from hub.store import Store
from scheduler import BUILTIN_JOBS
from scheduler.runner import SchedulerRunner, build_jobs
from tests.conftest import hub_of
from tests.support.waiting import eventually

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingJob:
    """A job that writes each run (who ran it, with what `now`) to the store."""

    name = "recording"
    every = 0.1

    def __init__(self, hub: Hub, *, label: str = "", hold: float = 0.0) -> None:
        self.hub = hub
        self.label = label or hub.instance_id
        self.hold = hold
        self.runs: list[datetime] = []

    async def run(self, now: datetime) -> None:
        self.runs.append(now)
        assert self.hub.store is not None
        await self.hub.store.audit.insert_one(
            {"job": self.name, "by": self.label, "now": now, "at": datetime.now(UTC)}
        )
        if self.hold:
            await asyncio.sleep(self.hold)


class FailingJob:
    name = "failing"
    every = 0.05

    def __init__(self, hub: Hub) -> None:
        self.calls = 0

    async def run(self, now: datetime) -> None:
        self.calls += 1
        raise RuntimeError("this job always fails")


def make_hub(store: Store, tmp_path: Path, instance: str) -> Hub:
    settings = parse_settings({}, source="<test>", base_dir=tmp_path)
    return Hub(
        settings=settings, instance_id=instance, metrics=Metrics(), bus=EventBus(), store=store
    )


async def runs_in_store(store: Store) -> list[dict[str, Any]]:
    return [d async for d in store.audit.find({"job": "recording"}).sort("at", 1)]


async def test_two_runners_on_one_store_run_a_job_once(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    hub_a = make_hub(store, tmp_path, "a")
    a = SchedulerRunner(hub_a, jobs=[RecordingJob(hub_a)], clock=clock)
    hub_b = make_hub(store, tmp_path, "b")
    b = SchedulerRunner(hub_b, jobs=[RecordingJob(hub_b)], clock=clock)
    # Both fire at the same moment, ten times over: one of them runs each time.
    for _ in range(10):
        ran = await asyncio.gather(a.run_due(), b.run_due())
        assert [r["recording"] for r in ran].count(True) == 1
        clock.advance(0.1)
    runs = await runs_in_store(store)
    assert len(runs) == 10
    assert len({r["by"] for r in runs}) == 1  # the holder keeps its job


async def test_two_started_runners_fire_each_tick_once(store: Store, tmp_path: Path) -> None:
    jobs = {name: RecordingJob(make_hub(store, tmp_path, name)) for name in ("a", "b")}
    runners = [
        SchedulerRunner(make_hub(store, tmp_path, name), jobs=[job], lease_seconds=5)
        for name, job in jobs.items()
    ]
    for runner in runners:
        runner.start()
    await asyncio.sleep(1.0)
    stopping = datetime.now(UTC)
    for runner in runners:
        await runner.stop()
    # While both ran (the first clean stop hands the job to the other at once).
    runs = [r for r in await runs_in_store(store) if r["at"] < stopping]
    # Every 0.1 s for a second: about ten runs (not twenty), all by one process.
    assert 5 <= len(runs) <= 12, len(runs)
    assert len({r["by"] for r in runs}) == 1


async def test_a_dead_holders_job_is_taken_over_when_its_lease_ends(
    store: Store, tmp_path: Path
) -> None:
    clock = Clock()
    a = SchedulerRunner(
        make_hub(store, tmp_path, "a"),
        jobs=[RecordingJob(make_hub(store, tmp_path, "a"))],
        clock=clock,
        lease_seconds=30,
    )
    b = SchedulerRunner(
        make_hub(store, tmp_path, "b"),
        jobs=[RecordingJob(make_hub(store, tmp_path, "b"))],
        clock=clock,
        lease_seconds=30,
    )
    assert (await a.run_due())["recording"] is True
    # `a` dies here (no stop): its lease stands for lease_seconds + every.
    clock.advance(29)
    assert (await b.run_due())["recording"] is False
    clock.advance(1.2)
    assert (await b.run_due())["recording"] is True
    # From now on `b` holds it, and `a` (were it back) waits.
    assert (await a.run_due())["recording"] is False
    runs = await runs_in_store(store)
    assert [r["by"] for r in runs] == ["a", "b"]
    assert runs[1]["now"] == clock.now


async def test_a_clean_stop_hands_the_job_over_at_once(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    hub_a, hub_b = make_hub(store, tmp_path, "a"), make_hub(store, tmp_path, "b")
    a = SchedulerRunner(hub_a, jobs=[RecordingJob(hub_a)], clock=clock)
    b = SchedulerRunner(hub_b, jobs=[RecordingJob(hub_b)], clock=clock)
    assert (await a.run_due())["recording"] is True
    assert (await b.run_due())["recording"] is False
    await a.stop()
    assert (await b.run_due())["recording"] is True
    assert await store.leases.find_one({"_id": "job:recording", "owner": "b"}) is not None


async def test_a_job_gets_the_injected_clocks_time(store: Store, tmp_path: Path) -> None:
    clock = Clock(datetime(2027, 2, 28, 23, 59, tzinfo=UTC))
    hub = make_hub(store, tmp_path, "a")
    job = RecordingJob(hub)
    runner = SchedulerRunner(hub, jobs=[job], clock=clock)
    await runner.run_due()
    clock.advance(120)
    await runner.run_due()
    assert job.runs == [
        datetime(2027, 2, 28, 23, 59, tzinfo=UTC),
        datetime(2027, 3, 1, 0, 1, tzinfo=UTC),
    ]


async def test_the_lease_is_renewed_while_a_long_run_goes_on(store: Store, tmp_path: Path) -> None:
    hub_a, hub_b = make_hub(store, tmp_path, "a"), make_hub(store, tmp_path, "b")
    slow = RecordingJob(hub_a, hold=1.0)
    slow.every = 0.01
    a = SchedulerRunner(hub_a, jobs=[slow], lease_seconds=0.3)
    other = RecordingJob(hub_b)
    b = SchedulerRunner(hub_b, jobs=[other], lease_seconds=0.3)
    running = asyncio.ensure_future(a.run_due())
    await asyncio.sleep(0.6)  # past the first take's 0.31 s: only renewal keeps it
    assert (await b.run_due())["recording"] is False
    await running
    assert len(other.runs) == 0


async def test_a_failing_job_keeps_its_schedule(store: Store, tmp_path: Path) -> None:
    hub = make_hub(store, tmp_path, "a")
    job = FailingJob(hub)
    runner = SchedulerRunner(hub, jobs=[job])
    runner.start()
    try:
        await eventually(lambda: asyncio.sleep(0, job.calls), lambda n: n >= 3)
    finally:
        await runner.stop()
    calls = job.calls
    await asyncio.sleep(0.2)
    assert job.calls == calls  # stopped means stopped


def test_unknown_or_duplicate_jobs_are_refused(store: Store, tmp_path: Path) -> None:
    hub = make_hub(store, tmp_path, "a")
    with pytest.raises(ValueError, match="no scheduled job"):
        build_jobs(hub, ["no-such-job"])
    with pytest.raises(ValueError, match="unique"):
        SchedulerRunner(hub, jobs=[RecordingJob(hub), RecordingJob(hub)])


class ServedJob(RecordingJob):
    name = "served-test-job"
    every = 0.05


async def test_hub_serve_runs_the_registered_jobs(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Any], store: Store
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    monkeypatch.setitem(BUILTIN_JOBS, "served-test-job", f"{__name__}:ServedJob")
    app = build_app(make_settings())
    async with TestClient(TestServer(app)) as client:
        await eventually(
            lambda: store.audit.count_documents({"job": "served-test-job"}), lambda n: n >= 2
        )
        lease = await store.leases.find_one({"_id": "job:served-test-job"})
        assert lease is not None and lease["owner"] == hub_of(client).instance_id
    # The clean stop handed the lease back.
    assert await store.leases.find_one({"_id": "job:served-test-job"}) is None


async def test_scheduler_disabled_runs_nothing(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Any]
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    monkeypatch.setitem(BUILTIN_JOBS, "served-test-job", f"{__name__}:ServedJob")
    app = build_app(make_settings(scheduler={"enabled": False}))
    async with TestClient(TestServer(app)) as client:
        store = hub_of(client).store
        assert store is not None
        await asyncio.sleep(0.3)
        assert await store.audit.count_documents({"job": "served-test-job"}) == 0
