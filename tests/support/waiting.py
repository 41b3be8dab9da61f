"""Waiting for state that background tasks reach (the dispatcher, the event relay).

These wait for a condition, they do not time anything: the deadline is generous
and only stops a broken test from hanging the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hub.model import Event
from hub.services.events import Subscription

DEADLINE = 10.0


async def eventually[T](
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool] = bool,
    *,
    deadline: float = DEADLINE,
    every: float = 0.02,
) -> T:
    """Call `probe` until `accept` holds for its value; return that value.

    When the deadline passes, fail with the last value seen so the report says
    what the state was, not only that it never arrived.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > end:
            raise AssertionError(f"condition not reached in {deadline} s; last value: {value!r}")
        await asyncio.sleep(every)


async def next_event(
    sub: Subscription, match: Callable[[Event], bool], *, deadline: float = DEADLINE
) -> Event:
    """The first event on `sub` that `match` accepts (others are skipped)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        left = end - loop.time()
        if left <= 0:
            raise AssertionError("no matching event arrived")
        try:
            event = await sub.get(timeout=left)
        except TimeoutError:
            raise AssertionError("no matching event arrived") from None
        if match(event):
            return event


def drain(sub: Subscription) -> list[Event]:
    """Every event already delivered to `sub`, without waiting."""
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    return events


def of_type(kind: str, **data: Any) -> Callable[[Event], bool]:
    """A matcher for events of `kind` whose data has the given values."""

    def match(event: Event) -> bool:
        return event.type == kind and all(event.data.get(k) == v for k, v in data.items())

    return match
