"""`hub backup`, `hub export` and `hub import`, each run as the real command in its
own process against a real `hub serve` and its embedded store:

- a backup taken while the hub takes webhooks opens, alone in a new data_dir,
  in a fresh `hub serve` with every message acknowledged before it began;
- an export, imported into a fresh store, gives the same documents (types
  included) and indexes, collection by collection, with the counts printed;
- bad input (a missing directory, a corrupt line, a file cut short, a store that
  is not empty) is refused with the file and line named, and nothing written.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bson import Binary, Int64, ObjectId
from pymongo import AsyncMongoClient

from hub.store.embedded import EmbeddedStore
from tests.conftest import STORE_TEST_URI
from tests.faults.harness import (
    DATABASE,
    ROOT,
    HubProcess,
    Provider,
    SharedStore,
    StoreReader,
    write_config,
)

# The `hub` command with the test channel registered (the configs name it).
_RUN_CLI = (
    "import sys, tests.support.testchannel; from hub.cli import main; sys.exit(main(sys.argv[1:]))"
)


async def hub_command(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run `hub ARGS` as its own process; (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_CONFIG", "MONGODB_URI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN_CLI,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _collections(uri: str, database: str = DATABASE) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection of the hub's database, by `_id`."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        db = client[database]
        return {
            name: sorted(await db[name].find({}).to_list(), key=lambda d: str(d["_id"]))
            for name in sorted(await db.list_collection_names())
        }
    finally:
        await client.close()


async def _indexes(
    uri: str, database: str = DATABASE
) -> dict[str, list[tuple[str, list[Any], bool]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        db = client[database]
        found = {}
        for name in sorted(await db.list_collection_names()):
            found[name] = sorted(
                [
                    (i["name"], list(dict(i["key"]).items()), bool(i.get("unique")))
                    async for i in await db[name].list_indexes()
                ]
            )
        return found
    finally:
        await client.close()


async def test_backup_taken_under_writes_opens_alone_in_a_new_data_dir_with_everything(
    tmp_path: Path,
) -> None:
    hub = await HubProcess(write_config(tmp_path / "live")).start()
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            provider = Provider(session, hub.webhook)
            posting = True

            async def customers(first: int) -> None:
                n = 0
                while posting:
                    sid = f"SMb{first}x{n:05d}"
                    provider.message(sid, first * 1000 + n % 40)
                    await provider.post(sid)
                    n += 1

            writers = [asyncio.create_task(customers(i)) for i in range(4)]
            await provider.acknowledged_at_least(100)
            before = provider.acknowledged()
            acked_at_start = len(before)
            code, out, err = await hub_command(
                "backup",
                "--config",
                str(hub.config),
                "--out",
                str(tmp_path / "hub-backup.sqlite3"),
                cwd=tmp_path,
            )
            during = len(provider.acknowledged()) - acked_at_start
            await asyncio.sleep(0.3)
            posting = False
            await asyncio.gather(*writers)
        assert code == 0, err
        assert "written to" in out and "document(s)" in out
        # The hub kept taking webhooks while the copy was made.
        assert during > 0
    finally:
        await hub.stop()

    backup = tmp_path / "hub-backup.sqlite3"
    with sqlite3.connect(backup) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not (tmp_path / ".hub-backup.sqlite3.partial").exists()
    restored = tmp_path / "restored"
    (restored / "data").mkdir(parents=True)
    shutil.copy(backup, restored / "data" / "hub.sqlite3")
    fresh = await HubProcess(write_config(restored)).start()
    try:
        async with aiohttp.ClientSession() as session:
            await fresh.ready(session)
        _, port = fresh.store_info()
        async with StoreReader(port) as reader:
            stored = await reader.assert_stored_once(before)
            assert set(stored) <= {a.sid for a in provider.answers}
            conversations = {
                doc["_id"] async for doc in reader.db.conversations.find({}, {"_id": 1})
            }
            threads = {
                doc["conversation_id"]
                async for doc in reader.db.messages.find(
                    {"provider_id": {"$in": sorted(before)}}, {"conversation_id": 1}
                )
            }
            assert threads <= conversations, "a message whose conversation is not in the backup"
    finally:
        await fresh.stop()


async def test_export_then_import_into_a_fresh_store_gives_the_same_documents_and_indexes(
    tmp_path: Path,
) -> None:
    source = write_config(tmp_path / "source")
    hub = await HubProcess(source).start()
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            provider = Provider(session, hub.webhook)
            sids = [provider.message(f"SMe{n:03d}", n % 7)[0] for n in range(40)]
            await provider.deliver(sids)
    finally:
        await hub.stop()
    # The hub's store, now still (no hub renews its leases or relays events),
    # run on its own: the export attaches to it as to a running hub's.
    shared = await SharedStore(source.parent / "data").start()
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(shared.uri)
        try:
            extra = client[DATABASE]["operator_notes"]  # a collection the hub does not know
            await extra.insert_many(
                [
                    {
                        "_id": ObjectId(),
                        "big": Int64(2**40),
                        "small_long": Int64(3),
                        "ratio": 1.0,
                        "raw": Binary(b"\x00\xffbytes"),
                        "at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
                        "nested": {"list": [1, "two", {"three": None}], "text": "é ☃ \n"},
                    },
                    {"_id": "plain", "n": 7},
                ]
            )
            await extra.create_index("small_long", unique=True, name="small_long_unique")
        finally:
            await client.close()

        export = tmp_path / "export"
        code, out, err = await hub_command(
            "export", "--config", str(source), "--out", str(export), cwd=tmp_path
        )
        assert code == 0, err
        assert "exporting messages" in err  # the progress bar
        before = await _collections(shared.uri)
        before_indexes = await _indexes(shared.uri)
    finally:
        await shared.stop()
    assert len(before["messages"]) == 40
    assert f"messages: {len(before['messages'])}" in out
    assert (export / "manifest.json").is_file()

    target = write_config(tmp_path / "target")  # its own, empty data_dir
    code, out, err = await hub_command("import", str(export), "--config", str(target), cwd=tmp_path)
    assert code == 0, err
    total = sum(len(docs) for docs in before.values())
    assert f"{total} document(s) in {len(before)} collection(s)" in out
    store = EmbeddedStore(target.parent / "data")
    uri = await store.start()
    try:
        assert await _collections(uri) == before
        assert await _indexes(uri) == before_indexes
        notes = await _collections(uri)
        first = next(d for d in notes["operator_notes"] if d["_id"] != "plain")
        assert isinstance(first["big"], int) and first["big"] == 2**40
        assert first["raw"] == b"\x00\xffbytes"
        assert first["at"] == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    finally:
        await store.stop()


async def test_import_refuses_bad_input_naming_the_file_and_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    source = write_config(tmp_path / "source")
    hub = await HubProcess(source).start()
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            provider = Provider(session, hub.webhook)
            await provider.deliver([provider.message(f"SMbad{n}", n)[0] for n in range(5)])
        export = tmp_path / "export"
        code, _, err = await hub_command(
            "export", "--config", str(source), "--out", str(export), cwd=tmp_path
        )
        assert code == 0, err
        # Exporting into a directory that holds something is refused.
        code, _, err = await hub_command(
            "export", "--config", str(source), "--out", str(export), cwd=tmp_path
        )
        assert code == 1 and "not an empty directory" in err
        # Importing into a store that holds documents is refused, naming them.
        code, _, err = await hub_command(
            "import", str(export), "--config", str(source), cwd=tmp_path
        )
        assert code == 1 and "already holds documents in" in err and "messages" in err
    finally:
        await hub.stop()

    target = write_config(tmp_path / "target")
    code, _, err = await hub_command(
        "import", str(tmp_path / "nowhere"), "--config", str(target), cwd=tmp_path
    )
    assert code == 1 and f"{tmp_path / 'nowhere'}: no such directory" in err

    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    lines = (broken / "messages.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # a line cut in the middle
    (broken / "messages.jsonl").write_text("".join(lines))
    code, _, err = await hub_command("import", str(broken), "--config", str(target), cwd=tmp_path)
    assert code == 1
    assert f"{broken / 'messages.jsonl'}:3: not extended JSON" in err

    short = tmp_path / "short"
    shutil.copytree(export, short)
    lines = (short / "messages.jsonl").read_text().splitlines(keepends=True)
    (short / "messages.jsonl").write_text("".join(lines[:-1]))
    code, _, err = await hub_command("import", str(short), "--config", str(target), cwd=tmp_path)
    assert code == 1 and "4 document(s), but manifest.json says 5" in err

    (short / "manifest.json").write_text('{"format": "hub-export-1",\n "collections": [}')
    code, _, err = await hub_command("import", str(short), "--config", str(target), cwd=tmp_path)
    assert code == 1 and f"{short / 'manifest.json'}:2: not JSON" in err

    # Nothing was written by the refused imports: the target store is empty.
    store = EmbeddedStore(target.parent / "data")
    uri = await store.start()
    try:
        assert all(not docs for docs in (await _collections(uri)).values())
    finally:
        await store.stop()


async def test_backup_refuses_a_mongodb_and_a_data_dir_without_a_store(tmp_path: Path) -> None:
    remote = write_config(tmp_path / "remote", uri="mongodb://127.0.0.1:9/")
    code, _, err = await hub_command(
        "backup", "--config", str(remote), "--out", str(tmp_path / "b"), cwd=tmp_path
    )
    assert code == 2 and "mongodump" in err
    empty = write_config(tmp_path / "empty")
    code, _, err = await hub_command(
        "backup", "--config", str(empty), "--out", str(tmp_path / "b"), cwd=tmp_path
    )
    assert code == 1 and "no embedded store here" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.store
@pytest.mark.skipif(not STORE_TEST_URI, reason="set MONGODB_URI to move data into a MongoDB")
async def test_export_from_the_embedded_store_imports_into_mongodb_and_back(
    tmp_path: Path,
) -> None:
    """The move the guide describes, both ways: embedded -> MongoDB -> embedded."""
    source = write_config(tmp_path / "source")
    hub = await HubProcess(source).start()
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            provider = Provider(session, hub.webhook)
            await provider.deliver([provider.message(f"SMm{n:03d}", n % 5)[0] for n in range(30)])
    finally:
        await hub.stop()
    shared = await SharedStore(source.parent / "data").start()
    try:
        there = tmp_path / "there"
        code, _, err = await hub_command(
            "export", "--config", str(source), "--out", str(there), cwd=tmp_path
        )
        assert code == 0, err
        before = await _collections(shared.uri)
        before_indexes = await _indexes(shared.uri)
    finally:
        await shared.stop()
    database = "hubmove" + secrets.token_hex(4)
    mongo = write_config(tmp_path / "mongo", uri=STORE_TEST_URI, database=database)
    try:
        code, _, err = await hub_command("import", str(there), "--config", str(mongo), cwd=tmp_path)
        assert code == 0, err
        assert await _collections(STORE_TEST_URI, database) == before
        assert await _indexes(STORE_TEST_URI, database) == before_indexes
        back = tmp_path / "back"
        code, _, err = await hub_command(
            "export", "--config", str(mongo), "--out", str(back), cwd=tmp_path
        )
        assert code == 0, err
    finally:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(STORE_TEST_URI)
        try:
            await client.drop_database(database)
        finally:
            await client.close()
    home = write_config(tmp_path / "home")
    code, _, err = await hub_command("import", str(back), "--config", str(home), cwd=tmp_path)
    assert code == 0, err
    store = EmbeddedStore(home.parent / "data")
    uri = await store.start()
    try:
        assert await _collections(uri) == before
    finally:
        await store.stop()
