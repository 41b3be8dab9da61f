"""A real `hub serve` process for the fault tests, a provider that posts signed
webhooks to it and retries, and the checks of what the store holds afterwards.

The hub runs as its own process (with the test channel `testchan` registered,
as `bench/run_hub.py` does), its embedded store as that process's child, both
on 127.0.0.1, so a test can kill -9 or stop either for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from hub.store.embedded_server import INFO_NAME
from tests.conftest import SECRET, signed_form

ROOT = Path(__file__).resolve().parents[2]
INBOX = "f1"
DATABASE = "hub"
# A bound on how long a process may take to do what it must (start, stop, come
# back), not a measurement: it only stops a broken test from hanging the suite.
DEADLINE = 30.0

# `hub serve` with the test channel registered (the plugin registry is filled by
# importing the channel's module, as bench/run_hub.py does).
_RUN_HUB = (
    "import sys, tests.support.testchannel; from hub.cli import main; "
    "sys.exit(main(['serve', *sys.argv[1:]]))"
)


def write_config(
    folder: Path,
    *,
    command_timeout_ms: int = 10_000,
    server_selection_timeout_ms: int = 3000,
    uri: str = "",
    database: str = DATABASE,
    data_dir: str = "data",
    inbox_lines: str = "",
    sections: str = "",
) -> Path:
    """A hub.toml in `folder`. `uri`: a MongoDB (empty: the embedded store in
    `data_dir`, relative to the file or absolute, so hubs can share one);
    `inbox_lines`: more keys of the test inbox (its `api_base`, `rate`);
    `sections`: more TOML (`[dispatcher]`, `[events]`)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "hub.toml"
    store_uri = f'uri = "{uri}"\n' if uri else ""
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2

[store]
{store_uri}database = "{database}"
data_dir = "{data_dir}"
server_selection_timeout_ms = {server_selection_timeout_ms}
command_timeout_ms = {command_timeout_ms}

[logging]
level = "WARNING"
format = "text"
{sections}
[[inboxes]]
id = "{INBOX}"
channel = "testchan"
secret = "{SECRET}"
medium = "sms"
{inbox_lines}"""
    )
    return config


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a stopped process dies at once either way
            os.kill(pid, signal.SIGKILL)


async def wait_gone(pid: int) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while pid_alive(pid):
        assert loop.time() < end, f"process {pid} still runs after {DEADLINE} s"
        await asyncio.sleep(0.02)


@dataclass
class HubProcess:
    """One `hub serve` on `config` (its data directory beside it)."""

    config: Path
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    _drain: asyncio.Task[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.parent / "data"

    @property
    def log(self) -> Path:
        return self.config.parent / "hub.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def webhook(self) -> str:
        return f"{self.url}webhooks/testchan/{INBOX}"

    def store_info(self) -> tuple[int, int]:
        """The embedded store's process id and port, as it published them."""
        info = json.loads((self.data_dir / INFO_NAME).read_text())
        return int(info["pid"]), int(info["port"])

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    async def start(self) -> HubProcess:
        env = dict(os.environ)
        for name in ("HUB_CONFIG", "MONGODB_URI", "HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log.open("ab") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _RUN_HUB,
                "--config",
                str(self.config),
                cwd=self.config.parent,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    line = (await stdout.readline()).decode()
                    if not line:
                        code = await self.process.wait()
                        raise AssertionError(f"hub serve exited with {code}: {self.log_tail()}")
                    if "inbox at http://127.0.0.1:" in line:
                        self.url = line.split("inbox at ", 1)[1].strip()
                        break
        except BaseException:
            await self.kill()
            raise
        # Keep reading what it prints, so a full pipe never blocks it.
        self._drain = asyncio.create_task(stdout.read())
        return self

    async def kill(self) -> None:
        """kill -9, and wait until it has exited."""
        if self.process is None:
            return
        kill_if_alive(self.process.pid)
        await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(BaseException):
                await self._drain

    async def stop(self) -> int:
        """SIGTERM (a graceful stop); its exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), DEADLINE)
        finally:
            await self.kill()
        return code

    async def ready(self, session: aiohttp.ClientSession) -> None:
        """Wait until /readyz answers 200 (the hub reaches its store)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.url + "readyz") as response:
                    if response.status == 200:
                        return
            assert loop.time() < end, f"hub not ready in {DEADLINE} s: {self.log_tail()}"
            await asyncio.sleep(0.05)


def number_of(sender: int) -> str:
    return f"+1555010{sender:04d}"


@dataclass
class Answer:
    sid: str
    status: int | None  # None: no HTTP answer (connection refused or cut)
    sent_at: float  # monotonic
    seconds: float
    error: str = ""


@dataclass
class Provider:
    """The provider's side: posts signed webhooks and keeps every answer."""

    session: aiohttp.ClientSession
    url: str
    senders: dict[str, int] = field(default_factory=dict)  # sid -> sender number index
    answers: list[Answer] = field(default_factory=list)
    _waiting: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    def message(self, sid: str, sender: int) -> tuple[str, int]:
        self.senders[sid] = sender
        return sid, sender

    async def post(self, sid: str, *, timeout: float = DEADLINE) -> Answer:
        sender = self.senders[sid]
        body, headers = signed_form(
            {"MessageSid": sid, "From": number_of(sender), "Body": f"message {sid}"}
        )
        started = time.monotonic()
        try:
            async with self.session.post(
                self.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
                answer = Answer(sid, response.status, started, time.monotonic() - started)
        except (aiohttp.ClientError, TimeoutError) as error:
            answer = Answer(sid, None, started, time.monotonic() - started, type(error).__name__)
        self.answers.append(answer)
        if answer.status == 200 and self._waiting:
            acknowledged = len(self.acknowledged())
            for count, event in self._waiting:
                if acknowledged >= count:
                    event.set()
        return answer

    async def acknowledged_at_least(self, count: int) -> None:
        """Return once `count` messages have been answered 200."""
        event = asyncio.Event()
        self._waiting.append((count, event))
        if len(self.acknowledged()) >= count:
            event.set()
        await event.wait()

    async def post_all(self, sids: Iterable[str], *, concurrency: int = 16) -> list[Answer]:
        """Post each of `sids` once, `concurrency` at a time, in order."""
        queue = list(sids)
        results: list[Answer] = []

        async def worker() -> None:
            while queue:
                results.append(await self.post(queue.pop(0)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    async def deliver(self, sids: Iterable[str], *, concurrency: int = 16) -> None:
        """Post each of `sids` until it is answered 200, as a provider retries;
        fail if one is not within DEADLINE."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        queue = list(sids)

        async def worker() -> None:
            while queue:
                sid = queue.pop(0)
                while (answer := await self.post(sid)).status != 200:
                    assert loop.time() < end, f"{sid} never acknowledged: last {answer}"
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def acknowledged(self) -> set[str]:
        return {a.sid for a in self.answers if a.status == 200}

    def statuses(self) -> Counter[int | None]:
        return Counter(a.status for a in self.answers)


class StoreReader:
    """A client of the test's own on the embedded store's port (not the hub's)."""

    def __init__(self, port: int) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{port}/?directConnection=true",
            tz_aware=True,
            serverSelectionTimeoutMS=int(DEADLINE * 1000),
        )
        self.db = self.client[DATABASE]

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> StoreReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def stored(self) -> Counter[str]:
        """How many message documents the inbox holds for each provider id."""
        docs = await self.db.messages.find({"inbox": INBOX}, {"provider_id": 1}).to_list()
        return Counter(doc["provider_id"] for doc in docs)

    async def assert_stored_once(self, sids: Iterable[str]) -> Counter[str]:
        stored = await self.stored()
        missing = sorted(sid for sid in sids if stored[sid] == 0)
        assert not missing, f"acknowledged (200) but not stored: {missing}"
        twice = sorted(sid for sid, n in stored.items() if n != 1)
        assert not twice, f"stored more than once: {[(s, stored[s]) for s in twice]}"
        return stored

    async def assert_summaries_right(self) -> int:
        """Every conversation of the inbox says what its messages say: `unread`
        counts its inbound messages (nobody read any), `last_message` and
        `last_inbound_at` are its newest. Returns how many conversations."""
        messages: dict[str, list[dict[str, Any]]] = {}
        async for doc in self.db.messages.find({"inbox": INBOX}):
            messages.setdefault(doc["conversation_id"], []).append(doc)
        wrong = []
        conversations = await self.db.conversations.find({"inbox": INBOX}).to_list()
        for conv in conversations:
            docs = messages.get(conv["_id"], [])
            newest = max(docs, key=lambda d: _aware(d["created_at"]), default=None)
            expected = {
                "unread": len(docs),
                "last_message": newest and newest["_id"],
                "last_inbound_at": newest and _aware(newest["created_at"]),
            }
            last = conv.get("last_message") or {}
            actual = {
                "unread": conv.get("unread"),
                "last_message": last.get("id"),
                "last_inbound_at": conv.get("last_inbound_at") and _aware(conv["last_inbound_at"]),
            }
            if actual != expected:
                wrong.append((conv["_id"], {"expected": expected, "actual": actual}))
        assert not wrong, (
            f"{len(wrong)} of {len(conversations)} conversation summaries disagree with "
            f"their messages, e.g. {wrong[:2]}"
        )
        return len(conversations)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# The driver's handshake and heartbeats: a held store still answers these.
_HEARTBEATS = {"hello", "isMaster", "ismaster"}
_OP_MSG = 2013


def _command_name(message: bytes) -> str:
    """The command an OP_MSG carries (the first key of its body), or ""."""
    if len(message) < 22 or int.from_bytes(message[12:16], "little") != _OP_MSG:
        return ""
    if message[20] != 0:  # the body section comes first
        return ""
    key_start = 21 + 4 + 1  # the body's length, then the first element's type
    key_end = message.find(b"\0", key_start)
    return message[key_start:key_end].decode(errors="replace") if key_end > 0 else ""


class StoreProxy:
    """A TCP proxy on 127.0.0.1 in front of a store that can hold back every
    command but the driver's handshake and heartbeats: a store that answers
    `hello` while a command hangs (as a MongoDB does whose write waits on a lock
    or a disk), which the driver's own monitoring cannot tell from a healthy
    one. Released, it passes the held commands on, late, as such a store would
    run them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held = 0
        self._released = asyncio.Event()
        self._released.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self) -> StoreProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for pump in (self._requests(reader, up_writer), self._copy(up_reader, writer)):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            try:
                while True:
                    header = await reader.readexactly(16)
                    length = int.from_bytes(header[:4], "little")
                    message = header + await reader.readexactly(length - 16)
                    if not self._released.is_set() and _command_name(message) not in _HEARTBEATS:
                        self.held += 1
                        await self._released.wait()
                    writer.write(message)
                    await writer.drain()
            finally:
                writer.close()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            try:
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            finally:
                writer.close()


@dataclass
class SharedStore:
    """The embedded store's server run on its own (`python -m
    hub.store.embedded_server`), for several hubs to attach to as the contract
    says a second `hub serve` on a `data_dir` does, outliving any one of them.
    It watches its stdin, held by the test: it ends with the test, however that
    ends."""

    data_dir: Path
    process: asyncio.subprocess.Process | None = None
    port: int = 0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self) -> SharedStore:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.store.embedded_server",
            "--data-dir",
            str(self.data_dir),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(DEADLINE):
            line = (await self.process.stdout.readline()).decode().strip()
        assert line.startswith("READY "), f"the embedded store did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    async def stop(self) -> None:
        """Close its stdin (its stop signal) and wait for it to exit."""
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), DEADLINE)
        except TimeoutError:
            kill_if_alive(self.process.pid)
            await self.process.wait()
