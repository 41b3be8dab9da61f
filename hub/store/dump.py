"""`hub export` and `hub import`: every collection of the hub's database as
extended-JSON lines, to move the data between the embedded store and MongoDB
(either way) or between two MongoDBs.

An export is a directory: one `<collection>.jsonl` per collection, one document
per line in MongoDB's canonical extended JSON (`bson.json_util`: dates, 64-bit
integers, binary and ObjectIds come back as they were), and `manifest.json`,
written last, with each collection's file, its number of documents and its
indexes. Documents are streamed both ways; neither side is held in memory.

An import checks everything before it writes anything: the manifest, every line
of every file (each must be a document with an `_id`), each file's count against
the manifest, and that the target database holds no documents in those
collections. Then it inserts, in batches, creates the indexes and counts again.
Only a store that fails during the inserts can leave an import half-done; the
error says so, and the target database is then to be dropped and the import run
again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import json_util
from bson.errors import InvalidBSON
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

MANIFEST = "manifest.json"
FORMAT = "hub-export-1"
BATCH = 500  # documents per insert command
# Read back with aware datetimes in UTC, as the hub's own client reads them.
READ_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)
# Index options carried over (the rest of an index's description is the store's own).
INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}")

# progress(collection) -> a callback (done, total) for that collection
Progress = Callable[[str], Callable[[int, int], None]]


class DumpError(Exception):
    """An export or import that cannot go on; the message names the file (and line)."""


@dataclass
class DumpReport:
    directory: Path
    database: str
    documents: dict[str, int] = field(default_factory=dict)  # collection -> count
    indexes: int = 0

    @property
    def total(self) -> int:
        return sum(self.documents.values())


def _no_progress(_: str) -> Callable[[int, int], None]:
    return lambda done, total: None


def _index_spec(index: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": index["name"], "key": list(dict(index["key"]).items())}
    for option in INDEX_OPTIONS:
        if option in index:
            spec[option] = index[option]
    return spec


def _empty_directory(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise DumpError(f"{directory}: exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True)


async def export_database(
    db: AsyncDatabase[dict[str, Any]], directory: Path, progress: Progress = _no_progress
) -> DumpReport:
    """Write every collection of `db` to `directory` (new or empty)."""
    _empty_directory(directory)
    report = DumpReport(directory, db.name)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "database": db.name,
        "exported_at": datetime.now(UTC).isoformat(),
        "collections": {},
    }
    names = sorted(n for n in await db.list_collection_names() if not n.startswith("system."))
    for name in names:
        if not _SAFE_NAME.fullmatch(name):
            raise DumpError(f"collection {name!r}: a name that cannot be a file name")
        collection = db[name]
        total = await collection.estimated_document_count()
        indexes = [
            _index_spec(index)
            async for index in await collection.list_indexes()
            if index["name"] != "_id_"
        ]
        shown = progress(name)
        count = 0
        path = directory / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            async for doc in collection.find({}, batch_size=1000):
                handle.write(json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS))
                handle.write("\n")
                count += 1
                if count % 500 == 0:
                    shown(count, max(total, count))
        shown(count, count)
        manifest["collections"][name] = {
            "file": path.name,
            "documents": count,
            "indexes": indexes,
        }
        report.documents[name] = count
        report.indexes += len(indexes)
    # Last: a directory with a manifest is a whole export.
    partial = directory / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial.replace(directory / MANIFEST)
    return report


def read_manifest(directory: Path) -> dict[str, Any]:
    """The export's manifest, checked; DumpError naming the file otherwise."""
    if not directory.is_dir():
        raise DumpError(f"{directory}: no such directory")
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DumpError(
            f"{path}: missing (not a hub export, or an export that did not finish)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DumpError(f"{path}: cannot read: {error}") from error
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise DumpError(f"{path}:{error.lineno}: not JSON: {error.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DumpError(f"{path}: not a hub export (format is not {FORMAT!r})")
    collections = manifest.get("collections")
    if not isinstance(collections, dict):
        raise DumpError(f"{path}: 'collections' must be an object")
    for name, entry in collections.items():
        if not _SAFE_NAME.fullmatch(str(name)):
            raise DumpError(f"{path}: collection {name!r}: not a valid name")
        if (
            not isinstance(entry, dict)
            or entry.get("file") != f"{name}.jsonl"
            or not isinstance(entry.get("documents"), int)
            or not isinstance(entry.get("indexes", []), list)
        ):
            raise DumpError(
                f"{path}: collection {name!r}: needs file '{name}.jsonl', "
                "documents (a count) and indexes (a list)"
            )
    return manifest


def _documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, document) for each line of `path`; DumpError naming the file
    and the line at the first that is not a document with an `_id`."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DumpError(f"{path}: missing (named in {MANIFEST})") from None
    except OSError as error:
        raise DumpError(f"{path}: cannot read: {error}") from error
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    raise DumpError(f"{path}:{number}: an empty line")
                try:
                    doc = json_util.loads(line, json_options=READ_OPTIONS)
                except (ValueError, TypeError, InvalidBSON) as error:
                    raise DumpError(f"{path}:{number}: not extended JSON: {error}") from None
                if not isinstance(doc, dict) or "_id" not in doc:
                    raise DumpError(f"{path}:{number}: not a document with an _id")
                yield number, doc
        except UnicodeDecodeError as error:
            raise DumpError(f"{path}:{number + 1}: not UTF-8: {error.reason}") from None


def check_export(directory: Path) -> dict[str, Any]:
    """Read the whole export once, writing nothing: its manifest and every line of
    every file. Returns the manifest."""
    manifest = read_manifest(directory)
    for entry in manifest["collections"].values():
        path = directory / entry["file"]
        count = sum(1 for _ in _documents(path))
        if count != entry["documents"]:
            raise DumpError(
                f"{path}: {count} document(s), but {MANIFEST} says {entry['documents']} "
                "(a file cut short or added to)"
            )
    return manifest


async def import_database(
    db: AsyncDatabase[dict[str, Any]], directory: Path, progress: Progress = _no_progress
) -> DumpReport:
    """Load the export in `directory` into `db`, whose collections must be empty."""
    manifest = check_export(directory)
    collections: dict[str, Any] = manifest["collections"]
    occupied = [
        name for name in collections if await db[name].find_one({}, {"_id": 1}) is not None
    ]
    if occupied:
        raise DumpError(
            f"database {db.name!r} already holds documents in {', '.join(sorted(occupied))}: "
            "import into an empty store (a new store.data_dir, or a new store.database)"
        )
    report = DumpReport(directory, db.name)
    existing = set(await db.list_collection_names())
    for name, entry in collections.items():
        collection = db[name]
        total = int(entry["documents"])
        if name not in existing:
            await db.create_collection(name)  # an empty one too
        shown = progress(name)
        done = 0
        batch: list[dict[str, Any]] = []
        try:
            for _, doc in _documents(directory / entry["file"]):
                batch.append(doc)
                if len(batch) >= BATCH:
                    await collection.insert_many(batch, ordered=False)
                    done += len(batch)
                    batch = []
                    shown(done, total)
            if batch:
                await collection.insert_many(batch, ordered=False)
                done += len(batch)
            shown(done, total)
            for spec in entry.get("indexes", []):
                options = {k: spec[k] for k in INDEX_OPTIONS if k in spec}
                await collection.create_index(
                    [(str(k), v) for k, v in spec["key"]], name=spec["name"], **options
                )
                report.indexes += 1
            stored = await collection.count_documents({})
        except PyMongoError as error:
            raise DumpError(
                f"{directory / entry['file']}: the store failed after {done} of {total} "
                f"document(s) of {name}: {error}. The import is incomplete: drop database "
                f"{db.name!r} (or start from an empty store) and run it again"
            ) from error
        if stored != total:
            raise DumpError(
                f"{name}: {stored} document(s) in the store after the import, {total} in "
                f"{directory / entry['file']}"
            )
        report.documents[name] = stored
    return report
