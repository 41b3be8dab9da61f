"""Start, find and stop the embedded store (see `embedded_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import sys
from pathlib import Path

from pymongo import AsyncMongoClient

from hub.store.embedded_server import BUSY_EXIT, INFO_NAME, LOCK_NAME

log = logging.getLogger("hub.store.embedded")

# Opening a large store rebuilds its index entries (about a minute at 200,000
# messages on this engine): give it time before calling it failed.
START_TIMEOUT = 180.0


class EmbeddedStoreError(Exception):
    pass


def _lock_is_held(data_dir: Path) -> bool:
    path = data_dir / LOCK_NAME
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _uri(host: str, port: int) -> str:
    return f"mongodb://{host}:{port}/?directConnection=true"


async def _answers(uri: str) -> bool:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=2000
    )
    try:
        await client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        await client.close()


class EmbeddedStore:
    """The embedded store for one data directory.

    `start()` connects to the store another hub command already runs on this data
    directory, or starts one as a child process that this object then owns.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.uri: str | None = None
        self.port: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None

    async def _attach(self) -> str | None:
        info = self.data_dir / INFO_NAME
        if not _lock_is_held(self.data_dir) or not info.exists():
            return None
        try:
            data = json.loads(info.read_text())
            port = int(data["port"])
            uri = _uri(str(data["host"]), port)
        except (OSError, ValueError, KeyError):
            return None
        if not await _answers(uri):
            return None
        self.port = port
        return uri

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            uri = await self._attach()
            if uri:
                log.info("using the embedded store already running", extra={"uri": uri})
                self.uri = uri
                return uri
            # While another command holds the lock its store is starting (or
            # answering soon): wait for it rather than racing it for the lock.
            if not _lock_is_held(self.data_dir):
                uri = await self._spawn()
                if uri:
                    self.uri = uri
                    return uri
            if loop.time() >= deadline:
                raise EmbeddedStoreError(
                    f"{self.data_dir}: could not start or reach the embedded store"
                )
            await asyncio.sleep(0.2)

    async def _spawn(self, port: int = 0) -> str | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.store.embedded_server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise EmbeddedStoreError(
                f"{self.data_dir}: the embedded store did not start in {START_TIMEOUT:.0f} s"
            ) from None
        text = line.decode().strip()
        if text.startswith("READY "):
            self.process = process
            self.port = int(text.split()[1])
            log.info("embedded store started", extra={"pid": process.pid, "port": self.port})
            return _uri("127.0.0.1", self.port)
        code = await process.wait()
        if code == BUSY_EXIT or text == "BUSY":
            return None  # another hub started one at the same instant: attach to it
        raise EmbeddedStoreError(f"{self.data_dir}: the embedded store exited with code {code}")

    def supervise(self, interval: float = 1.0) -> None:
        """Keep a store answering on this port for as long as this process runs.

        A hub that attached to a store another command started would otherwise
        lose it when that command exits, and a store child that crashed would stay
        down. Either way, a new store is started on the same port, so the driver's
        connection pool reconnects by itself.
        """
        if self._watch is None:
            self._watch = asyncio.create_task(self._supervise(interval), name="store-supervisor")

    async def _supervise(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            owned_alive = self.process is not None and self.process.returncode is None
            if owned_alive or _lock_is_held(self.data_dir):
                continue
            self.process = None
            try:
                if await self._spawn(self.port or 0):
                    log.warning("embedded store restarted", extra={"port": self.port})
            except EmbeddedStoreError as error:
                log.error("embedded store restart failed", extra={"error": str(error)})

    async def stop(self, timeout: float = 15.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        # Closing its stdin is the stop signal (it ignores SIGTERM, which a
        # service manager may send to the hub's whole process group).
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
