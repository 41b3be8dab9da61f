"""The embedded engine's `$text` on messages (hub.store.engine.text): answered
from FTS5, and exactly what the engine's own evaluation answers, for any sort,
page, cursor bound, extra condition, tie of dates and undated document; kept in
step with inserts, updates and deletes; filled from documents stored before it
existed."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from hub.store import TEXT_INDEX_OPTIONS, TEXT_INDEXES, Store
from hub.store.embedded import EmbeddedStore

WORDS = ["alpha", "bravo", "charlie", "delta", "Écho"]
BASE = datetime(2026, 5, 1, tzinfo=UTC)


def _docs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        text = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        # Few distinct times: many ties, some within one millisecond.
        at: Any = BASE + timedelta(milliseconds=rng.randint(0, 20), microseconds=rng.randint(0, 2))
        if i % 37 == 0:
            at = None  # undated
        doc: dict[str, Any] = {"_id": f"m{i:04d}", "text": text, "created_at": at, "n": i % 3}
        if i % 11 == 0:
            doc["email"] = {"subject": "Invoice Zulu"}
        docs.append(doc)
    return docs


def _regex(word: str) -> dict[str, Any]:
    return {"$regex": f"(^| ){word}( |$)", "$options": "i"}


async def _compare(coll: Any, word: str, extra: dict[str, Any], sort: list, skip: int, limit: int):
    text_filter = {"$text": {"$search": f'"{word}"'}, **extra}
    field_filter = {"$or": [{"text": _regex(word)}, {"email.subject": _regex(word)}], **extra}
    got = await coll.find(text_filter).sort(sort).skip(skip).limit(limit).to_list()
    want = await coll.find(field_filter).sort(sort).skip(skip).limit(limit).to_list()
    assert [d["_id"] for d in got] == [d["_id"] for d in want], (word, extra, sort, skip, limit)


async def test_text_queries_answer_exactly_what_the_engine_does(store: Store) -> None:
    rng = random.Random(5)
    coll = store.messages
    await coll.insert_many(_docs(rng, 400))
    cut = BASE + timedelta(milliseconds=9, microseconds=1)
    for word in ("alpha", "écho", "zulu"):
        for sort in ([("created_at", -1), ("_id", -1)], [("created_at", 1), ("_id", 1)]):
            for extra in (
                {},
                {"n": 1},
                {"created_at": {"$lte": cut}},
                {"created_at": {"$gt": cut}},
            ):
                for skip, limit in ((0, 1), (0, 7), (3, 20), (0, 500)):
                    await _compare(coll, word, extra, sort, skip, limit)
    # Unsorted, unlimited: the same set.
    got = {d["_id"] for d in await coll.find({"$text": {"$search": "bravo"}}).to_list()}
    want = {d["_id"] for d in await coll.find({"text": _regex("bravo")}).to_list()}
    assert got == want


async def test_the_index_follows_updates_and_deletes(store: Store) -> None:
    coll = store.messages
    await coll.insert_one({"_id": "a", "text": "first words", "created_at": BASE})
    await coll.update_one({"_id": "a"}, {"$set": {"text": "second words"}})
    assert await coll.find({"$text": {"$search": "first"}}).to_list() == []
    assert [d["_id"] for d in await coll.find({"$text": {"$search": "second"}}).to_list()] == ["a"]
    await coll.update_one({"_id": "a"}, {"$set": {"created_at": BASE + timedelta(days=1)}})
    newest = (
        await coll.find({"$text": {"$search": "words"}}).sort("created_at", -1).limit(1).to_list()
    )
    assert [d["_id"] for d in newest] == ["a"]
    await coll.update_one({"_id": "a"}, {"$set": {"status": "sent"}})  # no word changed
    assert len(await coll.find({"$text": {"$search": "second"}}).to_list()) == 1
    await coll.delete_one({"_id": "a"})
    assert await coll.find({"$text": {"$search": "second"}}).to_list() == []


async def test_documents_stored_before_the_index_are_found(tmp_path: Path) -> None:
    data = tmp_path / "store"
    embedded = EmbeddedStore(data)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(await embedded.start())
    await client.hub.messages.insert_many(
        [{"_id": f"x{i}", "text": f"old words {i}", "created_at": BASE} for i in range(5)]
    )
    await client.close()
    await embedded.stop()
    # As a store written before text search: its FTS tables and their mark gone.
    conn = sqlite3.connect(data / "hub.sqlite3")
    conn.execute("DROP TABLE hub_text_messages")
    conn.execute("DELETE FROM hub_engine_meta WHERE key = 'text'")
    conn.commit()
    conn.close()
    embedded = EmbeddedStore(data)
    client = AsyncMongoClient(await embedded.start())
    try:
        fields = [(f, "text") for f in TEXT_INDEXES["messages"]]
        await client.hub.messages.create_index(fields, **TEXT_INDEX_OPTIONS)
        found = await client.hub.messages.find({"$text": {"$search": "OLD"}}).to_list()
        assert sorted(d["_id"] for d in found) == [f"x{i}" for i in range(5)]
    finally:
        await client.close()
        await embedded.stop()
