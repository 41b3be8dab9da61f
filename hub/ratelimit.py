"""Pacing: a generic cell-rate limiter (GCRA) per inbox, and one per key inside it.

`reserve()` books the next slot and says how long to wait for it, so concurrent
senders queue up fairly without a lock, and the long-run rate never exceeds
`per_second` while a burst of `burst` messages may go at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque

# `space` keeps this much more than a second (or an interval) between a permit and
# the one a rate's worth before it: a request reaches the provider a little after
# its permit, by a varying amount (the event loop, the connection it takes), and
# a provider counting arrivals over a sliding second refuses one that arrives less
# than a second after the one a rate's worth earlier (the campaigns bench: one to
# seven refusals in 4,000 sends at 80 a second without it). It costs 1% of the rate.
JITTER_MARGIN = 0.01


class RateLimiter:
    def __init__(self, per_second: float, burst: int = 1) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        if burst <= 1 and per_second > 1:
            # `space` lets no more than a whole number of sends go in any second:
            # schedule no faster, or the schedule runs ahead of the real sends, a
            # backlog piles up behind that cap and comes out in whatever order
            # its sleepers wake (batches of sends interleaved and ending together).
            self.interval = 1.0 / math.floor(per_second)
        self.tolerance = self.interval * (max(1, burst) - 1)
        self._tat = 0.0  # theoretical arrival time of the next message
        self._used: deque[float] = deque()  # when recent permits were actually used
        self._turns = asyncio.Lock()  # `space` lets its waiters go first come, first served

    def delay(self, now: float | None = None) -> float:
        """The wait the next `reserve()` would return, booking nothing."""
        now = time.monotonic() if now is None else now
        return max(0.0, max(self._tat, now) - self.tolerance - now)

    def reserve(self, now: float | None = None) -> float:
        """Book one slot; return the seconds to wait before using it."""
        now = time.monotonic() if now is None else now
        delay = self.delay(now)
        self._tat = max(self._tat, now) + self.interval
        return delay

    async def space(self) -> None:
        """Hold a permit back until the last second of real sends has room for it.

        Sleepers whose slots fell due while the event loop was busy all wake at
        once; let out together, a provider counting over a sliding window would
        see more than the rate. So besides the schedule, no more than the rate's
        worth of permits is used in any real window (one second, or one interval
        for rates under one a second), and never two within half an interval; a
        late permit may still catch up inside that. (A limiter with a burst
        allowance lets bursts through by design and is not held back.)
        """
        await space_together(self)

    def _room(self, now: float) -> float:
        """Seconds until a permit may be used under `space`'s rule (0: now)."""
        if self.tolerance > 0:
            return 0.0
        cap = max(1, math.floor(max(1.0, self.interval) / self.interval + 1e-9))
        window = max(1.0, self.interval) + JITTER_MARGIN
        used = self._used
        while used and now - used[0] >= window:
            used.popleft()
        wait = used[0] + window - now if len(used) >= cap else 0.0
        if used:
            wait = max(wait, used[-1] + self.interval / 2 - now)
        return wait

    def _use(self, now: float) -> None:
        if self.tolerance <= 0:
            self._used.append(now)


async def acquire_together(first: RateLimiter, *others: RateLimiter) -> None:
    """Book a slot in every limiter at the latest of their next slots, wait for
    it, then go when all have room (`space_together`)."""
    now = time.monotonic()
    wait = max(limiter.delay(now) for limiter in (first, *others))
    for limiter in (first, *others):
        limiter.reserve(now + wait)
    if wait > 0:
        await asyncio.sleep(wait)
    await space_together(first, *others)


async def space_together(first: RateLimiter, *others: RateLimiter) -> None:
    """`space` for several limiters at one instant: wait until each has room,
    then record the use in all of them at once.

    A send paced overall and per recipient must not record its overall use and
    then still wait for the recipient: it would go out later than recorded, in
    what the overall limiter thinks is free time, and bunch with the sends after
    it into more than the rate.

    `first` is the one many senders share (the inbox's pace): they take its room
    in the order they came for it. Sleepers racing for each opening instead would
    let a late one lose to the sends on time again and again, for seconds, and
    the whole batch it belongs to with it. A sender waits for the others (its
    recipient) before it queues, so a busy recipient holds no one else back.
    """
    while True:
        wait = max((limiter._room(time.monotonic()) for limiter in others), default=0.0)
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        async with first._turns:
            while True:
                now = time.monotonic()
                if any(limiter._room(now) > 0 for limiter in others):
                    break  # a send queued ahead took the recipient: wait for it again
                wait = first._room(now)
                if wait <= 0:
                    first._use(now)
                    for limiter in others:
                        limiter._use(now)
                    return
                await asyncio.sleep(wait)


class KeyedRateLimiter:
    """One limiter per key (per chat, per recipient), the least recently used forgotten."""

    def __init__(self, per_second: float, burst: int = 1, max_keys: int = 100_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()

    def limiter(self, key: str) -> RateLimiter:
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(self.per_second, self.burst)
            if len(self._limiters) > self.max_keys:
                self._limiters.popitem(last=False)
        else:
            self._limiters.move_to_end(key)
        return limiter
