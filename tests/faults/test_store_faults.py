"""Faults between a webhook and the store, injected for real: nothing a provider
got a 200 for is lost, nothing is stored twice, and every conversation's summary
ends up agreeing with its messages once the provider has retried.

Each test runs a real `hub serve` process with its embedded store as its child
(tests/faults/harness.py), posts signed webhooks to it concurrently over
loopback, and then:

- kills the hub with SIGKILL mid-stream, and starts a new hub on the same data;
- kills the store child with SIGKILL while the hub runs (the hub restarts it on
  the same port and reconnects);
- stops the store child with SIGSTOP (a hung store: the hub must answer 503
  within a bound, not hold webhooks for good), then resumes it with SIGCONT.

Afterwards the provider retries every message that did not get a 200, newest
first (a real provider's retries come late and out of order, after newer
messages from the same customer), until each gets one.

A stopped process stops answering the driver's heartbeats too, and the driver
then gives up on its connections by itself (within its 10 s heartbeat interval
plus the connect timeout). A store that answers heartbeats while a command
hangs is bounded by `store.command_timeout_ms` alone: one more test puts a proxy
in front of the store that holds back every command but the heartbeats.

The related tests elsewhere: tests/test_store.py::
test_kill_9_of_the_hub_stops_its_store_and_a_new_hub_starts_cleanly (the store
child dies with the hub), tests/test_ingest.py::
test_store_down_answers_503_and_never_acknowledges_an_unstored_message and
test_store_gone_between_message_and_summary_fails_the_batch_and_delivers_nothing
(a store stopped cleanly, in process), and the repair of a lost summary with a
hand-made duplicate (test_retry_after_a_failure_between_message_and_summary_...).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings, parse_settings
from hub.store import Store
from tests.conftest import hub_of, post_inbound
from tests.faults.harness import (
    HubProcess,
    Provider,
    StoreProxy,
    StoreReader,
    kill_if_alive,
    wait_gone,
    write_config,
)

SENDERS = 20
NUMBER = "+15551230001"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=64, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


@pytest.fixture
async def hubs() -> AsyncIterator[list[HubProcess]]:
    """Every hub a test starts; killed (with their stores) at the end, whatever happened."""
    started: list[HubProcess] = []
    yield started
    for hub in started:
        store_pid = None
        if hub.process is not None and (hub.data_dir / "store.json").exists():
            try:
                store_pid = hub.store_info()[0]
            except (OSError, ValueError, KeyError):
                store_pid = None
        await hub.kill()
        kill_if_alive(store_pid)


async def start_hub(hubs: list[HubProcess], config: Path) -> HubProcess:
    hub = HubProcess(config)
    hubs.append(hub)
    return await hub.start()


def messages(provider: Provider, tag: str, count: int) -> list[str]:
    """`count` new messages, one sender after another (`SENDERS` of them)."""
    return [provider.message(f"{tag}{n:04d}", n % SENDERS)[0] for n in range(count)]


# -- kill -9 of the hub --------------------------------------------------------------


async def test_kill_9_of_the_hub_mid_stream_loses_no_acknowledged_message(
    tmp_path: Path, session: aiohttp.ClientSession, hubs: list[HubProcess]
) -> None:
    config = write_config(tmp_path)
    hub = await start_hub(hubs, config)
    provider = Provider(session, hub.webhook)
    sids = messages(provider, "K", 200)
    store_pid, _ = hub.store_info()

    async def kill_mid_stream() -> None:
        await provider.acknowledged_at_least(60)
        os.kill(hub.pid, signal.SIGKILL)

    killer = asyncio.create_task(kill_mid_stream())
    await provider.post_all(sids, concurrency=16)
    await asyncio.wait_for(killer, 5)
    assert await hub.process.wait() == -signal.SIGKILL  # type: ignore[union-attr]
    await wait_gone(store_pid)  # the store child goes with it
    acknowledged = provider.acknowledged()
    assert 60 <= len(acknowledged) < len(sids), provider.statuses()

    # A new hub on the same data holds every message that got a 200, once.
    hub = await start_hub(hubs, config)
    _, port = hub.store_info()
    async with StoreReader(port) as reader:
        await reader.assert_stored_once(acknowledged)

        # The provider retries the rest, newest first; each is stored once and
        # every conversation's summary is right.
        provider.url = hub.webhook
        await provider.deliver(sorted(set(sids) - acknowledged, reverse=True))
        await reader.assert_stored_once(sids)
        assert set((await reader.stored()).keys()) == set(sids)
        assert await reader.assert_summaries_right() == SENDERS
    assert await hub.stop() == 0, hub.log_tail()


# -- kill -9 of the store child ------------------------------------------------------


async def test_kill_9_of_the_store_answers_503_until_it_is_restarted_and_loses_nothing(
    tmp_path: Path, session: aiohttp.ClientSession, hubs: list[HubProcess]
) -> None:
    # Short bounds, so the test sees the store down before the hub has restarted it.
    config = write_config(tmp_path, command_timeout_ms=1000, server_selection_timeout_ms=1000)
    hub = await start_hub(hubs, config)
    provider = Provider(session, hub.webhook)
    store_pid, port = hub.store_info()
    warm = messages(provider, "W", SENDERS)
    await provider.deliver(warm)

    sids = messages(provider, "S", 400)
    killed_at: float | None = None

    async def kill_mid_stream() -> None:
        nonlocal killed_at
        await provider.acknowledged_at_least(SENDERS + 40)
        os.kill(store_pid, signal.SIGKILL)
        killed_at = time.monotonic()

    killer = asyncio.create_task(kill_mid_stream())
    # A steady stream (16 at a time, each sender a little apart) across the kill.
    await provider.post_all(sids, concurrency=16)
    await asyncio.wait_for(killer, 5)
    assert killed_at is not None
    await wait_gone(store_pid)

    # The hub answered every webhook, with 200 or 503: never an error of its own,
    # never a cut connection; 503 while its store was down, and not before.
    statuses = provider.statuses()
    print(f"store killed: answers {dict(statuses)}")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, statuses
    unavailable = [a for a in provider.answers if a.status == 503]
    assert min(a.sent_at + a.seconds for a in unavailable) > killed_at
    # It restarted the store on the same port (the driver reconnects by itself)
    # and takes messages again.
    new_pid, new_port = hub.store_info()
    assert (new_pid != store_pid, new_port) == (True, port)
    await hub.ready(session)
    after = messages(provider, "A", SENDERS)
    await provider.deliver(after)

    async with StoreReader(port) as reader:
        await reader.assert_stored_once(provider.acknowledged())
        # The provider retries what got a 503, newest first.
        await provider.deliver(sorted(set(sids) - provider.acknowledged(), reverse=True))
        everything = [*warm, *sids, *after]
        await reader.assert_stored_once(everything)
        assert set((await reader.stored()).keys()) == set(everything)
        assert await reader.assert_summaries_right() == SENDERS
    assert await hub.stop() == 0, hub.log_tail()


# -- a hung store (SIGSTOP) ----------------------------------------------------------


async def test_a_hung_store_answers_503_within_the_command_timeout_and_loses_nothing(
    tmp_path: Path, session: aiohttp.ClientSession, hubs: list[HubProcess]
) -> None:
    timeout, connect = 1.0, 1.0
    config = write_config(
        tmp_path,
        command_timeout_ms=int(timeout * 1000),
        server_selection_timeout_ms=int(connect * 1000),
    )
    hub = await start_hub(hubs, config)
    provider = Provider(session, hub.webhook)
    store_pid, port = hub.store_info()
    warm = messages(provider, "W", SENDERS)
    await provider.deliver(warm)

    os.kill(store_pid, signal.SIGSTOP)
    try:
        # Webhooks while it hangs: some sent as it stopped, some once those were
        # answered (the hub has given up on its connections by then).
        hung = messages(provider, "H", 60)
        answers = []
        for wave in (hung[:30], hung[30:]):
            answers += await asyncio.gather(*(provider.post(sid, timeout=20) for sid in wave))
    finally:
        os.kill(store_pid, signal.SIGCONT)
    # Each was answered 503, within a bound. A webhook waits for the batch
    # ahead of it, then for its own; each batch's command waits at most the
    # command timeout for a connection, the connect timeout to open one (TCP,
    # then the driver's handshake) and the command timeout for the answer.
    # Typically it is one command timeout or two; 2 s more for a loaded machine.
    assert [a.status for a in answers] == [503] * len(hung), provider.statuses()
    slowest = max(a.seconds for a in answers)
    per_command = 2 * timeout + 2 * connect
    assert slowest < 2 * per_command + 2.0, f"slowest 503 took {slowest:.2f} s"
    await hub.ready(session)

    # The customers write again before the provider retries (retries come late),
    # then the retries come, newest first. The store took some of the 503'd
    # messages after all (it ran the writes it had been sent once resumed): those
    # retries are duplicates, and must bring their conversations' summaries up.
    later = messages(provider, "L", SENDERS)
    await provider.deliver(later)
    async with StoreReader(port) as reader:
        late = set(await reader.stored()) & set(hung)
        print(f"hung store: slowest 503 {slowest:.2f} s; stored late despite the 503: {len(late)}")
        assert late, "the store ran none of the writes it was sent while stopped"
        await provider.deliver(sorted(hung, reverse=True))
        everything = [*warm, *hung, *later]
        await reader.assert_stored_once(everything)
        assert set((await reader.stored()).keys()) == set(everything)
        assert await reader.assert_summaries_right() == SENDERS
    assert await hub.stop() == 0, hub.log_tail()


async def test_a_command_the_store_never_answers_is_given_up_after_the_command_timeout(
    make_settings: Callable[..., Settings], embedded_uri: str
) -> None:
    """The store answers the driver's heartbeats but not a command (a MongoDB
    whose write waits on a lock): only `store.command_timeout_ms` ends the wait.
    Without it the webhook waited for as long as the store did."""
    timeout = 1.0
    proxy = await StoreProxy(int(embedded_uri.split(":")[2].split("/")[0])).start()
    settings = make_settings(store={"uri": proxy.uri, "command_timeout_ms": int(timeout * 1000)})
    try:
        async with TestClient(TestServer(build_app(settings))) as client:
            first = await post_inbound(client, MessageSid="P1", From=NUMBER, Body="one")
            assert first.status == 200
            proxy.hold()
            try:
                started = time.monotonic()
                held = await asyncio.wait_for(
                    post_inbound(client, MessageSid="P2", From=NUMBER, Body="two"), 8 * timeout
                )
                seconds = time.monotonic() - started
            finally:
                proxy.release()
            assert held.status == 503, await held.text()
            # Its insert given up after the timeout (no retry: a write to a
            # standalone store is not retried), 2 s more for a loaded machine.
            assert seconds < timeout + 2.0, f"503 after {seconds:.2f} s"
            assert proxy.held > 0
            # Released, the store ran the insert after all; the retry is a
            # duplicate and brings the summary up.
            retry = await post_inbound(client, MessageSid="P2", From=NUMBER, Body="two")
            assert retry.status == 200
            store = hub_of(client).store
            assert store is not None
            assert await store.messages.count_documents({"provider_id": "P2"}) == 1
            conversation = await store.conversations.find_one({})
            assert conversation is not None and conversation["unread"] == 2
    finally:
        await proxy.close()


async def test_the_hubs_store_client_bounds_commands_and_a_bulk_client_does_not(
    embedded_uri: str, db_name: str, tmp_path: Path
) -> None:
    settings = parse_settings(
        {"store": {"uri": embedded_uri, "database": db_name}}, source="<test>", base_dir=tmp_path
    )
    assert settings.store.command_timeout_ms == 10_000  # the default
    hubs_store = await Store.for_settings(settings)
    bulk = await Store.open(uri=embedded_uri, database=db_name, data_dir=tmp_path)
    try:
        pool = hubs_store.client.options.pool_options
        assert (pool.socket_timeout, pool.wait_queue_timeout) == (10.0, 10.0)
        assert hubs_store.client.options.timeout is None  # see Store.open
        pool = bulk.client.options.pool_options
        assert (pool.socket_timeout, pool.wait_queue_timeout) == (None, None)
    finally:
        await hubs_store.close()
        await bulk.close()
