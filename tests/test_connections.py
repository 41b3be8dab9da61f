"""The server's connections: idle ones and requests that arrive too slowly are
closed, the number open at once is capped without `/healthz` going dark, and a
client that hangs up mid-body is one INFO line, not a traceback.

Each test starts the hub as `hub serve` does (`run_forever`) on 127.0.0.1, port 0,
with small limits, and talks to it over raw sockets where HTTP clients would hide
what the server does with a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from hub.config import Settings
from hub.server import run_forever
from tests.conftest import signed_form
from tests.support.testchannel import TestChannel
from tests.support.waiting import eventually

HOST = "127.0.0.1"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery 1"

Serve = Callable[..., Awaitable[int]]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def serve(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Serve]:
    """Start `run_forever` with these `[server]` settings; its port. Stopped after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**server: Any) -> int:
        settings = make_settings(server={"host": HOST, "port": 0, **server})
        ready = asyncio.Event()
        task = asyncio.create_task(run_forever(settings, ready=ready))
        tasks.append(task)
        waiting = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {task, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            waiting.cancel()
            task.result()  # its error
        assert waiting in done, "the hub did not start in 30 s"
        found = re.search(
            rf"hub: inbox at http://{re.escape(HOST)}:(\d+)/", capsys.readouterr().out
        )
        assert found, "the hub did not print where it listens"
        return int(found.group(1))

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def connect(port: int) -> Conn:
    return await asyncio.open_connection(HOST, port)


async def closed_after(reader: asyncio.StreamReader, deadline: float) -> float | None:
    """Seconds until the server closed the connection (reading it to the end), or
    None when it is still open after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(deadline):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return loop.time() - start


async def trickle(writer: asyncio.StreamWriter, piece: bytes, every: float = 0.1) -> None:
    """Keep sending `piece` every `every` seconds, as a slow-loris does, until the
    connection is gone."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            await asyncio.sleep(every)
            writer.write(piece)
            await writer.drain()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length, head
    return status, await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


# -- slow requests ---------------------------------------------------------------------


async def test_a_request_whose_headers_trickle_in_is_closed_after_the_read_timeout(serve):
    port = await serve(read_timeout=0.5, keepalive_timeout=30)
    reader, writer = await connect(port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    slow = asyncio.create_task(trickle(writer, b"X-Slow: 1\r\n"))
    try:
        elapsed = await closed_after(reader, 5)
    finally:
        slow.cancel()
        writer.close()
    assert elapsed is not None, "a request still sending its headers after 5 s is still open"
    assert 0.3 < elapsed < 3


async def test_a_request_whose_body_trickles_in_is_closed_after_the_read_timeout(serve):
    port = await serve(read_timeout=0.5, keepalive_timeout=30)
    reader, writer = await connect(port)
    writer.write(
        f"POST /webhooks/testchan/t1 HTTP/1.1\r\nHost: {HOST}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 1000\r\n\r\nBody=hello".encode()
    )
    slow = asyncio.create_task(trickle(writer, b"x"))
    try:
        elapsed = await closed_after(reader, 5)
    finally:
        slow.cancel()
        writer.close()
    assert elapsed is not None, "a request still sending its body after 5 s is still open"
    assert 0.3 < elapsed < 3


async def test_a_request_received_in_time_may_take_longer_than_the_read_timeout_to_answer(
    serve, monkeypatch
):
    """The read timeout bounds the client's sending, not the hub's handling."""
    hold = asyncio.Event()
    monkeypatch.setattr(TestChannel, "hold", hold)
    port = await serve(read_timeout=0.3, keepalive_timeout=30)
    body, headers = signed_form({"MessageSid": "SM-slow-1", "From": "+15551230001", "Body": "hi"})
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(
            session.post(f"http://{HOST}:{port}/webhooks/testchan/t1", data=body, headers=headers)
        )
        await asyncio.sleep(1.0)  # received at once, then held in the handler
        assert not pending.done()
        hold.set()
        resp = await asyncio.wait_for(pending, 10)
        assert resp.status == 200, await resp.text()


# -- idle connections ------------------------------------------------------------------


async def test_idle_connections_are_closed_after_the_keepalive_timeout_not_the_read_timeout(
    serve,
):
    port = await serve(keepalive_timeout=1.0, read_timeout=0.3)
    # One that never sends a request, one idle after an answered request.
    fresh = await connect(port)
    used = await connect(port)
    used[1].write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert (await read_response(used[0]))[0] == 200
    try:
        # Still open past the read timeout: idle is not slow.
        assert await closed_after(fresh[0], 0.6) is None
        assert await closed_after(used[0], 0.01) is None
        # Closed once the keep-alive timeout has passed.
        assert await closed_after(fresh[0], 3) is not None, "an idle connection is still open"
        assert await closed_after(used[0], 1) is not None, "an idle keep-alive is still open"
    finally:
        close_all([fresh, used])


# -- the cap ---------------------------------------------------------------------------


@pytest.fixture
def low_fd_limit() -> Any:
    """A soft file-descriptor limit a few hundred above what the process has open
    (the hub's own limit, as in a default 1,024), restored afterwards."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counting open descriptors needs /proc")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard descriptor limit ({hard}) leaves no room to raise the soft one")
    low = len(os.listdir("/proc/self/fd")) + 150
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    yield low
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connections_beyond_the_cap_do_not_stop_healthz_from_answering(serve, low_fd_limit):
    """300 idle and half-sent connections against a cap of 20 and a soft descriptor
    limit below what they would take: the hub raises its limit to the hard one, keeps
    at most 20 open (closing those idle longest) and answers `/healthz` at once."""
    port = await serve(max_connections=20, read_timeout=30, keepalive_timeout=30)
    attackers: list[Conn] = []
    refused = 0
    try:
        for n in range(300):
            try:
                reader, writer = await connect(port)
            except OSError:
                refused += 1
                continue
            if n % 3 == 1:  # headers half-sent
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode())
            elif n % 3 == 2:  # body half-sent
                writer.write(
                    f"POST /webhooks/testchan/t1 HTTP/1.1\r\nHost: {HOST}\r\n"
                    "Content-Length: 1000\r\n\r\nBody=".encode()
                )
            attackers.append((reader, writer))
        assert refused == 0, f"{refused} of 300 connections could not even be opened"

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            try:
                async with session.get(f"http://{HOST}:{port}/healthz") as resp:
                    assert resp.status == 200
            except (aiohttp.ClientError, TimeoutError) as error:
                pytest.fail(f"/healthz did not answer under 300 idle connections: {error!r}")

        async def still_open() -> int:
            await asyncio.sleep(0.05)
            return sum(not reader.at_eof() for reader, _ in attackers)

        open_now = await still_open()
        deadline = asyncio.get_running_loop().time() + 5
        while open_now > 20 and asyncio.get_running_loop().time() < deadline:
            open_now = await still_open()
        assert open_now <= 20, f"{open_now} idle connections still open against a cap of 20"
    finally:
        close_all(attackers)
        await asyncio.sleep(0.1)


async def test_a_websocket_outlives_the_timeouts_and_is_not_closed_for_the_cap(serve, monkeypatch):
    """An upgraded connection is busy, not idle: neither timeout nor the cap closes it."""
    monkeypatch.setenv("HUB_ADMIN_EMAIL", ADMIN_EMAIL)
    monkeypatch.setenv("HUB_ADMIN_PASSWORD", ADMIN_PASSWORD)
    port = await serve(read_timeout=0.3, keepalive_timeout=0.5, max_connections=4)
    base = f"http://{HOST}:{port}"
    idle: list[Conn] = []
    async with aiohttp.ClientSession() as session:
        login = await session.post(
            f"{base}/api/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        assert login.status == 200, await login.text()
        token = (await login.json())["token"]
        ws = await session.ws_connect(f"{base}/api/ws?token={token}")
        try:
            assert (await ws.receive_json(timeout=2))["type"] == "hello"
            idle = [await connect(port) for _ in range(8)]
            await asyncio.sleep(1.0)
            await ws.send_str("ping")
            while (event := await ws.receive_json(timeout=2))["type"] != "pong":
                assert event["type"] == "heartbeat", event
        finally:
            await ws.close()
            close_all(idle)


# -- a client that hangs up ------------------------------------------------------------


async def test_a_client_that_disconnects_mid_body_is_logged_once_at_info(serve, caplog):
    caplog.set_level(logging.INFO)
    port = await serve()
    _, writer = await connect(port)
    writer.write(
        f"POST /webhooks/testchan/t1 HTTP/1.1\r\nHost: {HOST}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 1000\r\n\r\nBody=hel".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the handler is reading the body
    caplog.clear()
    writer.close()

    def about_it() -> list[logging.LogRecord]:
        # What the hub and aiohttp's server log; the access log line is not about it.
        return [
            r
            for r in caplog.records
            if r.name.startswith(("hub", "aiohttp")) and r.name != "aiohttp.access"
        ]

    async def logged() -> list[logging.LogRecord]:
        return about_it()

    await eventually(logged, deadline=5)
    await asyncio.sleep(0.3)  # anything logged after the first record
    records = about_it()
    assert [r.levelno for r in records] == [logging.INFO], [
        (r.name, r.levelname, r.getMessage()) for r in records
    ]
    (record,) = records
    assert record.exc_info is None and not record.exc_text
    assert getattr(record, "path", None) == "/webhooks/testchan/t1"
