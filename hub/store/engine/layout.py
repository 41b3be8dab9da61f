"""The store's physical layout: its indexes, its connections, and what is done
at open.

- Every logical index had three physical SQLite indexes: an expression index on
  `documents` that every write to any collection maintained (all of them, for
  every collection's indexes), and one copy each of the same entry index. Here
  there is one shared index per entry table and no expression index
  (`HubConnection`, `HubLayoutEngine`); a store in the old layout is moved at
  open, once (`HubLayoutEngine._hub_share_physical_indexes`).
- Opening: the engine deletes and rebuilds every index entry at each open (a
  minute at 200,000 messages); here only when the engine's version changes
  (`HubLayoutEngine._backfill_scalar_indexes_sync`).
- The catalog: the names of databases and collections, and whether one exists,
  are sought on the documents' primary key instead of read from every row
  (`HubAdminRuntime`).
- Each connection is the engine's own, with the connection class above, a larger
  page cache, memory-mapped reads, and a long automatic checkpoint (the
  checkpoints are `hub.store.engine.checkpoint.WalCheckpointer`'s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import sqlite3
import threading
from typing import Any

from mongoeco.engines._sqlite_admin_runtime import (
    SQLiteAdminRuntime,
    _sqlite_list_collections,
    _sqlite_list_databases,
)
from mongoeco.engines._sqlite_connection import SQLiteConnection
from mongoeco.engines.sqlite import SQLiteEngine

from hub.store.engine.checkpoint import AUTOCHECKPOINT_PAGES

MONGOECO_VERSION = importlib.metadata.version("mongoeco")
PRAGMAS = (
    "PRAGMA cache_size = -65536",  # 64 MiB of pages per connection (default 2 MiB)
    "PRAGMA mmap_size = 268435456",
)
# One physical index per entry table, shared by every logical index; the
# layout's name is recorded in `hub_engine_meta` once a store is moved to it.
SHARED_SCALAR_INDEX = "scidx_hub"
SHARED_MULTIKEY_INDEX = "mkidx_hub"
ENTRY_INDEX_COLUMNS = "(collection_id, index_name, type_score, element_key, storage_key)"
SHARED_INDEX_SQL = {
    name: f'CREATE INDEX IF NOT EXISTS "{name}" ON {table} {ENTRY_INDEX_COLUMNS}'
    for name, table in (
        (SHARED_SCALAR_INDEX, "scalar_index_entries"),
        (SHARED_MULTIKEY_INDEX, "multikey_entries"),
    )
}
PHYSICAL_LAYOUT = "shared-entry-indexes-1"


READERS_KEPT = 4  # idle dedicated read connections kept open for the next reads
# Building an index over stored documents deletes each document's entry of it
# first, by collection, storage key and index name. Without statistics SQLite
# answers that from the shared index (collection and index name), reading every
# entry the new index has so far: quadratic (an index over 100,000 stored
# conversations took longer than ten minutes). The engine's own index by
# collection and storage key finds the one entry.
ENTRY_DELETE = (
    "DELETE FROM scalar_index_entries WHERE collection_id = ? AND storage_key = ? "
    "AND index_name = ?"
)
ENTRY_DELETE_BY_DOCUMENT = (
    "DELETE FROM scalar_index_entries INDEXED BY idx_scalar_index_entries_storage "
    "WHERE collection_id = ? AND storage_key = ? AND index_name = ?"
)


class HubConnection(SQLiteConnection):
    """The engine's connection, keeping one physical index per entry table.

    The engine gives every logical index three physical SQLite indexes: an
    expression index on `documents` (over every document of every collection:
    each write to any collection evaluates and maintains all of them), and a
    copy of the same `(collection_id, index_name, ...)` index on each entry
    table. Entries carry their collection and index name first, so one index
    per entry table answers for all; here the engine names the shared one for
    every logical index (`HubLayoutEngine._physical_*_index_name`), creating it
    is idempotent, dropping one logical index leaves it (its entries are still
    deleted by the engine), and the expression indexes on `documents` are not
    made: the engine reads through the entry indexes.
    """

    # Where a dedicated read connection goes back to when its read is over
    # (`HubLayoutEngine._create_sqlite_connection`); None for the engine's own.
    hub_pool: ReaderPool | None = None

    def close(self) -> None:
        pool = self.hub_pool
        if pool is None or not pool.keep(self):
            super().close()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if sql.startswith(("CREATE INDEX ", "DROP INDEX ")):
            rewritten = _physical_index_statement(sql)
            if rewritten is None:
                return super().execute("SELECT 1 WHERE 0")
            sql = rewritten
        elif (
            "index_name = ?" in sql
            and sql.lstrip().startswith("DELETE FROM scalar_index_entries")
            and " ".join(sql.split()) == ENTRY_DELETE
        ):
            sql = ENTRY_DELETE_BY_DOCUMENT
        return super().execute(sql, parameters)


class ReaderPool:
    """Idle dedicated read connections, kept open for the next reads.

    The engine gives every `find` of more than one document a connection of its
    own, made for it (opened, its pragmas and functions set, its page cache
    empty) and closed after it: for the hub's reads by `_id`, more than the read.
    Here its `close` ends the connection's read transaction and keeps it (up to
    READERS_KEPT), and the next read takes it as it is; the engine's own
    connections are never kept, and those kept are closed with the engine."""

    def __init__(self) -> None:
        self._idle: list[HubConnection] = []
        self._lock = threading.Lock()
        self.open = True

    def keep(self, connection: HubConnection) -> bool:
        """Take back a connection its reader is done with; False: close it."""
        try:
            if connection.in_transaction:
                connection.rollback()
        except sqlite3.Error:
            return False
        # Catalogs it read go, as on close: the next read checks them again.
        connection.index_catalogs.clear()
        connection._catalog_data_version = None
        with self._lock:
            if not self.open or len(self._idle) >= READERS_KEPT:
                return False
            self._idle.append(connection)
        return True

    def take(self) -> HubConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def close(self) -> None:
        with self._lock:
            self.open = False
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(sqlite3.Error):
                SQLiteConnection.close(connection)


def _physical_index_statement(sql: str) -> str | None:
    """The statement to run for an engine's CREATE/DROP INDEX (None: nothing)."""
    for name in SHARED_INDEX_SQL:
        quoted = f'"{name}"'
        if sql.startswith(f"CREATE INDEX {quoted} ") or sql.startswith(
            f"CREATE INDEX IF NOT EXISTS {quoted} "
        ):
            return SHARED_INDEX_SQL[name]
        if sql.startswith(f"DROP INDEX IF EXISTS {quoted}") or sql.startswith(
            f"DROP INDEX {quoted}"
        ):
            return None
    if sql.startswith("CREATE INDEX ") and " ON documents (" in sql:
        return None
    return sql


# The catalog: a database or collection exists while it has a row in any of the
# engine's four tables (as the engine's own statements say). The engine reads
# the names in `documents` as the distinct values of every one of its rows, and
# whether a collection has a document by the same union: each a walk of the
# whole table (160 ms at a million messages, for every `createIndexes`, so 7 s
# of a hub's start). Here each name in `documents` is one seek on its primary
# key (db_name, coll_name, storage_key), past the one before.
DATABASE_NAMES = """
    WITH RECURSIVE stored(name) AS (
        SELECT (SELECT MIN(db_name) FROM documents)
        UNION ALL
        SELECT (SELECT MIN(db_name) FROM documents WHERE db_name > stored.name)
        FROM stored WHERE stored.name IS NOT NULL
    )
    SELECT name FROM stored WHERE name IS NOT NULL
    UNION SELECT db_name FROM collections
    UNION SELECT db_name FROM indexes
    UNION SELECT db_name FROM search_indexes
    ORDER BY 1
"""
COLLECTION_NAMES = """
    WITH RECURSIVE stored(name) AS (
        SELECT (SELECT MIN(coll_name) FROM documents WHERE db_name = ?1)
        UNION ALL
        SELECT (
            SELECT MIN(coll_name) FROM documents
            WHERE db_name = ?1 AND coll_name > stored.name
        )
        FROM stored WHERE stored.name IS NOT NULL
    )
    SELECT name FROM stored WHERE name IS NOT NULL
    UNION SELECT coll_name FROM collections WHERE db_name = ?1
    UNION SELECT coll_name FROM indexes WHERE db_name = ?1
    UNION SELECT coll_name FROM search_indexes WHERE db_name = ?1
    ORDER BY 1
"""
COLLECTION_EXISTS = """
    SELECT EXISTS (SELECT 1 FROM collections WHERE db_name = ?1 AND coll_name = ?2)
        OR EXISTS (SELECT 1 FROM documents WHERE db_name = ?1 AND coll_name = ?2)
        OR EXISTS (SELECT 1 FROM indexes WHERE db_name = ?1 AND coll_name = ?2)
        OR EXISTS (SELECT 1 FROM search_indexes WHERE db_name = ?1 AND coll_name = ?2)
"""


def database_names(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute(DATABASE_NAMES).fetchall()]


def collection_names(conn: sqlite3.Connection, db_name: str) -> list[str]:
    return [row[0] for row in conn.execute(COLLECTION_NAMES, (db_name,)).fetchall()]


class HubAdminRuntime(SQLiteAdminRuntime):
    """The engine's catalog reads, each a few seeks however many documents are
    stored (`COLLECTION_NAMES`); its own otherwise."""

    def collection_exists(self, conn: sqlite3.Connection, db_name: str, coll_name: str) -> bool:
        return bool(conn.execute(COLLECTION_EXISTS, (db_name, coll_name)).fetchone()[0])

    def list_databases(self, *, context: Any = None) -> list[str]:
        conn = self._engine._require_connection(context)
        return _sqlite_list_databases(
            conn=conn, profiler=self._engine._profiler, list_database_names=database_names
        )

    def list_collections(self, db_name: str, *, context: Any = None) -> list[str]:
        conn = self._engine._require_connection(context)
        return _sqlite_list_collections(
            conn=conn,
            db_name=db_name,
            profiler=self._engine._profiler,
            profile_collection_name=self._engine._PROFILE_COLLECTION_NAME,
            list_collection_names=collection_names,
        )


class HubLayoutEngine(SQLiteEngine):
    """The engine's physical indexes shared per entry table, its connections,
    its catalog reads, and the work it does at open done only when needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admin_runtime = HubAdminRuntime(self)

    def _physical_scalar_index_name(self, db_name: str, coll_name: str, index_name: str) -> str:
        return SHARED_SCALAR_INDEX

    def _physical_multikey_index_name(self, db_name: str, coll_name: str, index_name: str) -> str:
        return SHARED_MULTIKEY_INDEX

    def _resolve_hint_index(self, *args: Any, **kwargs: Any) -> Any:
        # A hinted query names the index's expression index on `documents`, which
        # this engine does not keep: it reads without one (a hint is advice).
        index = super()._resolve_hint_index(*args, **kwargs)
        if (
            dataclasses.is_dataclass(index)
            and not isinstance(index, type)
            and getattr(index, "physical_name", None)
        ):
            index = dataclasses.replace(index, physical_name=None)
        return index

    def _hub_share_physical_indexes(self, conn: Any) -> None:
        """Move a store written with one physical index per logical index to the
        shared layout: drop the expression indexes on `documents` and the
        per-index copies of the entry indexes, and point the catalog at the
        shared ones. Done once per store."""
        row = conn.execute(
            "SELECT value FROM hub_engine_meta WHERE key = 'physical_indexes'"
        ).fetchone()
        if row is not None and row[0] == PHYSICAL_LAYOUT:
            return
        catalog = {
            str(r[0])
            for r in conn.execute(
                "SELECT physical_name FROM indexes WHERE physical_name IS NOT NULL"
            )
        }
        stale = [
            str(name)
            for name, table in conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
            )
            if (table == "documents" and name in catalog)
            or (
                table in ("scalar_index_entries", "multikey_entries")
                and str(name).startswith(("scidx_", "mkidx_"))
                and name not in (SHARED_SCALAR_INDEX, SHARED_MULTIKEY_INDEX)
            )
        ]
        for name in stale:
            conn.execute(f"DROP INDEX IF EXISTS {self._quote_identifier(name)}")
        conn.execute(
            "UPDATE indexes SET scalar_physical_name = ? WHERE scalar_physical_name IS NOT NULL",
            (SHARED_SCALAR_INDEX,),
        )
        conn.execute(
            "UPDATE indexes SET multikey_physical_name = ? "
            "WHERE multikey_physical_name IS NOT NULL",
            (SHARED_MULTIKEY_INDEX,),
        )
        conn.execute(SHARED_INDEX_SQL[SHARED_SCALAR_INDEX])
        conn.execute(SHARED_INDEX_SQL[SHARED_MULTIKEY_INDEX])
        conn.execute(
            "INSERT OR REPLACE INTO hub_engine_meta (key, value) VALUES ('physical_indexes', ?)",
            (PHYSICAL_LAYOUT,),
        )
        if conn.in_transaction:
            conn.commit()
        self._invalidate_index_cache()

    def _ensure_scalar_physical_indexes_sync(self, conn: Any, indexes: list[Any]) -> None:
        # The engine runs CREATE INDEX IF NOT EXISTS for every index of every
        # document it inserts. Here every one of them is the shared index, made
        # at open (`_hub_share_physical_indexes`) and never dropped. A batch
        # insert asks with the same list for each of its documents: the list
        # found all shared last is kept (held, so its identity is not reused).
        if indexes is getattr(self, "_hub_shared_indexes", None):
            return
        if all(
            index.get("scalar_physical_name") in (None, SHARED_SCALAR_INDEX) for index in indexes
        ):
            self._hub_shared_indexes = indexes
            return
        super()._ensure_scalar_physical_indexes_sync(conn, indexes)

    def _backfill_scalar_indexes_sync(self, conn: Any) -> None:  # type: ignore[override]
        # At every open the engine deletes and rebuilds the index entries of
        # every collection (a minute at 200,000 messages), in case they were
        # written by another version of it. Entries are written in the same
        # transaction as their documents, so the ones this version wrote are
        # whole: the rebuild is done only when the version changes.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hub_engine_meta (key TEXT PRIMARY KEY, value TEXT)"
        )
        self._hub_share_physical_indexes(conn)
        stamp = f"mongoeco {MONGOECO_VERSION}"
        row = conn.execute(
            "SELECT value FROM hub_engine_meta WHERE key = 'scalar_entries'"
        ).fetchone()
        # An ordered single-field index without a physical name was created
        # before this version named them: its entries are rebuilt too. A text
        # index on one field never gets one (it has no entries of this kind).
        unnamed = any(
            keys is None or all(direction in (1, -1) for _, direction in json.loads(keys))
            for (keys,) in conn.execute(
                "SELECT keys FROM indexes WHERE scalar_physical_name IS NULL "
                "AND json_array_length(fields) = 1"
            )
        )
        if row is not None and row[0] == stamp and not unnamed:
            return
        super()._backfill_scalar_indexes_sync(conn)
        conn.execute(
            "INSERT OR REPLACE INTO hub_engine_meta (key, value) VALUES ('scalar_entries', ?)",
            (stamp,),
        )

    def _create_sqlite_connection(self) -> Any:
        # The engine's own, with the connection class that keeps the shared
        # physical indexes (see `HubConnection`). Once the engine is open, what
        # it asks for is a dedicated reader: one kept from an earlier read is
        # given, and this one is kept after its read (`ReaderPool`).
        pool: ReaderPool | None = getattr(self, "_hub_readers", None)
        reader = (
            pool is not None
            and pool.open
            and self._connection is not None
            and self._pending_connection is None
        )
        if reader:
            assert pool is not None
            kept = pool.take()
            if kept is not None:
                return kept
        connection = self._hub_new_connection()
        if reader:
            connection.hub_pool = pool
        return connection

    def _connect_sync(self) -> None:  # type: ignore[override]
        pool: ReaderPool | None = getattr(self, "_hub_readers", None)
        if pool is None or not pool.open:
            self._hub_readers = ReaderPool()
        super()._connect_sync()

    def _disconnect_sync(self) -> None:  # type: ignore[override]
        try:
            super()._disconnect_sync()
        finally:
            pool: ReaderPool | None = getattr(self, "_hub_readers", None)
            if self._connection is None and pool is not None:
                pool.close()

    def _hub_new_connection(self) -> HubConnection:
        connection = sqlite3.connect(self._path, check_same_thread=False, factory=HubConnection)
        try:
            if self._path != ":memory:":
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            for pragma in PRAGMAS:
                connection.execute(pragma)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
            raise
        return connection
