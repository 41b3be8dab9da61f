"""The store: collections and indexes made idempotently at start-up, the embedded
store's life cycle (restart, attach, kill -9 of the hub), and the engine
adjustments in `embedded_server.py`.

These tests start their own embedded stores on temporary data directories, apart
from the session store the other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    ServerSelectionTimeoutError,
)

from hub.store import INDEXES, Store
from hub.store.embedded import EmbeddedStore
from hub.store.embedded_server import INFO_NAME, LOCK_NAME

# A bound on how long a process may take to do what it must, not a measurement.
DEADLINE = 30.0


def _direction(value: object) -> int | str:
    """An index key's direction as given (1, -1; "text" stays text)."""
    return value if isinstance(value, str) else int(value)  # type: ignore[call-overload]


def _index_keys(info: dict[str, dict[str, object]]) -> set[tuple[tuple[str, int | str], ...]]:
    return {tuple((k, _direction(d)) for k, d in spec["key"]) for spec in info.values()}  # type: ignore[attr-defined]


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _wait_gone(pid: int) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        if not _pid_alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def _kill_if_alive(pid: int | None) -> None:
    if pid is not None and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store on its own embedded server in a fresh data directory."""
    store = await Store.open(uri="", database="hub", data_dir=tmp_path / "data")
    try:
        yield store
    finally:
        await store.close()


# --- collections and indexes -----------------------------------------------------


async def test_ensure_indexes_creates_every_collection_and_index_idempotently(
    own_store: Store,
) -> None:
    await own_store.ensure_indexes()
    await own_store.ensure_indexes()  # a second start changes nothing and does not fail
    names = set(await own_store.db.list_collection_names())
    assert set(INDEXES) <= names
    for name, indexes in INDEXES.items():
        info = await own_store.db[name].index_information()
        keys = _index_keys(info)
        wanted = {tuple(spec) for spec, _options in indexes}
        assert wanted | {(("_id", 1),)} == keys, name
        # Uniqueness is carried by `_id` only (see hub/store/__init__.py).
        assert [n for n, spec in info.items() if spec.get("unique")] == ["_id_"], name


async def test_an_index_an_earlier_version_made_otherwise_is_made_again(own_store: Store) -> None:
    """A store whose messages' `provider_key` index predates it being sparse: the
    next start makes it sparse (an inbound message then has no entry in it), and
    what it finds stays found."""
    messages = own_store.db.messages
    await messages.create_index([("provider_key", ASCENDING)])
    await messages.insert_many(
        [{"_id": "in", "text": "hi"}, {"_id": "out", "provider_key": "twilio:SM1"}]
    )
    assert not (await messages.index_information())["provider_key_1"].get("sparse")
    await own_store.ensure_indexes()
    assert (await messages.index_information())["provider_key_1"]["sparse"] is True
    assert [d["_id"] async for d in messages.find({"provider_key": "twilio:SM1"})] == ["out"]
    await own_store.ensure_indexes()  # and stays so


async def test_an_index_made_again_on_a_large_collection_outlasts_the_command_timeout(
    own_store: Store,
) -> None:
    """A start that makes an index again on a collection large enough that the
    build takes longer than `store.command_timeout_ms` (an upgrade on a store of
    a million messages) waits for the build; the timeout, meant for a store that
    hangs, failed the start instead (the store went on building)."""
    messages = own_store.db.messages
    await messages.create_index([("provider_key", ASCENDING)])
    for start in range(0, 20_000, 2_000):
        await messages.insert_many(
            [{"_id": f"m{i}", "provider_key": f"twilio:SM{i}"} for i in range(start, start + 2_000)]
        )
    hub_side = await Store.open(
        uri=own_store.uri, database="hub", data_dir=Path("unused"), command_timeout_ms=20
    )
    try:
        await hub_side.ensure_indexes()
        info = await messages.index_information()
        assert info["provider_key_1"]["sparse"] is True
        assert await messages.count_documents({"provider_key": "twilio:SM19999"}) == 1
        # Other commands keep their bound: a build as long, asked for outside a
        # start (on a connection already open, so the build is what times out).
        await hub_side.db.command("ping")
        with pytest.raises(NetworkTimeout):
            await hub_side.messages.create_index([("provider_key", DESCENDING)])
    finally:
        await hub_side.close()


async def test_a_start_on_a_store_that_cannot_be_reached_fails_in_the_selection_timeout(
    tmp_path: Path,
) -> None:
    """The index builds' own client keeps the hub's bound on finding the store:
    the start fails, it does not wait the builds' hour."""
    store = await Store.open(
        uri="mongodb://127.0.0.1:1/?directConnection=true",  # nothing listens there
        database="hub",
        data_dir=tmp_path,
        server_selection_timeout_ms=300,
        command_timeout_ms=1000,
    )
    try:
        started = time.perf_counter()
        with pytest.raises(ServerSelectionTimeoutError):
            await store.ensure_indexes()
        assert time.perf_counter() - started < 5
    finally:
        await store.close()


async def test_store_exposes_known_collections_only(store: Store) -> None:
    assert store.contacts.name == "contacts"
    assert store.contacts is store.contacts
    with pytest.raises(AttributeError):
        _ = store.no_such_collection


# --- the embedded store's life cycle ---------------------------------------------


async def test_data_survives_stopping_and_starting_the_embedded_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = await Store.open(uri="", database="hub", data_dir=data_dir)
    try:
        assert first.embedded is not None and first.embedded.owned
        await first.ensure_indexes()
        await first.contacts.insert_many(
            [{"_id": f"c{i}", "name": f"contact {i}"} for i in range(50)]
        )
        await first.identities.insert_one({"_id": "phone:+15550100001", "contact_id": "c7"})
    finally:
        await first.close()
    assert not (data_dir / INFO_NAME).exists()  # a clean stop removes the address file

    second = await Store.open(uri="", database="hub", data_dir=data_dir)
    try:
        assert second.embedded is not None and second.embedded.owned
        assert await second.contacts.count_documents({}) == 50
        identity = await second.identities.find_one({"_id": "phone:+15550100001"})
        assert identity is not None and identity["contact_id"] == "c7"
        await second.ensure_indexes()  # idempotent on a store that has them already
        assert await second.contacts.count_documents({}) == 50
    finally:
        await second.close()


async def test_second_start_on_the_same_data_dir_attaches_to_the_running_store(
    tmp_path: Path,
) -> None:
    first = EmbeddedStore(tmp_path)
    second = EmbeddedStore(tmp_path)
    try:
        uri = await first.start()
        assert first.owned
        assert first.process is not None
        pid = first.process.pid
        assert await second.start() == uri
        assert second.owned is False
        # Stopping the one that attached leaves the running store alone.
        await second.stop()
        assert _pid_alive(pid)
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=5000
        )
        try:
            assert (await client.admin.command("ping"))["ok"] == 1
        finally:
            await client.close()
    finally:
        await second.stop()
        await first.stop()
    assert await _wait_gone(pid)


async def test_supervised_attached_store_is_restarted_on_the_same_port_when_its_owner_exits(
    tmp_path: Path,
) -> None:
    owner = EmbeddedStore(tmp_path)
    attached = EmbeddedStore(tmp_path)
    client: AsyncMongoClient[dict[str, object]] | None = None
    try:
        uri = await owner.start()
        assert await attached.start() == uri and not attached.owned
        client = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)
        await client.hub.kept.insert_one({"_id": "before"})
        attached.supervise(interval=0.2)
        await owner.stop()  # the command that started the store exits
        # The same URI answers again, from a store the attached process now owns.
        assert await client.hub.kept.find_one({"_id": "before"}) == {"_id": "before"}
        assert attached.owned
        assert attached.uri == uri
    finally:
        if client is not None:
            await client.close()
        await attached.stop()
        await owner.stop()


async def test_concurrent_starts_on_one_data_dir_share_one_store(tmp_path: Path) -> None:
    stores = [EmbeddedStore(tmp_path) for _ in range(3)]
    try:
        uris = await asyncio.gather(*(s.start() for s in stores))
        assert len(set(uris)) == 1
        assert [s.owned for s in stores].count(True) == 1
    finally:
        for s in stores:
            await s.stop()


async def test_start_waits_for_a_store_that_is_still_starting(
    tmp_path: Path, embedded_uri: str
) -> None:
    # Another command holds the lock and has not published its address yet (its
    # store is still importing): a new command must wait for it, not give up.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = int(embedded_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    with (data_dir / LOCK_NAME).open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        waiter = EmbeddedStore(data_dir)
        task = asyncio.create_task(waiter.start())
        try:
            await asyncio.sleep(2.5)  # longer than a few quick attempts would last
            (data_dir / INFO_NAME).write_text(
                json.dumps({"pid": os.getpid(), "host": "127.0.0.1", "port": port})
            )
            uri = await asyncio.wait_for(task, DEADLINE)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            fcntl.flock(lock, fcntl.LOCK_UN)
    assert uri.startswith(f"mongodb://127.0.0.1:{port}/")
    assert waiter.owned is False


async def test_stale_address_file_without_a_running_store_is_ignored(tmp_path: Path) -> None:
    # A store killed with -9 leaves store.json behind; nothing holds the lock.
    (tmp_path / INFO_NAME).write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 9}))
    embedded = EmbeddedStore(tmp_path)
    try:
        uri = await embedded.start()
        assert embedded.owned
        assert ":9/" not in uri
        info = json.loads((tmp_path / INFO_NAME).read_text())
        assert embedded.process is not None
        assert info["pid"] == embedded.process.pid
    finally:
        await embedded.stop()


# --- kill -9 of a hub process ----------------------------------------------------


def _hub_config(tmp_path: Path) -> Path:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n\n'
        '[store]\ndatabase = "hub"\ndata_dir = "data"\n\n'
        '[logging]\nlevel = "WARNING"\nformat = "text"\n'
    )
    return config


def _hub_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HUB_CONFIG", "MONGODB_URI", "HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        env.pop(name, None)
    return env


async def _start_hub(config: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start `hub serve`; return the process and the inbox URL it printed."""
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--config",
            str(config),
            cwd=config.parent,
            env=_hub_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    await process.wait()
                    raise AssertionError(
                        f"hub serve exited with {process.returncode}: {_text(log)}"
                    )
                if "inbox at http://127.0.0.1:" in line:
                    return process, line.split("inbox at ", 1)[1].strip()
    except BaseException:
        _kill_if_alive(process.pid)
        await process.wait()
        raise


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


def _store_info(data_dir: Path) -> tuple[int, int]:
    info = json.loads((data_dir / INFO_NAME).read_text())
    pid = int(info["pid"])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "hub.store.embedded_server" in cmdline, cmdline
    return pid, int(info["port"])


async def _ready(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "readyz") as response:
        return response.status


async def test_kill_9_of_the_hub_stops_its_store_and_a_new_hub_starts_cleanly(
    tmp_path: Path,
) -> None:
    config = _hub_config(tmp_path)
    data_dir = tmp_path / "data"
    log = tmp_path / "hub.log"
    hubs: list[asyncio.subprocess.Process] = []
    store_pids: list[int] = []
    try:
        hub, url = await _start_hub(config, log)
        hubs.append(hub)
        store_pid, port = _store_info(data_dir)
        store_pids.append(store_pid)
        assert await _ready(url) == 200

        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=5000
        )
        try:
            await client.hub.contacts.insert_one({"_id": "before-kill", "name": "Ann"})
        finally:
            await client.close()

        os.kill(hub.pid, signal.SIGKILL)
        assert await hub.wait() == -signal.SIGKILL
        assert await _wait_gone(store_pid), "the embedded store outlived the killed hub"

        hub, url = await _start_hub(config, log)
        hubs.append(hub)
        new_store_pid, new_port = _store_info(data_dir)
        store_pids.append(new_store_pid)
        assert new_store_pid != store_pid
        assert await _ready(url) == 200
        client = AsyncMongoClient(
            f"mongodb://127.0.0.1:{new_port}/?directConnection=true",
            serverSelectionTimeoutMS=5000,
        )
        try:
            doc = await client.hub.contacts.find_one({"_id": "before-kill"})
            assert set(INDEXES) <= set(await client.hub.list_collection_names())
        finally:
            await client.close()
        assert doc == {"_id": "before-kill", "name": "Ann"}

        # A graceful stop takes the store down with the hub and tidies up.
        hub.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(hub.wait(), DEADLINE) == 0, _text(log)
        assert await _wait_gone(new_store_pid)
        assert not (data_dir / INFO_NAME).exists()
    finally:
        for process in hubs:
            if process.returncode is None:
                _kill_if_alive(process.pid)
                await process.wait()
        for pid in store_pids:
            _kill_if_alive(pid)


# --- the engine adjustments in embedded_server.py ---------------------------------


async def test_duplicate_string_id_insert_is_refused(store: Store) -> None:
    await store.contacts.insert_one({"_id": "same", "name": "first"})
    with pytest.raises(DuplicateKeyError) as caught:
        await store.contacts.insert_one({"_id": "same", "name": "second"})
    assert caught.value.code == 11000
    assert await store.contacts.find_one({"_id": "same"}) == {"_id": "same", "name": "first"}


async def test_duplicate_objectid_insert_is_refused(store: Store) -> None:
    from bson import ObjectId

    oid = ObjectId()
    await store.contacts.insert_one({"_id": oid})
    with pytest.raises(DuplicateKeyError):
        await store.contacts.insert_one({"_id": oid})
    assert await store.contacts.count_documents({}) == 1


async def test_numeric_ids_that_compare_equal_are_still_duplicates(store: Store) -> None:
    await store.contacts.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        await store.contacts.insert_one({"_id": 1.0})
    with pytest.raises(BulkWriteError):
        await store.contacts.insert_many([{"_id": 2}, {"_id": 2.0}])
    assert sorted([d["_id"] async for d in store.contacts.find()]) == [1, 2]


async def test_unordered_insert_many_reports_each_duplicate_and_inserts_the_rest(
    store: Store,
) -> None:
    await store.messages.insert_one({"_id": "m1", "text": "old"})
    docs = [{"_id": f"m{i}", "text": "new"} for i in range(6)]  # m1 exists
    docs.append({"_id": "m3", "text": "again"})  # and a duplicate within the batch
    with pytest.raises(BulkWriteError) as caught:
        await store.messages.insert_many(docs, ordered=False)
    details = caught.value.details
    assert details["nInserted"] == 5
    assert sorted(e["index"] for e in details["writeErrors"]) == [1, 6]
    assert {e["code"] for e in details["writeErrors"]} == {11000}
    stored = {d["_id"]: d["text"] async for d in store.messages.find()}
    assert stored == {"m0": "new", "m1": "old", "m2": "new", "m3": "new", "m4": "new", "m5": "new"}


async def test_ordered_insert_many_stops_at_the_first_duplicate(store: Store) -> None:
    await store.messages.insert_one({"_id": "b"})
    with pytest.raises(BulkWriteError) as caught:
        await store.messages.insert_many([{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
    details = caught.value.details
    assert details["nInserted"] == 1
    assert [e["index"] for e in details["writeErrors"]] == [1]
    assert sorted([d["_id"] async for d in store.messages.find()]) == ["a", "b"]


async def test_insert_many_without_duplicates_inserts_every_document(store: Store) -> None:
    result = await store.messages.insert_many([{"_id": f"x{i}", "n": i} for i in range(200)])
    assert len(result.inserted_ids) == 200
    assert await store.messages.count_documents({}) == 200
    assert await store.messages.find_one({"_id": "x199"}) == {"_id": "x199", "n": 199}
