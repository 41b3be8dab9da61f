"""Pacing: a generic cell-rate limiter (GCRA) per inbox, and one per key inside it.

`reserve()` books the next slot and says how long to wait for it, so concurrent
senders queue up fairly without a lock, and the long-run rate never exceeds
`per_second` while a burst of `burst` messages may go at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, per_second: float, burst: int = 1) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self.tolerance = self.interval * (max(1, burst) - 1)
        self._tat = 0.0  # theoretical arrival time of the next message
        self._last = -self.interval  # when the last permit was actually used

    def delay(self, now: float | None = None) -> float:
        """The wait the next `reserve()` would return, booking nothing."""
        now = time.monotonic() if now is None else now
        return max(0.0, max(self._tat, now) - self.tolerance - now)

    def reserve(self, now: float | None = None) -> float:
        """Book one slot; return the seconds to wait before using it."""
        now = time.monotonic() if now is None else now
        tat = max(self._tat, now)
        delay = max(0.0, tat - self.tolerance - now)
        self._tat = tat + self.interval
        return delay

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.space()

    async def space(self) -> None:
        """Keep permits an interval apart in real time, not only on the schedule.

        Sleepers whose slots fell due while the event loop was busy all wake at
        once; without this they would go out together, and a provider counting
        over a sliding window would see more than the rate. (A limiter with a
        burst allowance lets bursts through by design and is not spaced.)
        """
        if self.tolerance > 0:
            return
        now = time.monotonic()
        start = max(now, self._last + self.interval)
        self._last = start
        if start > now:
            await asyncio.sleep(start - now)


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

    async def acquire(self, key: str) -> None:
        await self.limiter(key).acquire()
