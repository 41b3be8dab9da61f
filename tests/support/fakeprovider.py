"""A fake messaging provider: a real aiohttp server on 127.0.0.1 that takes
`POST /messages`, records what it was sent, enforces a rate limit with 429s and
can be told to fail the next requests."""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeProvider:
    rate: float | None = None  # messages per second enforced over a 1 s window
    sent: list[dict[str, Any]] = field(default_factory=list)
    failures: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    rejected_429: int = 0
    delay: float = 0.0
    _window: deque[float] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    runner: web.AppRunner | None = None
    url: str = ""

    def fail_next(self, status: int, code: str = "", message: str = "", times: int = 1) -> None:
        for _ in range(times):
            self.failures.append((status, {"code": code or str(status), "message": message}))

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        if self.failures:
            status, payload = self.failures.popleft()
            return web.json_response(payload, status=status)
        now = time.monotonic()
        if self.rate is not None:
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                self.rejected_429 += 1
                return web.json_response(
                    {"code": "rate", "message": "too many requests"},
                    status=429,
                    headers={"Retry-After": "1"},
                )
            self._window.append(now)
        message_id = f"SM{next(self._ids):06d}"
        self.sent.append({**body, "id": message_id, "at": now})
        return web.json_response({"id": message_id})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/messages", self.messages)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
