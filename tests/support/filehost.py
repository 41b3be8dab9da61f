"""A provider's file server on loopback for the media tests: serves bytes under
a path, and can answer slowly, with an error, or more than it announced."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Served:
    data: bytes
    content_type: str = "application/octet-stream"
    delay: float = 0.0  # seconds before the answer
    fail: int = 0  # answer this many requests with `status` first
    status: int = 500
    filename: str | None = None  # given as Content-Disposition, as some servers do


@dataclass
class FileHost:
    files: dict[str, Served] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        **options: float | int,
    ) -> str:
        self.files[name] = Served(data, content_type, **options)  # type: ignore[arg-type]
        return f"{self.url}/files/{name}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        served = self.files.get(name)
        if served is None:
            return web.Response(status=404, text="no such file")
        if served.delay:
            await asyncio.sleep(served.delay)
        if served.fail > 0:
            served.fail -= 1
            return web.Response(status=served.status, text="provider trouble")
        headers = {}
        if served.filename:
            headers["Content-Disposition"] = f'attachment; filename="{served.filename}"'
        return web.Response(body=served.data, content_type=served.content_type, headers=headers)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/files/{name}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
