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
    failures: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    # Every request in order: its body, when it came and the status it was answered.
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    delay: float = 0.0
    _window: deque[float] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    runner: web.AppRunner | None = None
    url: str = ""

    def fail_next(
        self,
        status: int,
        code: str = "",
        message: str = "",
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        for _ in range(times):
            self.failures.append(
                (status, {"code": code or str(status), "message": message}, headers)
            )

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        now = time.monotonic()
        record: dict[str, Any] = {**body, "at": now}
        self.requests.append(record)
        if self.failures:
            status, payload, headers = self.failures.popleft()
            record["status"] = status
            return web.json_response(payload, status=status, headers=headers)
        if self.rate is not None:
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                self.rejected_429 += 1
                record["status"] = 429
                return web.json_response(
                    {"code": "rate", "message": "too many requests"},
                    status=429,
                    headers={"Retry-After": "1"},
                )
            self._window.append(now)
        message_id = f"SM{next(self._ids):06d}"
        record["status"] = 200
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
