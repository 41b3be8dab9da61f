"""The embedded engine answers what mongoeco answers, and loads only on the
mongoeco it was written for.

- Reads: the index paths answer exactly what a collection scan answers. Each
  query runs over the wire against the embedded store and is compared with the
  answer computed here in Python from all the documents. The field names differ
  per test: what the engine learns about a field (it held an array, a document
  lacked it) holds for that name store-wide, and would otherwise turn the fast
  paths off for the other tests.
- Writes: each adjusted write path answers what stock mongoeco answers, run
  side by side on a stock mongoeco server in a process of its own.
- The codec and the wire decoding give what the engine's own functions give.
- The check of the installed mongoeco names what changed.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import json
import random
import re
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128, Int64, ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, InsertOne, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError, WriteError

Doc = dict[str, Any]
BASE = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


@pytest.fixture
async def coll(embedded_uri: str, db_name: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(embedded_uri, tz_aware=False)
    yield client[db_name]["items"]
    await client.close()


def fields() -> tuple[str, str]:
    """A group field and a time field of this test's own."""
    tag = secrets.token_hex(3)
    return f"g{tag}", f"at{tag}"


def newest_first(docs: list[Doc], at: str) -> list[Doc]:
    return sorted(docs, key=lambda d: (d[at], d["_id"]), reverse=True)


async def seeded(coll: Any, group: str, at: str, n: int = 600) -> list[Doc]:
    rng = random.Random(7)
    docs = [
        {
            "_id": f"m{i:05d}",
            group: f"c{rng.randrange(12)}",
            at: BASE + timedelta(seconds=rng.randrange(150)),  # many ties
            "status": rng.choice(["open", "resolved", "snoozed"]),
            "n": i,
        }
        for i in range(n)
    ]
    await coll.insert_many(docs)
    await coll.create_index([(group, ASCENDING)])
    await coll.create_index([(at, DESCENDING)])
    return docs


async def test_equality_with_a_sort_and_a_limit_matches_a_scan(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at)
    for value in ("c0", "c3", "c11", "nobody"):
        expected = newest_first([d for d in docs if d[group] == value], at)
        for limit in (1, 5, 51):
            got = (
                await coll.find({group: value}).sort([(at, -1), ("_id", -1)]).limit(limit).to_list()
            )
            assert got == expected[:limit]
        unsorted = await coll.find({group: value}).to_list()
        assert sorted(unsorted, key=lambda d: d["_id"]) == [d for d in docs if d[group] == value]
        assert len(await coll.find({group: value}).limit(2).to_list()) == min(2, len(unsorted))


async def test_equality_with_more_conditions_and_a_cursor_matches_a_scan(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at)
    thread = newest_first([d for d in docs if d[group] == "c4"], at)
    anchor = thread[7]
    filt = {
        group: "c4",
        "$or": [
            {at: {"$lt": anchor[at]}},
            {at: anchor[at], "_id": {"$lt": anchor["_id"]}},
        ],
    }
    got = await coll.find(filt).sort([(at, -1), ("_id", -1)]).limit(10).to_list()
    assert got == thread[8:18]
    got = await coll.find({group: "c4", "status": "open"}).sort([(at, -1), ("_id", -1)]).to_list()
    assert got == [d for d in thread if d["status"] == "open"]
    got = (
        await coll.find({group: "c4"}, {"n": 1, "_id": 0})
        .sort([(at, 1), ("_id", 1)])
        .skip(3)
        .limit(4)
        .to_list()
    )
    assert got == [{"n": d["n"]} for d in list(reversed(thread))[3:7]]


async def test_a_sorted_page_walks_the_index_and_keeps_ties_in_order(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at)
    for filt, keep in (
        ({}, lambda d: True),
        ({"status": "open"}, lambda d: d["status"] == "open"),
        ({"status": {"$in": ["open", "snoozed"]}}, lambda d: d["status"] != "resolved"),
        ({"n": {"$gte": 590}}, lambda d: d["n"] >= 590),
        ({"status": "nothing"}, lambda d: False),
    ):
        expected = newest_first([d for d in docs if keep(d)], at)
        for skip, limit in ((0, 1), (0, 26), (10, 26), (300, 5), (0, 1000)):
            got = (
                await coll.find(filt)
                .sort([(at, -1), ("_id", -1)])
                .skip(skip)
                .limit(limit)
                .to_list()
            )
            assert got == expected[skip : skip + limit], (filt, skip, limit)
        oldest = sorted(expected, key=lambda d: (d[at], d["_id"]))
        got = await coll.find(filt).sort([(at, 1), ("_id", 1)]).limit(7).to_list()
        assert got == oldest[:7]


async def test_a_document_holding_an_array_is_still_found(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at, n=50)
    await coll.insert_one({"_id": "array", group: ["c1", "c2"], at: BASE, "status": "open"})
    got = await coll.find({group: "c1"}).sort([(at, -1), ("_id", -1)]).to_list()
    ids = [d["_id"] for d in got]
    assert "array" in ids
    assert len(ids) == 1 + sum(1 for d in docs if d[group] == "c1")


async def test_a_document_turned_into_an_array_by_an_update_is_still_found(coll: Any) -> None:
    group, at = fields()
    await seeded(coll, group, at, n=50)
    assert await coll.find({group: "c5"}).sort([(at, -1)]).to_list()  # the fast path, warm
    await coll.update_one({"_id": "m00001"}, {"$set": {group: ["c5", "zz"]}})
    got = await coll.find({group: "zz"}).sort([(at, -1)]).to_list()
    assert [d["_id"] for d in got] == ["m00001"]


async def test_a_document_without_the_sort_field_is_placed_as_a_scan_places_it(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at, n=80)
    assert len(await coll.find({}).sort([(at, -1)]).limit(3).to_list()) == 3  # warm
    await coll.insert_one({"_id": "timeless", group: "c1", "status": "open"})
    newest = await coll.find({}).sort([(at, -1), ("_id", -1)]).limit(200).to_list()
    assert [d["_id"] for d in newest] == [d["_id"] for d in newest_first(docs, at)] + ["timeless"]
    oldest = await coll.find({}).sort([(at, 1), ("_id", 1)]).limit(2).to_list()
    assert oldest[0]["_id"] == "timeless"


async def test_values_of_mixed_types_sort_in_bson_order(coll: Any) -> None:
    _group, at = fields()
    await coll.create_index([(at, ASCENDING)])
    values: list[Any] = [3, "b", None, True, BASE, 2.5, "a", False, BASE + timedelta(1), -1]
    await coll.insert_many([{"_id": f"v{i}", at: v} for i, v in enumerate(values)])
    got = await coll.find({}).sort([(at, 1), ("_id", 1)]).limit(20).to_list()
    order = [None, -1, 2.5, 3, "a", "b", False, True, BASE, BASE + timedelta(1)]
    assert [d[at] for d in got] == order
    got = await coll.find({}).sort([(at, -1), ("_id", 1)]).limit(4).to_list()
    assert [d[at] for d in got] == list(reversed(order))[:4]


async def test_ids_in_a_list_with_a_sort_and_more_conditions_match_a_scan(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at, n=200)
    wanted = [f"m{i:05d}" for i in range(0, 200, 7)] + ["absent"]
    got = await coll.find({"_id": {"$in": wanted}}).sort([(at, -1), ("_id", -1)]).to_list()
    assert got == newest_first([d for d in docs if d["_id"] in wanted], at)
    got = await coll.find({"_id": {"$in": wanted}, "status": "open"}).to_list()
    assert sorted(d["_id"] for d in got) == sorted(
        d["_id"] for d in docs if d["_id"] in wanted and d["status"] == "open"
    )
    assert await coll.find({"_id": "m00003"}).to_list() == [docs[3]]
    assert len(await coll.find({"_id": {"$in": wanted}}).skip(2).limit(3).to_list()) == 3


async def test_a_page_after_a_cursor_matches_a_scan(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at)
    await coll.insert_many(
        [{"_id": f"null{i}", group: "c1", at: None, "status": "open"} for i in range(3)]
    )
    everything = newest_first(docs, at) + [
        {"_id": f"null{i}", group: "c1", at: None, "status": "open"} for i in (2, 1, 0)
    ]
    for position in (0, 25, 299, 598, 599):
        anchor = everything[position]
        cursor = {
            "$or": [
                {at: {"$lt": anchor[at]}},
                {at: anchor[at], "_id": {"$lt": anchor["_id"]}},
                {at: None},
            ]
        }
        got = await coll.find(cursor).sort([(at, -1), ("_id", -1)]).limit(26).to_list()
        assert got == everything[position + 1 : position + 27], position
        got = (
            await coll.find({"$and": [{"status": "open"}, cursor]})
            .sort([(at, -1), ("_id", -1)])
            .limit(10)
            .to_list()
        )
        assert got == [d for d in everything[position + 1 :] if d["status"] == "open"][:10]
    got = (
        await coll.find({at: {"$gte": BASE + timedelta(seconds=140)}})
        .sort([(at, 1), ("_id", 1)])
        .limit(500)
        .to_list()
    )
    assert got == sorted(
        (d for d in docs if d[at] >= BASE + timedelta(seconds=140)), key=lambda d: (d[at], d["_id"])
    )


async def test_ranges_on_an_indexed_field_match_a_scan(coll: Any) -> None:
    group, at = fields()
    docs = await seeded(coll, group, at)
    low, high = BASE + timedelta(seconds=40), BASE + timedelta(seconds=90)
    got = await coll.find({at: {"$gt": low, "$lte": high}}).to_list()
    assert sorted(d["_id"] for d in got) == [d["_id"] for d in docs if low < d[at] <= high]
    got = await coll.find({at: {"$gte": high}, "status": "open"}).sort([("n", 1)]).to_list()
    assert got == [d for d in docs if d[at] >= high and d["status"] == "open"]
    assert await coll.find({at: {"$lt": "a string"}}).to_list() == []
    await coll.insert_one({"_id": "array", at: [BASE + timedelta(seconds=100)]})
    got = await coll.find({at: {"$gt": high}}).to_list()
    assert "array" in [d["_id"] for d in got]


async def test_index_entries_are_kept_across_a_restart_and_not_rebuilt(private_store: Any) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(private_store.uri)
    items = client.hub.items
    await items.create_index([("g", ASCENDING)])
    # A text index on one field (as the hub's contacts have) has no entries of
    # this kind: it must not make every open rebuild the others.
    await items.create_index([("name", "text")], default_language="none", name="words")
    await items.insert_many(
        [{"_id": f"a{i}", "g": f"c{i % 3}", "n": i, "name": f"n{i}"} for i in range(30)]
    )
    await client.close()
    database = private_store.data_dir / "hub.sqlite3"

    def entries() -> list[tuple[int, str]]:
        # A rebuild deletes the entries and writes them again, under new rowids.
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            return conn.execute(
                "SELECT rowid, storage_key FROM scalar_index_entries ORDER BY rowid"
            ).fetchall()

    before = entries()
    uri = await private_store.restart()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (stamp,) = conn.execute(
            "SELECT value FROM hub_engine_meta WHERE key = 'scalar_entries'"
        ).fetchone()
    assert stamp.startswith("mongoeco ")
    assert len(before) >= 30
    assert entries() == before
    client = AsyncMongoClient(uri)
    items = client.hub.items
    await items.insert_one({"_id": "after", "g": "c1", "n": 99})
    got = await items.find({"g": "c1"}).sort([("n", -1)]).to_list()
    assert [d["n"] for d in got] == [99, *range(28, 0, -3)]
    await client.close()


async def test_asking_for_ids_only_gives_the_ids_of_every_kind(coll: Any) -> None:
    group, at = fields()
    await coll.create_index([(group, ASCENDING)])
    await coll.create_index([(at, ASCENDING)])
    oid = ObjectId()
    docs = [
        {"_id": oid, group: "x", at: "k1", "big": "y" * 1000},
        {"_id": "plain", group: "x", at: "k2"},
        {"_id": 'quote"and\\slash', group: "x", at: "k3"},
        {"_id": 7, group: "x", at: "k4"},
        {"_id": {"nested": 1}, group: "x", at: "k5"},
    ]
    await coll.insert_many(docs)
    expected = sorted((d["_id"] for d in docs), key=repr)
    for filt in ({group: "x"}, {at: {"$gte": "k1"}}, {at: {"$gt": "k0", "$lt": "k9"}}):
        got = await coll.find(filt, {"_id": 1}).to_list()
        assert sorted((d["_id"] for d in got), key=repr) == expected, filt
        assert all(set(d) == {"_id"} for d in got)
    got = await coll.find({"_id": {"$in": [oid, "plain"]}}, {"_id": 1}).to_list()
    assert sorted((d["_id"] for d in got), key=repr) == sorted([oid, "plain"], key=repr)
    assert await coll.find({at: {"$gt": "k4"}}, {"_id": 1}).to_list() == [{"_id": {"nested": 1}}]


@pytest.fixture
def unpatched_in_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the engine's patches change in this process's mongoeco, put back
    after the test, so that no other test finds them applied."""
    from mongoeco.core import codec
    from mongoeco.wire import protocol

    monkeypatch.setattr(codec, "validate_bson_value", codec.validate_bson_value)
    monkeypatch.setattr(codec.DocumentCodec, "encode", codec.DocumentCodec.encode)
    monkeypatch.setattr(codec.DocumentCodec, "to_internal", codec.DocumentCodec.to_internal)
    monkeypatch.setattr(codec, "_hub_validation_patched", False, raising=False)
    monkeypatch.setattr(protocol, "decode_wire_value", protocol.decode_wire_value)
    monkeypatch.setattr(protocol, "_hub_decoding_patched", False, raising=False)
    monkeypatch.setattr(protocol, "encode_wire_value", protocol.encode_wire_value)
    monkeypatch.setattr(protocol, "_hub_encoding_patched", False, raising=False)


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_the_codec_checks_once_and_encodes_and_refuses_as_before() -> None:
    from mongoeco.core.codec import DocumentCodec

    from hub.store.engine import patch_codec_validation

    samples: list[Any] = [
        {"a": {"b": [1, 2.5, BASE, {"c": None}]}, "d": "x", "e": ObjectId()},
        [{"deep": [[{"x": True}]]}],
        "plain",
    ]
    # "Before" is the shipped codec's answer, whatever an earlier test patched.
    before = [_fresh_codec().DocumentCodec.encode(s) for s in samples]
    patch_codec_validation()
    assert [DocumentCodec.encode(s) for s in samples] == before
    for bad, reason in (
        ({"a": {"b": {1: "int key"}}}, "keys must be strings"),
        ({"a": [{"s": {1, 2}}]}, "set values"),
        ({"n": 2**70}, "int64 range"),
    ):
        with pytest.raises((TypeError, OverflowError, ValueError), match=reason):
            DocumentCodec.encode(bad)


def _update_ops(group: str, at: str) -> list[Any]:
    from pymongo import UpdateOne

    return [
        UpdateOne({"_id": "m00001"}, {"$set": {"status": "open", at: BASE}, "$inc": {"n": 5}}),
        UpdateOne({"_id": "nobody"}, {"$set": {"status": "open"}}),  # matches nothing
        UpdateOne({"_id": "m00002"}, {"$inc": {"status": 1}}),  # $inc on a string: refused
        UpdateOne({"_id": "m00003"}, {"$set": {group: "moved"}}),  # an indexed field
        UpdateOne({"_id": "m00004"}, {"$bogus": {"x": 1}}),  # not an operator: refused
        UpdateOne({"_id": "m00005"}, {"$set": {"n": 5}}),  # already so: matched, not modified
        UpdateOne({"_id": "m00006", "status": "no such status"}, {"$set": {"n": 0}}),
        UpdateOne({"_id": "m00007"}, {"$set": {group: "moved"}, "$unset": {"status": ""}}),
    ]


async def _outcome(coll: Any, ops: list[Any], *, ordered: bool) -> tuple[Any, list[Doc]]:
    from pymongo.errors import BulkWriteError as DriverBulkWriteError

    try:
        result = await coll.bulk_write(ops, ordered=ordered)
        summary: Any = (result.matched_count, result.modified_count, [])
    except DriverBulkWriteError as error:
        details = error.details
        summary = (
            details["nMatched"],
            details["nModified"],
            [(e["index"], e["code"], e["errmsg"]) for e in details["writeErrors"]],
        )
    return summary, await coll.find().sort("_id", 1).to_list()


def _twins(embedded_uri: str, db_name: str) -> tuple[Any, Any, Any]:
    """A client and two collections: one for a command of many updates, one for
    the same updates a command each."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(embedded_uri, tz_aware=False)
    return client, client[db_name]["together"], client[db_name]["apart"]


async def _seed_twins(colls: tuple[Any, Any], docs: list[Doc], group: str, at: str) -> None:
    """The same documents and the same two single-field indexes in both twins."""
    for coll in colls:
        await coll.insert_many(docs)
        await coll.create_index([(group, ASCENDING)])
        await coll.create_index([(at, DESCENDING)])


async def _one_command_each(coll: Any, ops: list[Any], *, ordered: bool) -> Any:
    """The reference: each update in a command of its own, summed up as one
    command would report them."""
    matched = modified = 0
    errors = []
    for index, op in enumerate(ops):
        (m, n, errs), _ = await _outcome(coll, [op], ordered=ordered)
        matched, modified = matched + m, modified + n
        errors += [(index, code, message) for _, code, message in errs]
        if ordered and errs:
            break
    return (matched, modified, errors), await coll.find().sort("_id", 1).to_list()


@pytest.mark.parametrize("ordered", [False, True])
async def test_updates_in_one_command_do_what_they_do_one_command_each(
    embedded_uri: str, db_name: str, ordered: bool
) -> None:
    client, together, apart = _twins(embedded_uri, db_name)
    group, at = fields()
    for coll in (together, apart):
        await seeded(coll, group, at, n=20)
    ops = _update_ops(group, at)

    got = await _outcome(together, ops, ordered=ordered)
    assert got == await _one_command_each(apart, ops, ordered=ordered)
    assert [e[0] for e in got[0][2]] == ([2] if ordered else [2, 4])
    # The index follows the updates made inside the shared transaction.
    moved = await together.find({group: "moved"}).sort("_id", 1).to_list()
    assert [d["_id"] for d in moved] == (["m00003", "m00007"] if not ordered else [])
    await client.close()


async def test_updates_in_one_command_survive_a_restart(private_store: Any) -> None:
    from pymongo import UpdateOne

    client: AsyncMongoClient[Doc] = AsyncMongoClient(private_store.uri)
    items = client.hub.items
    await items.insert_many([{"_id": f"c{i}", "unread": 0} for i in range(50)])
    result = await items.bulk_write(
        [UpdateOne({"_id": f"c{i}"}, {"$inc": {"unread": i + 1}}) for i in range(50)]
    )
    assert result.modified_count == 50
    await client.close()

    client = AsyncMongoClient(await private_store.restart())
    docs = await client.hub.items.find().to_list()
    assert sorted(d["unread"] for d in docs) == list(range(1, 51))
    await client.close()


OLD_LAYOUT_WRITER = """
import asyncio, sys
from mongoeco import AsyncMongoClient
from mongoeco.engines.sqlite import SQLiteEngine

async def main():
    async with AsyncMongoClient(SQLiteEngine(sys.argv[1])) as client:
        items = client.get_database("hub").get_collection("items")
        await items.create_index([("g", 1)])
        await items.create_index([("at", -1)])
        await items.insert_many([{"_id": f"i{i}", "g": i % 4, "at": i} for i in range(40)])

asyncio.run(main())
"""


def _physical_indexes(data_dir: Any) -> dict[str, list[str]]:
    database = data_dir / "hub.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name IN ('documents', 'scalar_index_entries', 'multikey_entries')"
        ).fetchall()
    found: dict[str, list[str]] = {}
    for table, name in rows:
        found.setdefault(table, []).append(name)
    return {table: sorted(names) for table, names in found.items()}


async def test_every_logical_index_shares_one_physical_index_per_entry_table(
    private_store: Any,
) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(private_store.uri)
    db = client.hub
    for name in ("first", "second", "third"):
        await db[name].create_index([("g", ASCENDING)])
        await db[name].create_index([("at", DESCENDING)])
        await db[name].insert_many([{"_id": f"{name}{i}", "g": i % 3, "at": i} for i in range(9)])

    layout = _physical_indexes(private_store.data_dir)
    # No expression index over `documents` (only its primary key), and one index
    # for all entries besides the engine's own index by document.
    assert [n for n in layout.get("documents", []) if not n.startswith("sqlite_autoindex")] == []
    assert layout["scalar_index_entries"] == ["idx_scalar_index_entries_storage", "scidx_hub"]

    # Dropping an index, and a whole collection, leaves the others answering.
    await db.first.drop_index("g_1")
    await db.second.drop()
    assert "scidx_hub" in _physical_indexes(private_store.data_dir)["scalar_index_entries"]
    got = await db.third.find({"g": 1}).sort("at", -1).to_list()
    assert [d["_id"] for d in got] == ["third7", "third4", "third1"]
    assert [d["_id"] for d in await db.first.find({"at": {"$gte": 7}}).to_list()] == [
        "first7",
        "first8",
    ]
    # A hint still works (it is advice: the rows are read without it).
    hinted = await db.third.find({"g": 2}).hint("g_1").to_list()
    assert sorted(d["_id"] for d in hinted) == ["third2", "third5", "third8"]
    await client.close()


async def test_a_store_with_one_physical_index_per_logical_index_is_moved_to_shared_ones(
    private_store: Any,
) -> None:
    await private_store.stop()
    for path in private_store.data_dir.glob("hub.sqlite3*"):
        path.unlink()
    # The engine's own layout, as an earlier version of the hub left it, written
    # in a process of its own (this one may hold the hub's adjustments to it).
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OLD_LAYOUT_WRITER, str(private_store.data_dir / "hub.sqlite3")
    )
    assert await asyncio.wait_for(writer.wait(), 120) == 0
    before = _physical_indexes(private_store.data_dir)
    assert len(before["scalar_index_entries"]) == 3  # the engine's own, and one per index
    assert len(before["documents"]) >= 2

    client: AsyncMongoClient[Doc] = AsyncMongoClient(await private_store.restart())
    after = _physical_indexes(private_store.data_dir)
    assert after["scalar_index_entries"] == ["idx_scalar_index_entries_storage", "scidx_hub"]
    assert [n for n in after.get("documents", []) if not n.startswith("sqlite_autoindex")] == []
    got = await client.hub.items.find({"g": 3}).sort("at", -1).limit(3).to_list()
    assert [d["_id"] for d in got] == ["i39", "i35", "i31"]
    await client.hub.items.insert_one({"_id": "new", "g": 3, "at": 99})
    got = await client.hub.items.find({"at": {"$gt": 38}}).sort("at", -1).to_list()
    assert [d["_id"] for d in got] == ["new", "i39"]
    await client.close()


async def test_updates_of_nested_documents_and_arrays_change_only_what_they_name(
    coll: Any,
) -> None:
    original = {
        "_id": "nested",
        "profile": {"tags": ["a"], "counts": {"in": 1}, "when": BASE},
        "list": [{"k": 1}, {"k": 2}],
    }
    await coll.insert_one(original)
    result = await coll.update_one(
        {"_id": "nested"},
        {
            "$push": {"profile.tags": "b"},
            "$inc": {"profile.counts.in": 2},
            "$set": {"list.1.k": 5, "profile.when": BASE + timedelta(days=1)},
        },
    )
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert await coll.find_one({"_id": "nested"}) == {
        "_id": "nested",
        "profile": {"tags": ["a", "b"], "counts": {"in": 3}, "when": BASE + timedelta(days=1)},
        "list": [{"k": 1}, {"k": 5}],
    }
    # Setting what is already there matches and changes nothing.
    same = await coll.update_one({"_id": "nested"}, {"$set": {"profile.counts.in": 3}})
    assert (same.matched_count, same.modified_count) == (1, 0)
    # An update refused part-way leaves the stored document as it was.
    before = await coll.find_one({"_id": "nested"})
    with pytest.raises(WriteError, match="requires the target field to be numeric"):
        await coll.update_one({"_id": "nested"}, {"$set": {"x": 1}, "$inc": {"profile.tags": 1}})
    assert await coll.find_one({"_id": "nested"}) == before


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_random_updates_in_one_command_leave_documents_and_indexes_as_one_each(
    embedded_uri: str, db_name: str, seed: int
) -> None:
    from pymongo import UpdateOne

    client, together, apart = _twins(embedded_uri, db_name)
    group, at = fields()
    rng = random.Random(seed)
    docs = [
        {"_id": f"d{i:03d}", group: f"c{i % 5}", at: BASE + timedelta(seconds=i), "n": i}
        for i in range(60)
    ]
    await _seed_twins((together, apart), docs, group, at)

    def random_update() -> Any:
        target = f"d{rng.randrange(64):03d}"  # a few match nothing
        choice = rng.randrange(8)
        change: dict[str, Any] = {
            0: {"$set": {group: f"c{rng.randrange(7)}"}},
            1: {"$set": {at: BASE + timedelta(seconds=rng.randrange(100))}, "$inc": {"n": 1}},
            2: {"$unset": {at: ""}},
            3: {"$push": {"log": rng.randrange(9)}},
            4: {"$set": {group: ["an", "array"]}},  # the engine's own path
            5: {"$set": {"sub": {"x": rng.randrange(3)}}, "$inc": {"n": -1}},
            6: {"$set": {at: {"nested": True}}},  # the engine's own path
            7: {"$inc": {group: 1}},  # refused when the value is a string
        }[choice]
        return UpdateOne({"_id": target}, change)

    for _ in range(6):
        ops = [random_update() for _ in range(25)]
        got = await _outcome(together, ops, ordered=False)
        assert got == await _one_command_each(apart, ops, ordered=False)

    for filt in (
        {group: "c3"},
        {group: {"$in": ["c1", "c6"]}},
        {at: {"$gte": BASE + timedelta(seconds=50)}},
        {group: "array"},
    ):
        for sort in ([("_id", 1)], [(at, -1), ("_id", 1)]):
            expected = await apart.find(filt).sort(sort).to_list()
            assert await together.find(filt).sort(sort).to_list() == expected, (filt, sort)
    newest = await apart.find().sort([(at, -1), ("_id", 1)]).limit(10).to_list()
    assert await together.find().sort([(at, -1), ("_id", 1)]).limit(10).to_list() == newest
    await client.close()


def _fresh_codec() -> Any:
    """The engine's codec module as shipped, loaded anew: none of the hub's
    patches reach it."""
    import importlib.util

    from mongoeco.core import codec

    spec = importlib.util.spec_from_file_location("fresh_mongoeco_codec", codec.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    from mongoeco.core.bson_scalars import BsonDouble, BsonInt32, BsonInt64
    from mongoeco.types import ObjectId as EngineObjectId

    kinds = ["str", "int", "big", "float", "bool", "none", "date", "aware", "oid", "eoid", "wrap"]
    if depth < 3:
        kinds += ["dict", "list", "dict"]
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "plain", "ünïcode ✓", "$mongoeco", "a.b"])
    if kind == "int":
        return rng.choice([0, -1, 7, 2**31, -(2**63), 2**63 - 1])
    if kind == "big":
        return rng.choice([2**63, -(2**63) - 1, 2**80])
    if kind == "float":
        return rng.choice([0.0, -2.5, 1e300, float("inf")])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    if kind == "date":
        return BASE + timedelta(microseconds=rng.randrange(10**9))
    if kind == "aware":
        return datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    if kind == "oid":
        return ObjectId()
    if kind == "eoid":
        return EngineObjectId()
    if kind == "wrap":
        return rng.choice([BsonInt32(5), BsonInt64(2**40), BsonDouble(1.5)])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    document = {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    if rng.random() < 0.05:
        document = {"$mongoeco": {"type": "datetime", "value": "2026-01-01T00:00:00"}}
    if rng.random() < 0.05:
        document[3] = "an int key"  # type: ignore[index]
    return document


def _encoded_or_error(encode: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", encode(value)
    except Exception as error:  # compared as (type, message)
        return "error", (type(error).__name__, str(error))


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_plain_encoding_gives_what_the_engines_codec_gives_or_refuses_as_it_does() -> None:
    from mongoeco.core.codec import DocumentCodec

    from hub.store.engine import patch_codec_validation, plain_encode

    reference = _fresh_codec().DocumentCodec.encode
    patch_codec_validation()
    rng = random.Random(11)
    plain = 0
    for _ in range(3000):
        value = {"_id": f"d{rng.randrange(10**6)}", "v": _random_value(rng)}
        expected = _encoded_or_error(reference, value)
        assert _encoded_or_error(DocumentCodec.encode, value) == expected, value
        try:
            got = plain_encode(value)
        except Exception as error:
            assert type(error).__name__ == "_NotPlain"
        else:
            plain += 1
            assert ("ok", got) == expected, value
    assert plain > 1000  # the fast path did take most documents


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_stored_documents_are_decoded_as_the_engines_codec_decodes_them() -> None:
    """`HubSQLiteEngine._deserialize_document` (every stored document the engine
    reads) gives what the engine's own gives, of the same types, with number
    wrappers kept or not; documents with tags it does not decode itself (bytes,
    a Decimal128) are decoded by the engine's codec."""
    from bson.regex import Regex
    from mongoeco.core.codec import DocumentCodec
    from mongoeco.core.json_compat import json_dumps_compact
    from mongoeco.engines.sqlite import SQLiteEngine

    from hub.store.engine import HubSQLiteEngine
    from hub.store.engine.codec import plain_decode

    encode = _fresh_codec().DocumentCodec.encode
    rng = random.Random(31)
    values = [{"_id": f"d{i}", "v": _random_value(rng)} for i in range(3000)]
    others = [{"_id": "b", "v": b"bytes"}, {"_id": "n", "v": [Decimal128("1.5")]}]
    others.append({"_id": "r", "v": {"when": BASE, "re": Regex("^a", "i")}})
    payloads = []
    for value in [*values, *others]:
        outcome, encoded = _encoded_or_error(encode, value)
        if outcome == "ok":  # a value the engine stores
            payloads.append(json_dumps_compact(encoded, sort_keys=False))
    shipped = SQLiteEngine.__new__(SQLiteEngine)
    ours = HubSQLiteEngine.__new__(HubSQLiteEngine)
    shipped._codec = ours._codec = DocumentCodec
    decoded_here = 0
    for payload in payloads:
        for wrappers in (True, False):
            expected = shipped._deserialize_document(payload, preserve_bson_wrappers=wrappers)
            got = ours._deserialize_document(payload, preserve_bson_wrappers=wrappers)
            assert _typed(got) == _typed(expected), payload
        decoded_here += plain_decode(payload) is not None
    assert len(payloads) > 2000
    assert decoded_here > len(payloads) - 100  # the one parse took nearly all
    assert all(plain_decode(json_dumps_compact(encode(v), sort_keys=False)) is None for v in others)


def _typed(value: Any) -> Any:
    """A value with the type of each of its parts, to compare exactly."""
    if isinstance(value, dict):
        return (type(value), [(key, _typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return (type(value), [_typed(item) for item in value])
    return (type(value), repr(value))


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_values_cross_into_the_engine_as_its_own_conversion_takes_them() -> None:
    """`DocumentCodec.to_internal` (every command's filter, update and documents)
    gives what the engine's gives, of the same types, or raises what it raises."""
    from mongoeco.core.codec import DocumentCodec

    from hub.store.engine.codec import patch_codec_validation, plain_internal

    shipped = DocumentCodec.to_internal
    rng = random.Random(23)
    values = [{"_id": f"d{i}", "v": _random_value(rng)} for i in range(3000)]
    values += [[_random_value(rng) for _ in range(3)], {"$set": {"a": BASE}}, "x", 5, None]
    expected = [_encoded_or_error(lambda v: _typed(shipped(v)), v) for v in values]
    patch_codec_validation()
    assert DocumentCodec.to_internal is not shipped
    plain = 0
    for value, outcome in zip(values, expected, strict=True):
        assert _encoded_or_error(lambda v: _typed(DocumentCodec.to_internal(v)), value) == outcome
        plain += _encoded_or_error(plain_internal, value)[0] == "ok"
    assert plain > 1000  # the one walk took most of them
    internal = DocumentCodec.to_internal({"a": [1, {"b": BASE}]})
    assert DocumentCodec.to_internal(internal) is internal


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_wire_decoding_keeps_plain_values_and_converts_the_rest_as_before() -> None:
    from bson import BSON, Decimal128, Int64, Regex, Timestamp
    from bson.binary import Binary
    from mongoeco.wire import bson_bridge, protocol

    from hub.store.engine import patch_wire_decoding

    patch_wire_decoding()
    document = {
        "s": "x",
        "i": 3,
        "l": Int64(5),
        "f": 1.5,
        "b": True,
        "n": None,
        "d": BASE,
        "o": ObjectId(),
        "dec": Decimal128("1.10"),
        "bin": Binary(b"\x00\x01", 0),
        "re": Regex("^a", "i"),
        "ts": Timestamp(5, 1),
        "nested": [{"l": Int64(1), "o": ObjectId()}, [1, "y"]],
    }
    decoded = BSON.encode(document)
    raw = BSON(decoded).decode()
    expected = bson_bridge.decode_wire_value(raw)
    got = protocol.decode_wire_value(raw)
    assert got == expected
    assert type(got["l"]) is type(expected["l"]) and type(got["o"]) is type(expected["o"])
    assert type(got["nested"][0]["l"]) is type(expected["nested"][0]["l"])


@pytest.mark.usefixtures("unpatched_in_the_end")
def test_wire_encoding_keeps_plain_values_and_converts_the_rest_as_before() -> None:
    """An answer as the engine holds it (its own ObjectId, Int64, Decimal128,
    SON... beside plain values, nested) is encoded to the same BSON bytes."""
    from bson import BSON, Regex, Timestamp
    from bson.son import SON
    from mongoeco.types import Decimal128 as EngineDecimal128
    from mongoeco.types import ObjectId as EngineObjectId
    from mongoeco.wire import bson_bridge, protocol

    from hub.store.engine import patch_wire_encoding

    patch_wire_encoding()
    rng = random.Random(5)
    reply = {
        "cursor": {
            "firstBatch": [
                {
                    "_id": EngineObjectId() if i % 2 else f"c{i}",
                    "s": "x",
                    "i": rng.randrange(-(2**40), 2**40),
                    "l": Int64(i),
                    "f": rng.random(),
                    "b": bool(i % 2),
                    "n": None,
                    "d": BASE + timedelta(milliseconds=i),
                    "dec": EngineDecimal128("1.10"),
                    "bdec": Decimal128("2.5"),
                    "re": Regex("^a", "i"),
                    "ts": Timestamp(5, i),
                    "son": SON([("b", 1), ("a", [EngineObjectId(), {"x": Int64(2)}])]),
                    "nested": [{"l": Int64(1), "o": EngineObjectId()}, [1, "y", None]],
                }
                for i in range(20)
            ],
            "id": Int64(0),
            "ns": "hub.items",
        },
        "ok": 1.0,
    }
    assert protocol.encode_wire_value is not bson_bridge.encode_wire_value
    expected = BSON.encode(bson_bridge.encode_wire_value(reply))
    assert BSON.encode(protocol.encode_wire_value(reply)) == expected


def log_writer(path: str) -> sqlite3.Connection:
    """A connection to a new database at `path` in write-ahead-log mode, with one
    table, t (k, v), to write to."""
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    writer.commit()
    return writer


def test_the_checkpointer_copies_the_log_back_while_writes_go_on_and_empties_it_on_stop(
    tmp_path: Any,
) -> None:
    import time

    from hub.store.engine import AUTOCHECKPOINT_PAGES, WalCheckpointer

    path = str(tmp_path / "store.sqlite3")
    writer = log_writer(path)
    writer.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
    checkpointer = WalCheckpointer(path, interval=0.05)
    checkpointer.start()
    try:
        for _ in range(40):  # a few thousand pages: more than SQLite's own 1,000
            writer.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 2000,) for _ in range(100)])
            writer.commit()
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpointer.checkpoints >= 3
        # The writer never checkpoints below AUTOCHECKPOINT_PAGES (8 MB of rows
        # are some 2,000 pages): only the checkpointer can have copied the rows
        # from the log into the database file.
        deadline = time.monotonic() + 10
        while (tmp_path / "store.sqlite3").stat().st_size < 8_000_000:
            assert time.monotonic() < deadline, "the log was not copied back"
            time.sleep(0.02)
    finally:
        checkpointer.stop()
    assert (tmp_path / "store.sqlite3-wal").stat().st_size == 0
    assert writer.execute("SELECT count(*) FROM t").fetchone() == (4000,)
    writer.close()


def test_the_checkpointer_hurries_while_the_log_grows_and_rests_while_it_does_not(
    tmp_path: Any,
) -> None:
    import time

    from hub.store.engine import WalCheckpointer

    path = str(tmp_path / "store.sqlite3")
    writer = log_writer(path)
    # Resting, it would not look again for half a minute.
    checkpointer = WalCheckpointer(path, interval=30, busy_interval=0.01)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 5:
            assert time.monotonic() < deadline, "no pass came while the log grew"
            writer.execute("INSERT INTO t (v) VALUES (?)", ("x" * 2000,))
            writer.commit()
            time.sleep(0.005)
        time.sleep(0.2)  # the log stops growing: one pass sees it, the next rests
        rested = checkpointer.checkpoints
        time.sleep(0.3)
        assert checkpointer.checkpoints <= rested + 1
    finally:
        checkpointer.stop()
    writer.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_set_and_inc_of_top_level_fields_do_in_one_command_what_they_do_one_each(
    embedded_uri: str, db_name: str, seed: int
) -> None:
    """The updates the store applies without compiling them (`SimpleUpdate`),
    and the edges where it hands them back to the compiled path, against the
    engine's own update, one command each."""
    from pymongo import UpdateOne

    client, together, apart = _twins(embedded_uri, db_name)
    group, at = fields()
    rng = random.Random(seed)
    docs = [
        {
            "_id": f"s{i:03d}",
            group: f"c{i % 5}",
            at: BASE + timedelta(seconds=i),
            "n": i,
            "sub": {"a": 1, "b": 2},
            "flag": False,
            "note": None,
        }
        for i in range(40)
    ]
    await _seed_twins((together, apart), docs, group, at)

    def random_update() -> Any:
        target = f"s{rng.randrange(44):03d}"  # a few match nothing
        change: dict[str, Any] = rng.choice(
            [
                {"$set": {group: f"c{rng.randrange(7)}", "note": "x"}, "$inc": {"n": 1}},
                {"$set": {at: BASE + timedelta(milliseconds=rng.randrange(10**6))}},
                {"$set": {"note": None, "flag": False}},  # often as it is: not modified
                {"$inc": {"n": 0}},
                {"$set": {"n": 1.0}},  # an integer becomes a double
                {"$inc": {"n": 2**40}},  # past int32's range
                {"$inc": {"n": -3}},
                {"$set": {"sub": {"b": 2, "a": 1}}},  # the same fields, in another order
                {"$set": {"sub": {"a": 1, "b": 2}}},
                {"$set": {"fresh": rng.randrange(3)}},  # a field the document lacks
                {"$inc": {"missing": 2}},
                {"$inc": {"flag": 1}},  # a boolean: refused
                {"$inc": {"note": 1}},  # a null: refused
                {"$set": {"sub.a": 5}},  # a path: compiled
                {"$set": {group: ["an", "array"]}},  # an indexed array: compiled
                {"$set": {"n": 1}, "$inc": {"n": 1}},  # a conflict: refused
            ]
        )
        return UpdateOne({"_id": target}, change)

    for ordered in (False, True, False):
        ops = [random_update() for _ in range(40)]
        got = await _outcome(together, ops, ordered=ordered)
        expected = await _one_command_each(apart, ops, ordered=ordered)
        assert got == expected
    for filt in ({group: "c3"}, {at: {"$gte": BASE + timedelta(seconds=20)}}):
        expected = await apart.find(filt).sort("_id", 1).to_list()
        assert await together.find(filt).sort("_id", 1).to_list() == expected
    await client.close()


# == each adjusted write path against stock mongoeco =====================================

RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)

STOCK_SERVER = """
import asyncio, sys
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire import AsyncMongoEcoProxyServer

async def main():
    engine = SQLiteEngine(sys.argv[1])
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=0)
    address = await server.start()
    assert not any(name == "hub" or name.startswith("hub.") for name in sys.modules)
    print(f"READY {address.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await server.close()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
async def stock_uri(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A wire server of stock mongoeco on its SQLite engine, in a fresh process."""
    path = tmp_path_factory.mktemp("stock-mongoeco") / "stock.sqlite3"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STOCK_SERVER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(path).parent,  # not the project: nothing of the hub is importable
    )
    assert process.stdin is not None and process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    assert line.startswith(b"READY "), line
    yield f"mongodb://127.0.0.1:{int(line.split()[1])}/?directConnection=true"
    process.stdin.close()
    await asyncio.wait_for(process.wait(), 30)


class HubAndStock:
    """The same database on the hub's store and on stock mongoeco."""

    def __init__(self, hub: AsyncMongoClient[Doc], stock: AsyncMongoClient[Doc], name: str):
        self.hub, self.stock = hub[name], stock[name]

    async def same(
        self, step: Callable[[Any], Coroutine[Any, Any, Any]], *, batch_insert: bool = False
    ) -> Any:
        """`step`'s outcome, the same on both sides. A batch insert's write errors
        are compared by their index, code and message: the hub's batch insert
        reports no `keyPattern` and `keyValue` (the hub reads none)."""
        hub = await _answer(step(self.hub), batch_insert)
        stock = await _answer(step(self.stock), batch_insert)
        assert hub == stock
        return hub

    async def same_documents(self, collection: str, filt: Doc | None = None) -> list[bytes]:
        hub = await _raw_documents(self.hub[collection], filt)
        stock = await _raw_documents(self.stock[collection], filt)
        assert hub == stock, filt
        return hub


@pytest.fixture
async def stores(embedded_uri: str, stock_uri: str, db_name: str) -> AsyncIterator[HubAndStock]:
    hub: AsyncMongoClient[Doc] = AsyncMongoClient(embedded_uri, tz_aware=False)
    stock: AsyncMongoClient[Doc] = AsyncMongoClient(stock_uri, tz_aware=False)
    yield HubAndStock(hub, stock, db_name)
    await stock.drop_database(db_name)
    await hub.close()
    await stock.close()


async def _answer(call: Coroutine[Any, Any, Any], batch_insert: bool = False) -> Any:
    """What a client sees of an operation: its reply, or its error."""
    try:
        result = await call
    except BulkWriteError as error:
        details = dict(error.details)
        if batch_insert:
            details["writeErrors"] = [
                (e["index"], e["code"], e["errmsg"]) for e in details["writeErrors"]
            ]
            return ("error", "BulkWriteError", error.code, details)
        return ("error", "BulkWriteError", error.code, str(error), details)
    except PyMongoError as error:
        details = getattr(error, "details", None)
        return ("error", type(error).__name__, getattr(error, "code", None), str(error), details)
    return ("ok", _reply(result))


def _reply(result: Any) -> Any:
    if isinstance(result, list):
        return [
            document.raw if isinstance(document, RawBSONDocument) else document
            for document in result
        ]
    if hasattr(result, "bulk_api_result"):
        return result.bulk_api_result
    if hasattr(result, "raw_result"):  # an update
        return result.raw_result
    if hasattr(result, "inserted_ids"):
        return ("inserted", result.inserted_ids)
    if hasattr(result, "inserted_id"):
        return ("inserted", result.inserted_id)
    raise AssertionError(f"no reply taken from {result!r}")


async def _raw_documents(collection: Any, filt: Doc | None = None) -> list[bytes]:
    """The documents a filter finds, as their stored BSON, in a stable order."""
    found = await collection.with_options(codec_options=RAW).find(filt or {}).to_list()
    return sorted(document.raw for document in found)


# -- inserts ----------------------------------------------------------------------------

# `_id`s of every kind the engine stores, with those that equal one another
# (numbers of several types, documents holding them): the single insert skips
# the engine's scan for the ones that cannot be equal to another stored key.
IDS_OF_EVERY_KIND: list[Any] = [
    "a",
    "b",
    "",
    ObjectId("650000000000000000000001"),
    1,
    1.0,
    Int64(1),
    Decimal128("1"),
    2.5,
    -0.0,
    0,
    Int64(2**40),
    2**40,
    {"k": 1},
    {"k": 1.0},
    {"k": "1"},
    BASE,
    True,
    None,
]


def _insert_documents(rng: random.Random, count: int) -> list[Doc]:
    documents = []
    for index in range(count):
        document: Doc = {
            "_id": rng.choice([*IDS_OF_EVERY_KIND, f"s{rng.randrange(30)}", ObjectId()]),
            "email": rng.choice(["x@example.com", "y@example.com", None, f"u{index}@example.com"]),
            "n": rng.choice([1, 1.0, Int64(3), 2**31, -(2**63)]),
            "nested": {"tags": ["a", {"deep": [1, 2.5]}], "when": BASE + timedelta(seconds=index)},
        }
        if rng.random() < 0.2:
            del document["email"]
        documents.append(document)
    return documents


async def _with_a_unique_index(stores: HubAndStock, collection: str) -> None:
    for side in (stores.hub, stores.stock):
        await side[collection].create_index([("email", ASCENDING)], unique=True, sparse=True)
        await side[collection].create_index([("n", DESCENDING)])


async def test_single_inserts_give_the_ids_and_duplicate_errors_stock_gives(
    stores: HubAndStock,
) -> None:
    await _with_a_unique_index(stores, "items")
    rng = random.Random(3)
    for identifier in IDS_OF_EVERY_KIND:
        document = {"_id": identifier, "email": f"{identifier!r}@example.com"}
        await stores.same(lambda db, d=document: db.items.insert_one(d))
        # The same id again, and an equal one of another type, each a duplicate.
        await stores.same(lambda db, d=document: db.items.insert_one(dict(d, email=None)))
    errors = 0
    for document in _insert_documents(rng, 120):
        outcome = await stores.same(lambda db, d=document: db.items.insert_one(d))
        errors += outcome[0] == "error"
    assert errors > 20  # duplicates of `_id` and of the unique field were refused
    await stores.same_documents("items")
    for value in (1, 1.0, "a", {"k": 1}, None):
        await stores.same_documents("items", {"_id": value})


@pytest.mark.parametrize("ordered", [True, False])
async def test_batch_inserts_give_the_counts_and_errors_stock_gives(
    stores: HubAndStock, ordered: bool
) -> None:
    await _with_a_unique_index(stores, "items")
    rng = random.Random(5 + ordered)
    first = [{"_id": "a"}, {"_id": 1}]
    await stores.same(lambda db: db.items.insert_many(first, ordered=ordered), batch_insert=True)
    for size in (2, 3, 7, 25, 1):
        for _ in range(4):
            documents = _insert_documents(rng, size)
            await stores.same(
                lambda db, d=documents: db.items.insert_many(d, ordered=ordered),
                batch_insert=True,
            )
        # New ids only: the batch goes in whole, its count as the reply has it.
        fresh = [{"_id": f"new{size}-{i}", "n": i} for i in range(size)]
        outcome = await stores.same(
            lambda db, d=fresh: db.items.bulk_write([InsertOne(x) for x in d], ordered=ordered),
            batch_insert=True,
        )
        assert outcome[1]["nInserted"] == size
    # The bulk API, and a batch that asks to bypass validation (the engine's own path).
    operations = [InsertOne(d) for d in _insert_documents(rng, 10)]
    await stores.same(
        lambda db: db.items.bulk_write(operations, ordered=ordered), batch_insert=True
    )
    documents = _insert_documents(rng, 6)
    await stores.same(
        lambda db: db.items.insert_many(documents, ordered=ordered, bypass_document_validation=True)
    )
    await stores.same_documents("items")


async def test_an_insert_refused_by_the_codec_is_refused_as_stock_refuses_it(
    stores: HubAndStock,
) -> None:
    for bad in (
        [{"_id": "ok2"}, {"_id": "ok3", "$bad": 1}],
        [{"_id": "ok4"}, {"_id": "ok5", "a.b": 1}],
        [{"_id": [1, 2]}, {"_id": "ok6"}],
    ):
        await stores.same(
            lambda db, d=bad: db.items.insert_many(d, ordered=False), batch_insert=True
        )
        await stores.same(lambda db, d=bad: db.items.insert_one(d[-1]))
    await stores.same_documents("items")


# -- updates ----------------------------------------------------------------------------


def _update_documents(count: int) -> list[Doc]:
    return [
        {
            "_id": f"d{i:03d}" if i % 7 else ObjectId(f"6500000000000000000{i:05d}"),
            "g": f"c{i % 5}",
            "at": BASE + timedelta(seconds=i),
            "n": i,
            "big": Int64(i),
            "f": i / 2,
            "sub": {"a": 1, "b": [1, 2]},
            "list": [{"k": 1}, {"k": 2}],
            "flag": False,
            "note": None,
        }
        for i in range(count)
    ]


async def _seeded_on_both(
    stores: HubAndStock, *, unique: bool = False, sparse: bool = False, count: int = 40
) -> list[Any]:
    """A collection of the same documents on both sides, with two single-field
    indexes (the lean path's kind; with `sparse`, the one on `at` sparse and one
    more on `fresh`, a field the updates add), and a unique one besides (which
    keeps the lean path off)."""
    documents = _update_documents(count)
    for side in (stores.hub, stores.stock):
        await side.items.insert_many(documents)
        await side.items.create_index([("g", ASCENDING)])
        await side.items.create_index([("at", DESCENDING)], sparse=sparse)
        if sparse:
            await side.items.create_index([("fresh", ASCENDING)], sparse=True)
        if unique:
            await side.items.create_index([("n", ASCENDING)], unique=True)
    return [d["_id"] for d in documents]


def _target(rng: random.Random, ids: list[Any]) -> Any:
    return rng.choice([*ids, "nobody", ObjectId(), 7])  # a few match nothing


def _operator_update(rng: random.Random) -> Doc:
    """An operator update of every kind the engine compiles, now and then one it
    refuses."""
    return rng.choice(
        [
            {"$set": {"g": f"c{rng.randrange(7)}"}},
            {"$set": {"at": BASE + timedelta(milliseconds=rng.randrange(10**6))}, "$inc": {"n": 1}},
            {"$unset": {"at": ""}},
            {"$set": {"g": ["an", "array"]}},  # an indexed array: the engine's own path
            {"$set": {"at": {"nested": True}}},  # an indexed document: the engine's own path
            {"$push": {"list": {"k": rng.randrange(5)}}},
            {"$push": {"sub.b": {"$each": [3, 4], "$slice": -3}}},
            {"$addToSet": {"sub.b": rng.randrange(4)}},
            {"$pull": {"list": {"k": 1}}},
            {"$pop": {"sub.b": 1}},
            {"$inc": {"sub.a": 2, "big": 1}},
            {"$mul": {"f": 1.5}},
            {"$min": {"n": rng.randrange(50)}},
            {"$max": {"at": BASE + timedelta(seconds=rng.randrange(80))}},
            {"$rename": {"note": "renamed"}},
            {"$set": {"list.1.k": 9, "sub.c": {"d": [1, {"e": None}]}}},
            {"$setOnInsert": {"x": 1}},  # no upsert: nothing to do
            {"$bit": {"n": {"and": 6}}},
            {"$inc": {"g": 1}},  # $inc of a string: refused
            {"$set": {"_id": "changed"}},  # the _id is immutable: refused
            {"$set": {"sub.b.x": 1}},  # a field of an array: refused
            {"$bogus": {"x": 1}},  # not an operator: refused
            {"$set": {}},  # nothing to set: refused
            {"$set": {"n": 5}, "$inc": {"n": 1}},  # a conflict: refused
            {"$set": {"sub": {"a": 1, "b": [1, 2]}}},
        ]
    )


def _simple_update(rng: random.Random) -> Doc:
    """`$set` of plain values and `$inc` by integers on top-level fields (the
    simple path), and the edges where the store hands them to the compiled path."""
    return rng.choice(
        [
            {"$set": {"g": f"c{rng.randrange(7)}", "note": "x"}, "$inc": {"n": 1}},
            {"$set": {"at": BASE + timedelta(milliseconds=rng.randrange(10**6))}},
            {"$set": {"note": None, "flag": False}},  # often as it is: not modified
            {"$inc": {"n": 0}},
            {"$set": {"n": 1.0}},  # an integer becomes a double
            {"$set": {"n": 1}},
            {"$set": {"f": 0.0}},
            {"$set": {"f": -0.0}},
            {"$set": {"flag": 0}},  # not the same as False
            {"$inc": {"n": 2**31}},  # past int32's range
            {"$inc": {"n": -3}},
            {"$inc": {"big": 1}},  # an Int64: the compiled path keeps its type
            {"$inc": {"f": 1}},  # a double: the compiled path
            {"$set": {"sub": {"b": [1, 2], "a": 1}}},  # the same fields, in another order
            {"$set": {"sub": {"a": 1, "b": [1, 2]}}},
            {"$set": {"list": [{"k": 1}, {"k": 2}]}},
            {"$set": {"fresh": rng.randrange(3)}},  # a field the document lacks
            {"$inc": {"missing": 2}},
            {"$inc": {"flag": 1}},  # a boolean: refused
            {"$inc": {"note": 1}},  # a null: refused
            {"$set": {"sub.a": 5}},  # a path: compiled
            {"$set": {"g": ["an", "array"]}},  # an indexed array: compiled
            {"$set": {"g": {"a": 1}}},  # an indexed document: compiled
            {"$set": {"n": 1}, "$inc": {"n": 1}},  # a conflict: refused
            {"$inc": {"n": 1.5}},  # not by an integer: compiled
            {"$set": {"n": Int64(4)}},
            {"$set": {"d": Decimal128("1.5")}},
        ]
    )


async def _compare_index_reads(stores: HubAndStock) -> None:
    """The indexed fields answer as stock's do, after the updates changed them."""
    for filt in (
        {"g": "c3"},
        {"g": {"$in": ["c1", "c6"]}},
        {"g": "array"},
        {"at": {"$gte": BASE + timedelta(seconds=20)}},
        {"at": {"$exists": False}},
        {"fresh": 1},
        {"fresh": {"$in": [0, 2]}},
    ):
        await stores.same_documents("items", filt)
    newest = await stores.same(
        lambda db: (
            db.items.with_options(codec_options=RAW)
            .find()
            .sort([("at", -1), ("_id", 1)])
            .limit(15)
            .to_list()
        )
    )
    assert len(newest[1]) == 15


async def _run_bulk(
    stores: HubAndStock,
    make: Callable[[random.Random], Doc],
    seed: int,
    ids: list[Any],
    ordered: bool,
) -> list[Any]:
    rng = random.Random(seed)
    outcomes = []
    for _ in range(5):
        operations = [UpdateOne({"_id": _target(rng, ids)}, make(rng)) for _ in range(30)]
        outcomes.append(
            await stores.same(lambda db, o=operations: db.items.bulk_write(o, ordered=ordered))
        )
        await stores.same_documents("items")
    return outcomes


@pytest.mark.parametrize("ordered", [False, True])
async def test_the_update_command_of_many_updates_answers_as_stock(
    stores: HubAndStock, ordered: bool
) -> None:
    """A unique index keeps the lean paths off: each update of the batch takes the
    engine's own path, in the one transaction the hub's command opens."""
    ids = await _seeded_on_both(stores, unique=True)
    outcomes = await _run_bulk(stores, _operator_update, 21 + ordered, ids, ordered)
    assert any(o[0] == "error" for o in outcomes)  # refusals reported as stock reports them
    await _compare_index_reads(stores)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
async def test_lean_updates_answer_as_stock(
    stores: HubAndStock, ordered: bool, sparse: bool
) -> None:
    """Plain single-field indexes only, sparse or not: an operator update by `_id`
    takes the lean path (or, when an indexed field holds an array or a document,
    the engine's); a sparse index's entry goes with its field (`$unset`)."""
    ids = await _seeded_on_both(stores, sparse=sparse)
    await _run_bulk(stores, _operator_update, 31 + ordered, ids, ordered)
    await _compare_index_reads(stores)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
async def test_simple_updates_answer_as_stock(
    stores: HubAndStock, ordered: bool, sparse: bool
) -> None:
    """As the lean path; a sparse index gains an entry with its field (`fresh`)."""
    ids = await _seeded_on_both(stores, sparse=sparse)
    await _run_bulk(stores, _simple_update, 41 + ordered, ids, ordered)
    await _compare_index_reads(stores)


def _condition(rng: random.Random) -> Doc:
    """A condition beside the `_id` of a conditional update: what ingest's summary
    asks (the last message only moves forward, a status it changes from) and the
    edges of matching (missing fields, nulls, arrays, dates, types)."""
    return rng.choice(
        [
            {"g": f"c{rng.randrange(7)}"},
            {"g": {"$in": ["c1", "c2"]}},
            {"g": {"$ne": "c0"}},
            {"n": {"$lt": rng.randrange(50)}},
            {"n": {"$gte": 10.5}},
            {"at": {"$lt": BASE + timedelta(seconds=rng.randrange(60))}},
            {"at": None},
            {"note": None},
            {"note": {"$exists": False}},
            {"missing": None},
            {"list.k": 2},
            {"sub.b": 1},
            {"sub.a": {"$ne": 1}},
            {"flag": 0},
            {"big": Int64(3)},
            {
                "$or": [
                    {"sub.a": {"$ne": 1}},
                    {"at": {"$lt": BASE + timedelta(seconds=rng.randrange(60))}},
                ]
            },
            {"$and": [{"g": {"$exists": True}}, {"n": {"$type": "int"}}]},
            {"$expr": {"$gt": ["$n", "$f"]}},
        ]
    )


@pytest.mark.parametrize("ordered", [False, True])
async def test_conditional_updates_by_id_answer_as_stock(
    stores: HubAndStock, ordered: bool
) -> None:
    """An `_id` with more conditions takes the lean path, the whole filter checked
    on the one row: matched, modified and the documents as stock has them."""
    ids = await _seeded_on_both(stores)
    rng = random.Random(71 + ordered)
    for _ in range(6):
        operations = [
            UpdateOne(
                {"_id": _target(rng, ids), **_condition(rng)},
                rng.choice([_operator_update, _simple_update])(rng),
            )
            for _ in range(30)
        ]
        outcome = await stores.same(
            lambda db, o=operations: db.items.bulk_write(o, ordered=ordered)
        )
        if outcome[0] != "error":
            assert 0 < outcome[1]["nMatched"] < 30  # some conditions held, some did not
        await stores.same_documents("items")
    await _compare_index_reads(stores)


@contextlib.asynccontextmanager
async def update_patched_engine(path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """An engine of the hub's in this process, with the hub's update command
    (undone after: other tests compare with stock in process); it and its `hub`
    database."""
    from mongoeco import AsyncMongoClient as EngineClient
    from mongoeco.api._async import _database_admin_write_commands as write_commands

    from hub.store.engine import HubSQLiteEngine, patch_update_command

    service = write_commands.DatabaseAdminWriteCommandService
    stock_update = service.command_update
    patch_update_command()
    engine = HubSQLiteEngine(str(path))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        yield engine, client["hub"]
    finally:
        service.command_update = stock_update
        await client.close()


def record_calls(engine: Any, names: tuple[str, ...]) -> list[str]:
    """The names of these methods of `engine`, in the order they are called from now."""
    calls: list[str] = []
    for name in names:
        original = getattr(engine, name)

        def recording(*args: Any, name: str = name, original: Any = original) -> Any:
            calls.append(name)
            return original(*args)

        setattr(engine, name, recording)
    return calls


async def test_a_conditional_update_by_id_reads_one_row_and_takes_the_simple_path(
    tmp_path: Path,
) -> None:
    """Ingest's conditional summary update (`_id` and an `$or`, `$set` of plain
    values) is applied by the simple path: no read plan is compiled for it, the
    update is not compiled (neither lean path nor the engine's own update is
    called), its filter matched on the one row read. Run in process, the
    engine's calls are recorded."""
    async with update_patched_engine(tmp_path / "store.sqlite") as (engine, db):
        await db.conversations.insert_many(_update_documents(40))
        await db.conversations.create_index([("at", DESCENDING)])
        await db.conversations.create_index([("g", ASCENDING)])
        calls = record_calls(
            engine, ("_compile_read_execution_plan", "_hub_engine_update", "_hub_lean_update")
        )
        later = {"$lt": BASE + timedelta(seconds=20)}
        moves = [{"sub.a": {"$ne": 1}}, {"at": later}]
        reply = await db.command(
            {
                "update": "conversations",
                "updates": [
                    {"q": {"_id": f"d{i:03d}", "$or": moves}, "u": {"$set": {"g": "moved"}}}
                    for i in (1, 2, 30, 31)
                ],
                "ordered": False,
            }
        )
    assert (reply["n"], reply["nModified"]) == (2, 2)  # d001 and d002 are older than 20 s
    assert calls == []


@pytest.mark.parametrize("ordered", [False, True])
async def test_simple_updates_beside_other_indexes_answer_as_stock(
    stores: HubAndStock, ordered: bool
) -> None:
    """Beside the plain indexes, a unique, a sparse and a nested field's index (as
    the messages' text, sparse and nested ones): an update that leaves their
    fields alone takes the simple path, one that touches them the engine's own,
    and both answer, keep the indexes and refuse duplicates as stock does."""
    ids = await _seeded_on_both(stores, unique=True)
    for side in (stores.hub, stores.stock):
        await side.items.create_index([("note", ASCENDING)], sparse=True)
        await side.items.create_index([("sub.a", ASCENDING)])
    outcomes = await _run_bulk(stores, _simple_update, 71 + ordered, ids, ordered)
    assert any(o[0] == "error" for o in outcomes)  # `n` set to a value another has
    await _compare_index_reads(stores)
    for filt in ({"n": 5}, {"note": "x"}, {"note": None}, {"sub.a": 1}):
        await stores.same_documents("items", filt)


def _missing_fields_update(rng: random.Random) -> Doc:
    """`$set` and `$inc` of fields a document lacks, several at once, in both
    orders of the operators, digit-only names among them: the simple path adds
    them where stock adds them (raw documents compared: their order counts)."""
    return rng.choice(
        [
            {"$set": {"z": 1, "b": 2, "m": 3}},
            {"$inc": {"z": 1, "b": 2}},
            {"$inc": {"y": 0}},  # a missing field set to 0: modified
            {"$set": {"z": 1}, "$inc": {"b": 2}},
            {"$inc": {"z": 1}, "$set": {"b": 2}},
            {"$inc": {"y": 1, "n": 1}, "$set": {"x": 1, "a": 3, "note": "x"}},
            {"$set": {"10": 1, "9": 2, "b": 3, "A": 4}},
            {"$inc": {"10": 1, "2": 1}, "$set": {"k": 1}},
            {"$set": {"g": f"c{rng.randrange(7)}", "q": 1}, "$inc": {"r": -2}},
            {"$inc": {"big": 1, "w": 1}},  # an Int64 stored: the compiled path
            {"$inc": {"w": 2**40}},  # past int32's range
        ]
    )


@pytest.mark.parametrize("ordered", [False, True])
async def test_set_and_inc_of_missing_fields_add_them_as_stock_does(
    stores: HubAndStock, ordered: bool
) -> None:
    ids = await _seeded_on_both(stores)
    await _run_bulk(stores, _missing_fields_update, 81 + ordered, ids, ordered)
    await _compare_index_reads(stores)


def _summary_condition(rng: random.Random) -> Doc:
    """Ingest's summary conditions (the last message only moves forward; a status
    it changes from), on documents whose fields are missing, null, arrays or of
    other types, and conditions beside them the simple path matches."""
    later = {"$lt": BASE + timedelta(seconds=rng.randrange(60))}
    return rng.choice(
        [
            {"$or": [{"last.direction": {"$ne": "in"}}, {"at": later}]},
            {"$or": [{"sub.a": {"$ne": 1}}, {"at": later}]},
            {"status": "resolved"},
            {"status": {"$in": ["snoozed", None]}},
            {"g": {"$nin": ["c1", "c2"]}, "n": {"$gte": rng.randrange(40)}},
            {"$and": [{"note": {"$exists": False}}, {"at": {"$lte": later["$lt"]}}]},
            {"$nor": [{"g": "c1"}, {"list.k": 2}]},
            {"list": {"k": 1}},
            {"at": {"$gt": BASE, "$lt": later["$lt"]}},
            {"n": {"$in": []}},
            {"$or": []},  # refused by the engine: reported as stock reports it
            {"n": {"$regex": "1"}},  # not a plain condition: the compiled path
        ]
    )


def _summary_update(rng: random.Random) -> Doc:
    """The summary's changes: the last message (a document holding a date) and
    the time moved forward; the status, counts and times set."""
    at = BASE + timedelta(seconds=rng.randrange(80))
    return rng.choice(
        [
            {"$set": {"last": {"id": "m1", "text": "hi", "direction": "in", "at": at}, "at": at}},
            {"$set": {"status": "open", "note": None}, "$inc": {"unread": 1, "inbound": 1}},
            {"$set": {"status": "pending", "bot": "b1", "bot_since": at}},
            {"$set": {"status": "open"}},
        ]
    )


@pytest.mark.parametrize("ordered", [False, True])
async def test_summary_shaped_conditional_updates_answer_as_stock(
    stores: HubAndStock, ordered: bool
) -> None:
    """Conditional updates of `$set`/`$inc` (the simple path, the filter beside
    the `_id` matched by the engine's matcher) answer, and leave the documents
    and their index entries, as stock's."""
    documents = _update_documents(40)
    for index, document in enumerate(documents):
        if index % 3 == 0:
            document["last"] = {"direction": _direction(index), "at": BASE}
        if index % 4 == 0:
            document["status"] = ["resolved", "snoozed", None, 1][index % 16 // 4]
    ids = [d["_id"] for d in documents]
    for side in (stores.hub, stores.stock):
        await side.items.insert_many(documents)
        await side.items.create_index([("g", ASCENDING)])
        await side.items.create_index([("at", DESCENDING)])
        await side.items.create_index([("status", ASCENDING)])
    rng = random.Random(91 + ordered)
    matched = 0
    for _ in range(6):
        operations = [
            UpdateOne({"_id": _target(rng, ids), **_summary_condition(rng)}, _summary_update(rng))
            for _ in range(30)
        ]
        outcome = await stores.same(
            lambda db, o=operations: db.items.bulk_write(o, ordered=ordered)
        )
        matched += (outcome[1] if outcome[0] == "ok" else outcome[-1])["nMatched"]
        await stores.same_documents("items")
    assert matched > 0
    await _compare_index_reads(stores)
    for filt in ({"status": "open"}, {"status": None}, {"status": "pending"}):
        await stores.same_documents("items", filt)


def _direction(index: int) -> Any:
    return ["in", "out", None, ["in"]][index % 4]


async def test_an_increment_of_a_missing_field_takes_the_simple_path(tmp_path: Path) -> None:
    """A conversation opened before a count was kept (no `inbound` yet) is
    summarised by the simple path, not compiled: its `$inc` sets the field."""
    async with update_patched_engine(tmp_path / "store.sqlite") as (engine, db):
        await db.conversations.insert_many([{"_id": f"c{i}", "unread": 0} for i in range(3)])
        await db.conversations.create_index([("status", ASCENDING)])
        calls = record_calls(engine, ("_hub_lean_update",))
        change = {"$set": {"status": "open"}, "$inc": {"unread": 1, "inbound": 1}}
        reply = await db.command(
            {
                "update": "conversations",
                "updates": [{"q": {"_id": f"c{i}"}, "u": change} for i in range(3)],
            }
        )
        stored = await db.conversations.find().sort("_id", 1).to_list()
    assert (reply["n"], reply["nModified"]) == (3, 3)
    assert calls == []
    assert [list(d.items()) for d in stored] == [
        [("_id", f"c{i}"), ("unread", 1), ("status", "open"), ("inbound", 1)] for i in range(3)
    ]


def _entry_rows(database: Path) -> list[tuple[int, str]]:
    """The rowid and storage key of every scalar index entry of a store."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT rowid, storage_key FROM scalar_index_entries ORDER BY rowid"
        ).fetchall()


async def test_two_simple_updates_of_one_document_read_and_write_it_once(
    tmp_path: Path,
) -> None:
    """Ingest's summary of a conversation (its last message if newer, then its
    counts) is two updates in one command: the document is read once and
    written once, with both applied and its index entries as they end (a
    changed one changed in place: the same row); an update by another path
    between them sees the first one written."""
    async with update_patched_engine(tmp_path / "store.sqlite") as (engine, db):
        await db.conversations.create_index([("last_activity_at", DESCENDING)])
        await db.conversations.insert_many(
            [{"_id": f"c{i}", "last_activity_at": BASE, "unread": 0} for i in range(2)]
        )
        entries_before = _entry_rows(tmp_path / "store.sqlite")
        calls = record_calls(engine, ("_hub_stored_document", "_hub_rewrite"))
        later = BASE + timedelta(seconds=5)
        summary = [
            {
                "q": {"_id": "c0", "last_activity_at": {"$lt": later}},
                "u": {"$set": {"last_activity_at": later}},
            },
            {"q": {"_id": "c0"}, "u": {"$set": {"status": "open"}, "$inc": {"unread": 1}}},
        ]
        reply = await db.command({"update": "conversations", "updates": summary})
        assert (reply["n"], reply["nModified"]) == (2, 2)
        assert calls == ["_hub_stored_document", "_hub_rewrite"]
        newest = await db.conversations.find({"last_activity_at": {"$gte": later}}).to_list()
        assert newest == [{"_id": "c0", "last_activity_at": later, "unread": 1, "status": "open"}]
        assert await db.conversations.find({"last_activity_at": BASE}).to_list() == [
            {"_id": "c1", "last_activity_at": BASE, "unread": 0}
        ]

        between = [
            {"q": {"_id": "c1"}, "u": {"$inc": {"unread": 1}}},
            {"q": {"_id": "c1"}, "u": {"$push": {"tags": "vip"}}},  # compiled: reads c1
            {"q": {"_id": "c1"}, "u": {"$inc": {"unread": 1}}},
        ]
        reply = await db.command({"update": "conversations", "updates": between})
        assert (reply["n"], reply["nModified"]) == (3, 3)
        assert await db.conversations.find_one({"_id": "c1"}) == {
            "_id": "c1",
            "last_activity_at": BASE,
            "unread": 2,
            "tags": ["vip"],
        }
    # The changed entry was changed in place: the same rows, c0's with its new key.
    assert len(entries_before) == 2
    assert _entry_rows(tmp_path / "store.sqlite") == entries_before


async def test_a_batch_insert_deletes_no_entries_of_new_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch insert writes each new document's entries without first deleting
    entries of its storage key (there are none: a deleted document's went with
    it), and a document inserted again where one was deleted is found by its
    new values only; a caller's documents are not changed by the insert."""
    import mongoeco.engines.sqlite as sqlite_engine
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine, patch_insert_batch

    monkeypatch.setattr(
        sqlite_engine, "_sqlite_insert_document_batch", sqlite_engine._sqlite_insert_document_batch
    )
    patch_insert_batch()
    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    deletes = record_calls(
        engine,
        ("_delete_scalar_entries_for_storage_key", "_delete_multikey_entries_for_storage_key"),
    )
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        items = client["hub"].items
        await items.create_index([("g", ASCENDING)])
        await items.create_index([("tags", ASCENDING)])  # multikey
        documents = [{"_id": f"a{i}", "g": f"old{i}", "tags": ["x", f"t{i}"]} for i in range(4)]
        await items.insert_many(documents)
        assert documents[0] == {"_id": "a0", "g": "old0", "tags": ["x", "t0"]}
        assert deletes == []
        await items.delete_many({"_id": {"$in": ["a0", "a1"]}})
        await items.insert_many([{"_id": "a0", "g": "new0"}, {"_id": "a1", "g": "new1"}])
        assert await items.find({"g": "old0"}).to_list() == []
        assert await items.find({"tags": "t1"}).to_list() == []
        assert [d["_id"] for d in await items.find({"tags": "x"}).to_list()] == ["a2", "a3"]
        assert await items.find({"g": "new1"}).to_list() == [{"_id": "a1", "g": "new1"}]
    finally:
        await client.close()


async def test_a_set_of_a_sparse_indexed_field_takes_the_simple_path(tmp_path: Path) -> None:
    """A sent message gains its provider's key (a sparse index: inbound messages,
    without one, have no entry) by the simple path, not compiled; its entry is
    made then, and found."""
    async with update_patched_engine(tmp_path / "store.sqlite") as (engine, db):
        await db.messages.create_index([("provider_key", ASCENDING)], sparse=True)
        await db.messages.create_index([("text", "text")], default_language="none")
        await db.messages.insert_many(
            [{"_id": f"m{i}", "text": "hi", "status": "queued"} for i in range(3)]
        )
        calls = record_calls(engine, ("_hub_lean_update", "_hub_engine_update"))
        reply = await db.command(
            {
                "update": "messages",
                "updates": [
                    {"q": {"_id": f"m{i}"}, "u": {"$set": {"status": "sent", "provider_key": key}}}
                    for i, key in enumerate(("k0", "k1"))
                ],
            }
        )
        found = await db.messages.find({"provider_key": "k1"}).to_list()
        none = await db.messages.find({"provider_key": None}).to_list()
    assert (reply["n"], reply["nModified"]) == (2, 2)
    assert calls == []
    assert found == [{"_id": "m1", "text": "hi", "status": "sent", "provider_key": "k1"}]
    assert [d["_id"] for d in none] == ["m2"]


async def test_simple_updates_on_an_unindexed_collection_answer_as_stock(
    stores: HubAndStock,
) -> None:
    documents = _update_documents(30)
    for side in (stores.hub, stores.stock):
        await side.items.insert_many(documents)
    await _run_bulk(stores, _simple_update, 51, [d["_id"] for d in documents], False)


async def test_updates_one_command_each_answer_as_stock(stores: HubAndStock) -> None:
    """One update a command (the engine's own command), multi-document updates and
    upserts: operators the engine cannot write as SQL are refused by its SQL
    translation before it walks the document, and the engine's Python path
    applies them; each update copies only the document's containers."""
    ids = await _seeded_on_both(stores)
    rng = random.Random(61)
    for _ in range(60):
        target, change = _target(rng, ids), _operator_update(rng)
        await stores.same(lambda db, t=target, c=change: db.items.update_one({"_id": t}, c))
    for _ in range(20):
        change = _operator_update(rng)
        filt = rng.choice([{"g": "c1"}, {"n": {"$lt": 10}}, {}, {"g": "nothing"}])
        await stores.same(lambda db, f=filt, c=change: db.items.update_many(f, c))
    for _ in range(20):
        target, change = rng.choice(["up1", "up2", 8, ObjectId()]), _simple_update(rng)
        await stores.same(
            lambda db, t=target, c=change: db.items.update_one({"_id": t}, c, upsert=True)
        )
    mixed = [
        UpdateMany({"g": "c2"}, {"$inc": {"n": 1}}),
        UpdateOne({"_id": "up1"}, {"$set": {"z": 1}}, upsert=True),
        UpdateOne({"_id": ids[3]}, {"$push": {"list": 1}}),
    ]
    await stores.same(lambda db: db.items.bulk_write(mixed))
    await stores.same_documents("items")
    await _compare_index_reads(stores)


async def test_an_update_refused_part_way_leaves_the_document_as_stock_does(
    stores: HubAndStock,
) -> None:
    ids = await _seeded_on_both(stores, count=8)
    for change in (
        {"$set": {"x": 1}, "$inc": {"sub.b": 1}},
        {"$push": {"list": 3}, "$inc": {"note": 1}},
        {"$set": {"sub.a": 2}, "$rename": {"list": "list.k"}},
    ):
        for target in ids[:3]:
            await stores.same(lambda db, t=target, c=change: db.items.update_one({"_id": t}, c))
        batch = [UpdateOne({"_id": t}, change) for t in ids[3:6]]
        await stores.same(lambda db, b=batch: db.items.bulk_write(b, ordered=False))
    await stores.same_documents("items")


@pytest.mark.xfail(
    strict=True,
    reason="a known difference, kept as it was: an update past int64's range fails the "
    "whole command in both, and the hub's store, which runs the command's updates in one "
    "transaction, keeps none of them, where stock mongoeco keeps those before it",
)
async def test_an_update_past_int64_in_a_command_of_many_leaves_what_stock_leaves(
    stores: HubAndStock,
) -> None:
    ids = await _seeded_on_both(stores, count=4)
    batch = [
        UpdateOne({"_id": ids[1]}, {"$set": {"note": "before"}}),
        UpdateOne({"_id": ids[2]}, {"$inc": {"n": 2**63 - 2}}),
        UpdateOne({"_id": ids[3]}, {"$set": {"note": "after"}}),
    ]
    outcome = await stores.same(lambda db: db.items.bulk_write(batch, ordered=False))
    assert outcome[:2] == ("error", "OperationFailure")
    assert "int64 range" in outcome[3]
    await stores.same_documents("items")


# == the check of the installed mongoeco ================================================

STOCK_ENGINE = "mongoeco.engines.sqlite:SQLiteEngine"


@pytest.fixture
def compat() -> Any:
    """The engine's check of the installed mongoeco (imported when a test asks)."""
    from hub.store.engine import compat

    return compat


def test_the_installed_mongoeco_is_the_one_the_engine_was_written_for(compat: Any) -> None:
    assert compat.check_mongoeco() == []


@pytest.mark.parametrize("version", ["4.12.0", "4.10.9", "5.0.0", "4.1.1"])
def test_another_version_is_refused_and_named(version: str, compat: Any) -> None:
    assert compat.check_mongoeco(version=version) == [
        f"mongoeco {version} installed, the hub's engine was written for 4.11.x"
    ]


def test_another_patch_release_is_checked_name_by_name(compat: Any) -> None:
    assert compat.check_mongoeco(version="4.11.9") == []
    gone = f"{STOCK_ENGINE}._hub_no_such_method"
    assert compat.check_mongoeco(version="4.11.9", names=(*compat.NAMES, gone)) == [
        "mongoeco.engines.sqlite.SQLiteEngine._hub_no_such_method no longer exists"
    ]


def test_a_name_that_does_not_exist_is_named(compat: Any) -> None:
    names = (
        *compat.NAMES,
        f"{STOCK_ENGINE}._hub_no_such_method",
        "mongoeco.engines.sqlite:_hub_no_such_function",
        "mongoeco.engines._hub_no_such_module:anything",
        "mongoeco.core.codec:DocumentCodec._hub_no_such_attribute",
    )
    assert compat.check_mongoeco(names=names) == [
        "mongoeco.engines.sqlite.SQLiteEngine._hub_no_such_method no longer exists",
        "mongoeco.engines.sqlite._hub_no_such_function no longer exists",
        "mongoeco.engines._hub_no_such_module no longer exists",
        "mongoeco.core.codec.DocumentCodec._hub_no_such_attribute no longer exists",
    ]


def test_a_method_the_engine_overrides_or_calls_that_is_gone_is_named(
    monkeypatch: pytest.MonkeyPatch,
    compat: Any,
) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine

    monkeypatch.delattr(SQLiteEngine, "_storage_key")
    monkeypatch.delattr(SQLiteEngine, "_backfill_scalar_indexes_sync")
    problems = compat.check_mongoeco()
    assert "mongoeco.engines.sqlite.SQLiteEngine._storage_key no longer exists" in problems
    assert (
        "mongoeco.engines.sqlite.SQLiteEngine._backfill_scalar_indexes_sync no longer exists"
        in problems
    )


def test_a_module_attribute_the_engine_replaces_that_is_gone_is_named(
    monkeypatch: pytest.MonkeyPatch,
    compat: Any,
) -> None:
    from mongoeco.engines import results

    monkeypatch.delattr(results, "deepcopy")
    assert compat.check_mongoeco() == ["mongoeco.engines.results.deepcopy no longer exists"]


def test_changed_parameters_are_named(monkeypatch: pytest.MonkeyPatch, compat: Any) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine

    def begin_write(self: object, conn: object) -> None: ...

    monkeypatch.setattr(SQLiteEngine, "_begin_write", begin_write)
    assert compat.check_mongoeco() == [
        "mongoeco.engines.sqlite.SQLiteEngine._begin_write now takes (self, conn), "
        "the hub's engine was written for (self, conn, context)"
    ]


def test_a_field_that_is_gone_is_named(compat: Any) -> None:
    fields = {**compat.FIELDS, "mongoeco.types:UpdateResult": ("matched_count", "hub_no_such")}
    assert compat.check_mongoeco(fields=fields) == [
        "mongoeco.types.UpdateResult no longer has the field 'hub_no_such'"
    ]


def test_an_instance_attribute_no_longer_set_is_named(compat: Any) -> None:
    attributes = {**compat.INSTANCE_ATTRIBUTES, STOCK_ENGINE: ("_path", "_hub_no_such")}
    assert compat.check_mongoeco(instance_attributes=attributes) == [
        "mongoeco.engines.sqlite.SQLiteEngine no longer sets self._hub_no_such"
    ]


def test_sql_the_engine_no_longer_has_is_named(compat: Any) -> None:
    statement = "CREATE TABLE IF NOT EXISTS documents ( db_name TEXT NOT NULL, hub_gone TEXT )"
    sql = {"mongoeco.engines.sqlite": (*compat.SQL["mongoeco.engines.sqlite"], statement)}
    assert compat.check_mongoeco(sql=sql) == [
        f"mongoeco.engines.sqlite no longer has {statement!r}"
    ]


def test_an_index_statement_added_or_gone_is_named(compat: Any) -> None:
    module = "mongoeco.engines._sqlite_index_runtime"
    known = compat.INDEX_STATEMENTS[module]
    fewer = {**compat.INDEX_STATEMENTS, module: known[1:]}
    assert compat.check_mongoeco(index_statements=fewer) == [
        f"{module} has an index statement the hub's HubConnection does not know: {known[0]!r}"
    ]
    more = {**compat.INDEX_STATEMENTS, module: (*known, 'CREATE INDEX "x" ON documents (y)')}
    assert compat.check_mongoeco(index_statements=more) == [
        f"{module} no longer has the index statement 'CREATE INDEX \"x\" ON documents (y)', "
        "which the hub's HubConnection rewrites"
    ]


def test_a_changed_copy_is_named(compat: Any) -> None:
    name = f"{STOCK_ENGINE}._create_sqlite_connection"
    copied = {**compat.COPIED, name: "0000000000000000"}
    (problem,) = compat.check_mongoeco(copied=copied)
    assert problem.startswith(
        "mongoeco.engines.sqlite.SQLiteEngine._create_sqlite_connection has changed"
    )
    assert problem.endswith(f"its source digest is {compat.COPIED[name]}, was 0000000000000000)")


def test_the_error_is_an_import_error_naming_every_problem(compat: Any) -> None:
    error = compat.IncompatibleMongoeco(["first thing", "second thing"])
    assert isinstance(error, ImportError)
    assert "first thing; second thing" in str(error)
    assert error.problems == ["first thing", "second thing"]


FAKE_VERSION = """
import importlib.metadata, sys
real = importlib.metadata.version
importlib.metadata.version = lambda name: "4.12.0" if name == "mongoeco" else real(name)
import mongoeco.engines.sqlite as sqlite_engine
from mongoeco.engines._sqlite_outbox import append_change
try:
    import hub.store.engine
except ImportError as error:
    print(type(error).__name__, error)
    # Refused before any adjustment was made to mongoeco.
    print("untouched" if sqlite_engine._sqlite_append_change is append_change else "patched")
    sys.exit(0)
sys.exit("the engine loaded on mongoeco 4.12.0")
"""


def test_the_engine_refuses_to_load_on_another_version_before_patching_anything() -> None:
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", FAKE_VERSION], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("IncompatibleMongoeco ")
    assert "mongoeco 4.12.0 installed, the hub's engine was written for 4.11.x" in done.stdout
    assert done.stdout.rstrip().endswith("untouched")


# -- the lists cover what the engine uses ---------------------------------------------


def _engine_modules(compat: Any) -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text())
        for path in sorted(Path(compat.__file__).parent.glob("*.py"))
        if path.stem != "compat"
    }


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _listed(compat: Any, name: str) -> bool:
    """Whether `module:attribute` (or anything of it, for a module) is checked."""
    return any(
        entry == name or entry.startswith((f"{name}.", f"{name.replace(':', '.')}:"))
        for entry in compat.NAMES
    )


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a module or function, but not those of the functions in it."""
    found: list[ast.AST] = []
    pending = list(ast.iter_child_nodes(scope))
    while pending:
        node = pending.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pending.extend(ast.iter_child_nodes(node))
    return found


def test_every_mongoeco_name_the_engine_imports_or_reads_off_a_module_is_checked(
    compat: Any,
) -> None:
    unchecked = []
    for module_name, tree in _engine_modules(compat).items():
        aliases: dict[str, str] = {}  # local name -> mongoeco module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mongoeco"):
                for alias in node.names:
                    local = alias.asname or alias.name
                    if _is_module(f"{node.module}.{alias.name}"):
                        aliases[local] = f"{node.module}.{alias.name}"
                    elif not _listed(compat, f"{node.module}:{alias.name}"):
                        unchecked.append(f"{module_name}: {node.module}:{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("mongoeco") and alias.asname:
                        aliases[alias.asname] = alias.name
        for scope in ast.walk(tree):
            if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            # A name a function assigns is its own there, not the module it imported.
            local = {
                node.id
                for node in _own_nodes(scope)
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
            }
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local |= {arg.arg for arg in ast.walk(scope.args) if isinstance(arg, ast.arg)}
            for node in _own_nodes(scope):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                    and node.value.id not in local
                    and not node.attr.startswith("_hub_")
                ):
                    name = f"{aliases[node.value.id]}:{node.attr}"
                    if not _listed(compat, name):
                        unchecked.append(f"{module_name}: {name}")
    assert unchecked == []


def test_every_engine_method_the_adjustments_call_or_override_is_checked(compat: Any) -> None:
    """Each `self._x` and `super()._x` in the engine's classes that the hub does
    not define itself is a name of mongoeco's engine: it must be in the lists."""
    from mongoeco.engines.sqlite import SQLiteEngine

    defined: set[str] = set()
    used: set[str] = set()
    for tree in _engine_modules(compat).values():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            # The engine's classes (not its connection or its catalog runtime,
            # whose names of mongoeco are listed by hand).
            if not (cls.name.startswith("Hub") and cls.name.endswith("Engine")):
                continue
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if node in cls.body and hasattr(SQLiteEngine, node.name):
                        used.add(node.name)  # an override of the engine's method
                    else:
                        defined.add(node.name)
                elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                    owner = node.value
                    on_self = isinstance(owner, ast.Name) and owner.id == "self"
                    on_super = (
                        isinstance(owner, ast.Call)
                        and isinstance(owner.func, ast.Name)
                        and owner.func.id == "super"
                    )
                    if on_self or on_super:
                        used.add(node.attr)
    used -= {name for name in used if name.startswith("_hub")} | defined
    used -= {"__init__"}
    listed = set(compat.INSTANCE_ATTRIBUTES[STOCK_ENGINE])
    unchecked = sorted(
        name
        for name in used
        if name not in listed and not _listed(compat, f"{STOCK_ENGINE}.{name}")
    )
    assert unchecked == []
    assert used >= {"_update_with_operation_sync", "_create_sqlite_connection", "_lock"}


# -- a miss reads no collection --------------------------------------------------


async def test_find_one_that_finds_nothing_seeks_and_never_reads_the_collection(
    tmp_path: Path,
) -> None:
    """A first message's lookups (its identity, its conversation) miss: the engine's
    `find_one` then falls back from its first-row fast path to a full read plan,
    which read every document of the collection until the seek answered it too.
    Run in process, the plans the engine compiles are recorded."""
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine

    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        coll = client["hub"]["identities"]
        await coll.insert_many(
            [{"_id": f"phone:+1555{i:07d}", "owner": f"c{i}"} for i in range(200)]
        )
        await coll.create_index([("owner", ASCENDING)])
        plans: list[tuple[Any, str]] = []
        compile_plan = engine._compile_read_execution_plan

        def recording(*args: Any, **kwargs: Any) -> Any:
            plan = compile_plan(*args, **kwargs)
            plans.append((kwargs.get("select_clause"), plan.strategy))
            return plan

        engine._compile_read_execution_plan = recording  # type: ignore[method-assign]
        assert await coll.find_one({"_id": "phone:+19999999999"}) is None
        assert await coll.find_one({"_id": "phone:+19999999999"}, {"owner": 1}) is None
        assert await coll.find_one({"owner": "nobody"}) is None
        assert (await coll.find_one({"_id": "phone:+15550000007"}))["owner"] == "c7"
    finally:
        await client.close()
    misses = [plan for plan in plans if plan[0] == "storage_key, document"]
    assert misses, "the fallback after the fast path was not taken: nothing was checked"
    assert {strategy for _, strategy in plans} == {"hub-index-seek"}


# -- a search for plain text reads the rows that hold it --------------------------------

# Contacts as a search meets them: plain ones, and every way a row's JSON may spell
# a match otherwise (an escape, a character past ASCII, the Kelvin sign that
# `re`'s case-insensitive `k` matches), or hold the text where it is no match.
SEARCHED: list[Doc] = [
    *({"_id": f"c{i}", "name": f"Customer {i}", "phones": [f"+1555100{i:04d}"]} for i in range(60)),
    {"_id": "ann", "name": "Ann Ünal", "emails": ["ann@example.com"]},
    {"_id": "kelvin", "name": "\u212aate Moss"},
    {"_id": "quote", "name": 'Dan "the man" O\'Brien'},
    {"_id": "slash", "name": "back\\slash Kate"},
    {"_id": "line", "name": "kate\nnewline"},
    {"_id": "number", "name": 1555100, "phones": "+15551000001"},
    {"_id": "nested", "name": "Nobody", "attributes": {"note": "kate"}},
    {"_id": "nameless", "phones": ["+44 20 7946 0000"], "emails": []},
    {"_id": "upper", "name": "KATE BUSH", "labels": ["Kate"]},
]


def _search(q: str, *, fold: bool = True) -> Doc:
    pattern = {"$regex": re.escape(q), "$options": "i" if fold else ""}
    return {"$or": [{"name": pattern}, {"emails": pattern}, {"phones": pattern}]}


SEARCHES: list[Doc] = [
    _search("kate"),
    _search("Kate", fold=False),
    _search("ünal"),
    _search('"the man"'),
    _search("back\\slash"),
    _search("1555100"),
    _search("+1555100001"),
    _search("example.com"),
    _search("44 20"),
    _search("zzz"),
    _search(""),
    {"name": {"$regex": re.escape("customer 1"), "$options": "i"}, "phones": {"$size": 1}},
    {"attributes.note": {"$regex": "kat", "$options": "i"}},
    {"name": {"$regex": "^Kate"}},  # not a literal: the engine's own scan
    {"name": {"$regex": "kate", "$options": "x"}},
    {"$or": [{"name": {"$regex": "kate", "$options": "i"}}, {"labels": "Kate"}]},
    _search("moss"),
    _search("Dan", fold=False),
    # more texts than one SQL expression takes: the engine's own scan
    {"$or": [{"name": {"$regex": f"Customer {i}"}} for i in range(1_200)]},
]


@pytest.mark.parametrize("filt", SEARCHES, ids=[str(f) for f in SEARCHES])
async def test_a_search_for_plain_text_answers_as_stock(stores: HubAndStock, filt: Doc) -> None:
    await stores.same(lambda db: db.contacts.insert_many(SEARCHED))
    found = await stores.same_documents("contacts", filt)
    await stores.same(lambda db: db.contacts.find(filt).sort("_id", 1).limit(3).to_list())
    await stores.same(lambda db: db.contacts.find(filt, {"_id": 1}).limit(2).to_list())

    async def count(db: Any) -> list[int]:
        return [await db.contacts.count_documents(filt)]

    await stores.same(count)
    if filt == SEARCHES[0]:  # what the case is for finds what it should
        assert len(found) == 4


async def test_a_search_for_plain_text_parses_only_the_rows_that_may_hold_it(
    tmp_path: Path,
) -> None:
    """The engine parsed and matched every document of the collection for a
    `$regex` (2.4 s for a search of 100,000 contacts, the store's one loop held
    meanwhile). A literal's rows are found in SQL: only those holding the text,
    and those whose JSON is not plain ASCII, are parsed and checked."""
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine

    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        coll = client["hub"]["contacts"]
        await coll.insert_many(SEARCHED)
        await coll.insert_many(
            [
                {"_id": f"m{i}", "name": f"More {i}", "phones": [f"+1666{i:07d}"]}
                for i in range(2000)
            ]
        )
        # A row in UTF-8 rather than escaped, as an engine with another JSON
        # library writes it: the Kelvin sign is then three bytes, no escape.
        with sqlite3.connect(tmp_path / "store.sqlite") as raw:
            raw.execute(
                "UPDATE documents SET document = ? WHERE coll_name = 'contacts' "
                "AND storage_key = ?",
                (
                    json.dumps({"_id": "kelvin", "name": "\u212aate Moss"}, ensure_ascii=False),
                    engine._storage_key("kelvin"),
                ),
            )
        raw.close()
        parse = engine._deserialize_document
        parsed = 0

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal parsed
            parsed += 1
            return parse(*args, **kwargs)

        engine._deserialize_document = counting  # type: ignore[method-assign]
        found = await coll.find(_search("kate"), {"_id": 1}).to_list()
        assert {d["_id"] for d in found} == {"kelvin", "slash", "line", "upper"}
        # A `k` another character matches: the four above, "quote" (an escape),
        # "ann" (past ASCII) and "nested" (the text, in another field) are
        # checked, and the four found read out again; the 2,063 others are not
        # parsed.
        assert parsed <= 7 + 4, parsed
        parsed = 0
        # No such letter: only the rows holding the text, whatever else they
        # hold ("quote" has escapes).
        found = await coll.find(_search("dan"), {"_id": 1}).to_list()
        assert [d["_id"] for d in found] == ["quote"] and parsed == 1 + 1, parsed
        parsed = 0
        assert await coll.find(_search("zzz")).to_list() == []
        assert parsed == 0, parsed
        found = await coll.find(_search("Kate", fold=False), {"_id": 1}).to_list()
        assert {d["_id"] for d in found} == {"slash"}  # "KATE BUSH" and "kate..." differ
        assert parsed == 2 + 1, parsed  # "slash" and "upper" hold "Kate" ("upper" a label)
        parsed = 0
        assert len(await coll.find({"name": {"$regex": "^More 1"}}).to_list()) == 1111
        assert parsed >= 2060  # a pattern, not a literal: every row, as before
    finally:
        await client.close()


# -- the catalog is read by seeks -----------------------------------------------------


async def test_the_catalog_answers_as_the_engines_own_in_seeks_however_many_documents(
    tmp_path: Path,
) -> None:
    """The names of the databases and collections, and whether a collection
    exists (asked by every `createIndexes`, 35 at a hub's start), answer as the
    engine's own reads, which walked every stored document: 7 s of each start
    on a million messages. Counted in SQLite's own steps, ten times the
    documents cost the hub's reads nothing more."""
    import sqlite3

    from mongoeco import AsyncMongoClient as EngineClient
    from mongoeco.engines._sqlite_admin_runtime import SQLiteAdminRuntime
    from mongoeco.engines._sqlite_catalog import list_collection_names, list_database_names

    from hub.store.engine import HubSQLiteEngine
    from hub.store.engine.layout import HubAdminRuntime, collection_names, database_names

    path = tmp_path / "store.sqlite"
    engine = HubSQLiteEngine(str(path))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        assert isinstance(engine._admin_runtime, HubAdminRuntime)
        hub = client["hub"]
        await hub["a"].insert_many([{"_id": i} for i in range(2_000)])
        await hub.create_collection("b")
        await hub["c"].create_index([("x", ASCENDING)])
        await hub["e"].insert_many([{"_id": i} for i in range(10)])
        await client["other"]["d"].insert_many([{"_id": i} for i in range(10)])
        assert await hub.list_collection_names() == ["a", "b", "c", "e"]
        assert sorted(await client.list_database_names()) == ["hub", "other"]
    finally:
        await client.close()

    conn = sqlite3.connect(path)
    try:
        # Collections known by their documents alone (a store an earlier engine
        # wrote), so the reads of `documents` are what answers for them.
        conn.execute("DELETE FROM collections WHERE coll_name IN ('a', 'e', 'd')")
        conn.commit()
        ours, theirs = HubAdminRuntime(None), SQLiteAdminRuntime(None)
        asked = [(db, coll) for db in ("hub", "other", "none") for coll in "abcdef"]

        def answers() -> tuple[Any, ...]:
            return (
                collection_names(conn, "hub"),
                collection_names(conn, "other"),
                collection_names(conn, "none"),
                database_names(conn),
                [ours.collection_exists(conn, db, coll) for db, coll in asked],
            )

        assert answers() == (
            list_collection_names(conn, "hub"),
            list_collection_names(conn, "other"),
            list_collection_names(conn, "none"),
            list_database_names(conn),
            [theirs.collection_exists(conn, db, coll) for db, coll in asked],
        )
        assert answers()[:4] == (["a", "b", "c", "e"], ["d"], [], ["hub", "other"])

        def steps(read: Any) -> int:
            counted = 0

            def count() -> int:
                nonlocal counted
                counted += 1
                return 0

            conn.set_progress_handler(count, 1)
            try:
                read()
            finally:
                conn.set_progress_handler(None, 1)
            return counted

        reads = [
            lambda: collection_names(conn, "hub"),
            lambda: database_names(conn),
            lambda: ours.collection_exists(conn, "hub", "a"),
        ]
        before = [steps(read) for read in reads]
        engines_before = steps(lambda: list_collection_names(conn, "hub"))
        conn.executemany(
            "INSERT INTO documents (db_name, coll_name, storage_key, document) "
            "VALUES ('hub', 'a', ?, '{}')",
            [(f"k{i:06d}",) for i in range(18_000)],
        )
        conn.commit()
        after = [steps(read) for read in reads]
        engines_after = steps(lambda: list_collection_names(conn, "hub"))
    finally:
        conn.close()
    assert engines_after > 5 * engines_before  # the count sees a walk of the documents
    for b, a in zip(before, after, strict=True):
        assert a <= b * 1.2 + 20, (before, after)


# -- dedicated readers are kept ------------------------------------------------------


async def test_reads_reuse_kept_read_connections_and_see_every_write_before_them(
    tmp_path: Path,
) -> None:
    """A `find` of many documents reads on a dedicated connection: the engine made
    one and closed it for every such read (a tenth of the store's CPU under
    first messages, for the reads of the senders' conversations and
    identities). Kept, a reader starts each read afresh: it sees every write
    committed before the read, never an earlier snapshot; and the kept ones are
    closed with the engine."""
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine
    from hub.store.engine.layout import READERS_KEPT

    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    made: list[Any] = []
    new_connection = engine._hub_new_connection

    def counting() -> Any:
        made.append(new_connection())
        return made[-1]

    engine._hub_new_connection = counting  # type: ignore[method-assign]
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        coll = client["hub"]["identities"]
        await coll.create_index([("owner", ASCENDING)])
        opened_by_engine = len(made)
        for round_ in range(30):
            await coll.insert_many(
                [{"_id": f"k{round_}-{i}", "owner": f"o{round_}"} for i in range(3)]
            )
            ids = [f"k{r}-{i}" for r in range(round_ + 1) for i in range(3)]
            found = await coll.find({"_id": {"$in": ids}}).to_list()
            assert len(found) == 3 * (round_ + 1)  # this round's insert included
            assert len(await coll.find({"owner": f"o{round_}"}).to_list()) == 3
            await coll.update_one({"_id": f"k{round_}-0"}, {"$set": {"owner": "moved"}})
            assert len(await coll.find({"owner": "moved"}).to_list()) == round_ + 1
        readers = made[opened_by_engine:]
        assert 1 <= len(readers) <= READERS_KEPT  # 90 reads, a few connections
    finally:
        await client.close()
    for connection in readers:
        with pytest.raises(sqlite3.ProgrammingError):
            connection.execute("SELECT 1")  # closed with the engine


async def test_an_index_built_over_stored_documents_deletes_each_entry_by_its_document(
    tmp_path: Path,
) -> None:
    """Building an index over stored documents deletes each document's entry of it
    first; SQLite answered that from the shared entry index, reading every entry
    the new index had so far (quadratic: more than ten minutes for an index over
    100,000 stored conversations). It goes through the index by storage key."""
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine
    from hub.store.engine.layout import ENTRY_DELETE_BY_DOCUMENT

    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        coll = client["hub"]["conversations"]
        await coll.insert_many(
            [{"_id": f"c{i:05d}", "assignee_id": f"a{i % 7}"} for i in range(600)]
        )
        await coll.create_index([("assignee_id", ASCENDING)])
        assert len(await coll.find({"assignee_id": "a3"}).to_list()) == 86
        plan = engine._connection.execute(
            f"EXPLAIN QUERY PLAN {ENTRY_DELETE_BY_DOCUMENT}", (1, "x", "y")
        ).fetchall()
    finally:
        await client.close()
    assert "idx_scalar_index_entries_storage (collection_id=? AND storage_key=?)" in str(plan)


# -- equality on values other than strings, and on sparse indexes ----------------------


def _equality_documents() -> list[Doc]:
    when = BASE + timedelta(seconds=5)
    oid = ObjectId("650000000000000000000042")
    values: list[Any] = [True, False, 1, 0, 1.0, None, "true", when, oid, "x"]
    documents: list[Doc] = []
    for i in range(300):
        document: Doc = {"_id": f"e{i:04d}", "n": i}
        if i % 11:  # some have neither field
            document["flag"] = values[i % len(values)]
            document["plain"] = values[(i * 7) % len(values)]
        documents.append(document)
    return documents


async def test_equality_on_bools_dates_and_ids_seeks_and_matches_a_scan(coll: Any) -> None:
    """`{"media_pending": True}` (a sparse index) read the whole collection: an
    equality on a bool, a date, an ObjectId or a string is sought through a plain
    or a sparse index, each row checked against the filter, and finds exactly
    what a scan finds (True is not 1, a missing field is not null)."""
    documents = _equality_documents()
    await coll.insert_many(documents)
    await coll.create_index([("flag", ASCENDING)], sparse=True)
    await coll.create_index([("plain", ASCENDING)])
    when = BASE + timedelta(seconds=5)
    oid = ObjectId("650000000000000000000042")
    for field in ("flag", "plain"):
        for value in (True, False, when, oid, "x", "true"):
            expected = sorted(
                d["_id"]
                for d in documents
                if field in d and type(d[field]) is type(value) and d[field] == value
            )
            got = await coll.find({field: value}).to_list()
            assert sorted(d["_id"] for d in got) == expected, (field, value)
            limited = await coll.find({field: value, "n": {"$lt": 150}}).limit(3).to_list()
            assert [d["_id"] for d in limited] == [i for i in expected if int(i[1:]) < 150][:3]


async def test_an_equality_on_a_sparse_index_is_a_seek(tmp_path: Path) -> None:
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine

    engine = HubSQLiteEngine(str(tmp_path / "store.sqlite"))
    client = EngineClient(engine)
    await client.__aenter__()
    try:
        coll = client["hub"]["messages"]
        await coll.insert_many(_equality_documents())
        await coll.create_index([("flag", ASCENDING)], sparse=True)
        strategies: list[str] = []
        compile_plan = engine._compile_read_execution_plan

        def recording(*args: Any, **kwargs: Any) -> Any:
            plan = compile_plan(*args, **kwargs)
            strategies.append(plan.strategy)
            return plan

        engine._compile_read_execution_plan = recording  # type: ignore[method-assign]
        found = await coll.find({"flag": True}).limit(200).to_list()
    finally:
        await client.close()
    flagged = [d for d in _equality_documents() if d.get("flag") is True]
    assert sorted(d["_id"] for d in found) == [d["_id"] for d in flagged]
    assert strategies == ["hub-index-seek"]


# -- what the engine knows of a field after a start ---------------------------------


async def test_the_first_reads_after_a_start_learn_a_fields_facts_from_its_index_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a start the engine learns, once per field, whether it holds an
    array (then an equality is not sought through its index) and a value of an
    unordered type (then a sorted page does not walk it). It parsed every stored
    document for the first (3.4 s at 1,000,000 messages, and at every start for
    the media sweep's sparse index) and read every entry's row for the second
    (1.1 s). Run in process: the SQL is traced, and a collection whose field
    does hold an array is still answered as a scan is."""
    from mongoeco import AsyncMongoClient as EngineClient

    from hub.store.engine import HubSQLiteEngine
    from hub.store.engine.layout import HubConnection

    path = str(tmp_path / "store.sqlite")

    def documents(prefix: str) -> list[Doc]:
        return [
            {"_id": f"{prefix}{i:04d}", "conv": f"c{i % 40}", "at": BASE + timedelta(i)}
            for i in range(400)
        ]

    plain, mixed = documents("m"), documents("x")
    for i in range(0, 400, 50):
        plain[i]["pending"] = True  # a sparse index's few (the media sweep's)
    plain[5]["conv"] = []  # an empty array: no equality matches it
    mixed[7]["conv"] = ["c3", "c5"]  # one document holds an array
    mixed[9]["at"] = Int64(5)  # and one a number among dates: ordered, and no array
    mixed[11]["at"] = b"raw"  # and one bytes: an unordered key
    engine = HubSQLiteEngine(path)
    async with EngineClient(engine) as client:
        for name, docs in (("plain", plain), ("mixed", mixed)):
            await client["hub"][name].insert_many(docs)
            await client["hub"][name].create_index([("conv", ASCENDING)])
            await client["hub"][name].create_index([("at", DESCENDING)])
            await client["hub"][name].create_index([("pending", ASCENDING)], sparse=True)

    engine = HubSQLiteEngine(path)  # a fresh process's engine: it knows nothing yet
    statements: list[str] = []
    plans: dict[str, list[str]] = {}
    compile_plan = engine._compile_read_execution_plan

    def recording(*args: Any, **kwargs: Any) -> Any:
        plan = compile_plan(*args, **kwargs)
        plans.setdefault(args[1], []).append(plan.strategy)
        return plan

    engine._compile_read_execution_plan = recording  # type: ignore[method-assign]
    execute = HubConnection.execute

    def traced(self: Any, sql: str, parameters: Any = (), /) -> Any:
        statements.append(f"{' '.join(sql.split())} {parameters!r}")
        return execute(self, sql, parameters)

    monkeypatch.setattr(HubConnection, "execute", traced)
    async with EngineClient(engine) as client:
        assert await client["hub"]["plain"].find_one({"_id": "none"}) is None  # opens it
        found = {}
        for name in ("plain", "mixed"):
            coll = client["hub"][name]
            found[name] = (
                await coll.find({"conv": "c3"}).to_list(),
                await coll.find({}).sort([("at", DESCENDING)]).limit(3).to_list(),
                await coll.find({"pending": True}).to_list(),
                await coll.find({"at": {"$gte": BASE + timedelta(390)}}).to_list(),
            )
    parsed = [s for s in statements if "= 'array' LIMIT 1" in s]  # the engine's array check
    row_reads = [s for s in statements if "element_type NOT IN" in s]
    # The plain collection's facts came from its index entries alone: none of its
    # documents was parsed for one. (The mixed one's `at` lacks an entry in one
    # document, its bytes: whether that is an array is read from the documents.)
    assert [s for s in parsed if "'plain'" in s] == []
    assert row_reads == []
    # The plain collection is sought and walked through its indexes; the mixed
    # one's array and bytes key were found, so it is not.
    seek, walk = "hub-index-seek", "hub-index-walk"
    assert plans["plain"][-4:] == [seek, walk, seek, seek]
    # The mixed one holds no array at `at`, where every document has an entry.
    assert [s.startswith("hub-") for s in plans["mixed"]] == [False, False, True, True]
    for name, docs in (("plain", plain), ("mixed", mixed)):
        matches, newest, pending, late = found[name]
        dates = [d for d in docs if isinstance(d["at"], datetime)]
        later = [d["_id"] for d in dates if d["at"] >= BASE + timedelta(390)]
        assert [d["_id"] for d in late] == later
        assert [d["_id"] for d in pending] == [d["_id"] for d in docs if d.get("pending")]
        expected = [d for d in docs if d["conv"] in ("c3", ["c3", "c5"])]
        assert sorted(d["_id"] for d in matches) == [d["_id"] for d in expected]
        dated = [d for d in docs if isinstance(d["at"], datetime)]
        assert [d["_id"] for d in newest] == [d["_id"] for d in dated[::-1][:3]]


def test_every_unordered_key_type_scores_apart_from_the_ordered_ones() -> None:
    """The unordered-values fact seeks index entries by type score: each key type
    the engine makes from one value of each BSON kind is unordered exactly when
    its score is outside the ordered types' scores."""
    import uuid

    from bson import Binary, Code, MaxKey, MinKey, Regex, Timestamp
    from mongoeco.engines.sqlite import SQLiteEngine

    from hub.store.engine.reads import ORDERED_KEY_TYPES, _unordered_score_ranges

    values = [
        None, True, 1, 2.5, Int64(7), Decimal128("1.5"), "s", BASE, ObjectId(), uuid.uuid4(),
        b"raw", Binary(b"x", 5), Regex("a"), Timestamp(1, 1), Code("f"), MinKey(), MaxKey(),
    ]  # fmt: skip
    ranges = _unordered_score_ranges(SQLiteEngine._multikey_type_score)
    kinds = set()
    for value in values:
        with contextlib.suppress(NotImplementedError, TypeError):
            signature = SQLiteEngine._multikey_value_signature(value)
            if signature is None:
                continue
            kind = signature[0]
            kinds.add(kind)
            score = SQLiteEngine._multikey_type_score(kind)
            unordered = any(low < score < high for low, high in ranges)
            assert unordered == (kind not in ORDERED_KEY_TYPES), (kind, score)
    assert kinds >= ORDERED_KEY_TYPES | {"bytes", "uuid"}


async def test_a_text_index_on_one_field_is_not_sought_or_walked_as_an_ordered_one(
    private_store: Any,
) -> None:
    """The contacts' `words` index is a text index on `name` alone: the engine
    took it for an ordered index on `name`, which has no entries, so an equality
    on `name` found nothing, and (once the engine's rebuild of the entries had
    named it, after a mongoeco version change) so did a page sorted by `name`."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(private_store.uri)
    people = client.hub.people
    await people.create_index([("name", "text")], default_language="none", name="words")
    await people.insert_many([{"_id": f"p{i}", "name": f"n{i}", "n": i} for i in range(12)])
    await client.close()
    database = private_store.data_dir / "hub.sqlite3"
    with sqlite3.connect(database) as conn:  # as a mongoeco version change does
        conn.execute("DELETE FROM hub_engine_meta WHERE key = 'scalar_entries'")
    uri = await private_store.restart()
    client = AsyncMongoClient(uri)
    people = client.hub.people
    try:
        assert [d["_id"] for d in await people.find({"name": "n3"}).to_list()] == ["p3"]
        newest = await people.find({}).sort([("name", DESCENDING)]).limit(2).to_list()
        assert [d["name"] for d in newest] == ["n9", "n8"]
        found = await people.find({"$text": {"$search": "n5"}}).to_list()
        assert [d["_id"] for d in found] == ["p5"]
    finally:
        await client.close()
