"""The embedded store's engine: mongoeco's SQLite engine, adjusted for the hub.

Imported only by the store's child process (`hub.store.embedded_server`). Every
adjustment keeps what a client sees exactly as before; each one removes a scan of
a whole collection, or repeated work, from a path the hub takes all the time.

Opening: the engine deletes and rebuilds every index entry at each open (a
minute at 200,000 messages); here only when the engine's version changes.

Writes:

- every logical index had three physical SQLite indexes: an expression index
  on `documents` that every write to any collection maintained (all of them,
  for every collection's indexes), and one copy each of the same entry index.
  Here there is one shared index per entry table and no expression index
  (`HubConnection`); a store in the old layout is moved at open, once;
- the wire `update` of several single-document updates runs them in one
  transaction (`patch_update_command`); an operator update of one document by
  its `_id`, in a collection with plain single-field indexes only, reads the
  row, applies the engine's compiled update, writes the row back and changes
  only the index entries whose key changed (`_hub_lean_update`), instead of
  the engine's general path (TTL purge, catalog reloads, unique and search
  index upkeep, every entry deleted and inserted again); an indexed field
  holding an array or a sub-document, before or after, takes the general path;
  in that command, an update by a string `_id` of only `$set` of plain values
  and `$inc` by integers, on top-level fields the document has, is applied to
  the stored document without compiling it (`SimpleUpdate`), with the counts
  the engine gives; anything else about it, it hands to the compiled path;
- an update whose operators the engine cannot write as SQL walks the stored
  document before finding so (`patch_update_translation`);
- an update deep-copies the document seven times and an insert twice; here
  only their dicts and lists are copied (`patch_update_copies`);
- the codec checks a document's values once per encoding, not once per nesting
  level, and a document of the plain types the hub writes is checked and encoded
  in one walk (`patch_codec_validation`, `plain_encode`); the wire layer keeps
  plain decoded values as they are without trying a dozen BSON types on each
  (`patch_wire_decoding`). Together a fifth of the store's CPU per message;

- a single insert re-checks `_id` uniqueness by loading every document, even when
  the `_id` is a string or ObjectId whose primary-key lookup already decided it
  (the scan exists for numeric ids, where 1 and 1.0 are equal);
- the wire `insert` command inserts its documents one by one, one transaction
  each, instead of using the engine's batch path (patched in
  `patch_insert_command`);
- the write-ahead log is checkpointed from a thread of its own
  (`WalCheckpointer`), not inside whichever commit finds it long, where the
  store's one loop waited on the copying and the sync;
- the durable change-stream outbox is switched off (it starts a thread and
  serialises the whole document on every write, more than half the cost of an
  update): the hub does not use change streams, and in-process change streams
  still work from the engine's in-memory publication.

Reads:

- before a query that follows a write, the engine scans the collection for
  Decimal128 values in the queried fields; the hub stores none, so the question
  is answered from the query's own operands;
- the engine answers every multi-document `find` by reading the whole collection
  (its index paths exist, but only `find_one` reaches them). Two index paths are
  added here (`_compile_read_execution_plan`), both exact:

  * seek: a filter with `_id`s (equality or `$in`), or an equality on a string
    or a range on a field with a single-field index, reads the matching rows
    only; the rest of the filter is checked per row by the engine's own
    matcher, and a sort is done on the few rows found; when only `_id`s are
    asked for, only they are read out of each row;
  * walk: a sort whose first key has a single-field index, with a limit, walks
    that index in order, checks the filter per row and stops after skip + limit
    matches, then adds the rows that tie with the last one on the sort key, so
    the engine's own sort (on every key of the sort) decides the final order.

  Each path is taken only while the index can answer for every document: no
  document holds an array in the field (a seek would miss it), and for a walk
  every document has a scalar value there whose index order is BSON order. These
  facts are read once from the data, then kept up to date from every document
  the engine indexes, so they cost no scan per query.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import importlib.metadata
import itertools
import logging
import math
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

import mongoeco.engines.sqlite as sqlite_engine
from bson import ObjectId
from mongoeco._types._bson_objectid import OBJECT_ID_TYPES, normalize_object_id
from mongoeco.api._async import _collection_insert as collection_insert
from mongoeco.api._async import _database_admin_write_commands as write_commands
from mongoeco.api._async._collection_modify import (
    _bind_execution_context as bind_execution_context,
)
from mongoeco.api._async._write_command_validation import write_command_acknowledged
from mongoeco.api._async._write_errors import write_command_errors
from mongoeco.api._async._write_failures import record_write_failure
from mongoeco.api._async.cursor import _operation_issue_message as operation_issue_message
from mongoeco.api._command_bson import validate_write_fields
from mongoeco.api.operations import compile_update_operation
from mongoeco.core import codec as codec_module
from mongoeco.core import operators
from mongoeco.core.bson_scalars import (
    INT64_MAX,
    INT64_MIN,
    BsonDouble,
    BsonInt32,
    BsonInt64,
    normalize_utc_bson_datetime,
)
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.identity import id_contains_numeric_value
from mongoeco.core.operators import CompiledUpdatePlan
from mongoeco.core.paths import get_document_value
from mongoeco.core.query_plan import (
    AndCondition,
    EqualsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    InCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
    MatchAll,
    OrCondition,
)
from mongoeco.engines import _sqlite_modify_ops as modify_ops
from mongoeco.engines import results
from mongoeco.engines._sqlite_connection import SQLiteConnection
from mongoeco.engines._sqlite_write_scope import sqlite_write_scope
from mongoeco.engines.semantic_core import iter_filtered_documents
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_planner import SQLiteReadExecutionPlan
from mongoeco.errors import BulkWriteError, OperationFailure, WriteError
from mongoeco.types import UpdateResult, WriteCommandResult

from hub.store import IDS_PER_COMMAND

log = logging.getLogger(__name__)

sqlite_engine._sqlite_append_change = lambda *args, **kwargs: None

# Index element types whose keys sort, within their type, as BSON orders the values.
ORDERED_KEY_TYPES = frozenset({"null", "number", "string", "bool", "datetime", "objectid"})
RESIDUALS_KEPT = 4096
MATCH_FUNCTION = "hub_match"
MONGOECO_VERSION = importlib.metadata.version("mongoeco")
PRAGMAS = (
    "PRAGMA cache_size = -65536",  # 64 MiB of pages per connection (default 2 MiB)
    "PRAGMA mmap_size = 268435456",
)
# A commit that finds the write-ahead log this long (in pages) checkpoints it
# itself. `WalCheckpointer` keeps the log far shorter from its own thread; this
# is the backstop should it fall behind (SQLite's default is 1,000 pages).
AUTOCHECKPOINT_PAGES = 16_384
SQL_UPDATE_OPERATORS = frozenset({"$set", "$unset"})  # what the engine writes as SQL
# What a single update may raise and still leave the others to run (as the
# engine's own `update` command has it).
UPDATE_ITEM_ERRORS = (WriteError, OperationFailure, TypeError, ValueError)
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
RANGE_OPERATORS = {
    LessThanCondition: "<",
    LessThanOrEqualCondition: "<=",
    GreaterThanCondition: ">",
    GreaterThanOrEqualCondition: ">=",
}


def _only_ids(projection: Any) -> bool:
    return isinstance(projection, dict) and projection in ({"_id": 1}, {"_id": True})


def _id_values(clause: Any) -> tuple[Any, ...] | None:
    """The `_id`s an `_id` equality or `$in` names, when each is a string or an
    ObjectId (whose storage key is the only one that can match)."""
    if getattr(clause, "field", None) != "_id":
        return None
    if isinstance(clause, EqualsCondition):
        values: tuple[Any, ...] = (clause.value,)
    elif isinstance(clause, InCondition):
        values = tuple(clause.values)
    else:
        return None
    if not values or len(values) > IDS_PER_COMMAND:
        return None
    if not all(type(v) in (str, ObjectId) for v in values):
        return None
    return values


@dataclasses.dataclass(frozen=True)
class LeanOutcome:
    """What a lean update reports (the counts; no before and after images)."""

    result: Any


@dataclasses.dataclass(slots=True)
class SimpleUpdate:
    """A wire update the store can apply without compiling it: by a string
    `_id`, `$set` of plain values and `$inc` by integers, on top-level fields.
    `compile` gives the engine's compiled operation, for when the document does
    not allow the simple path after all (or raises the error compiling raises)."""

    doc_id: str
    sets: dict[str, Any]
    incs: dict[str, int]
    compile: Any


def _same_for_update(stored: Any, value: Any) -> bool:
    """Whether the engine's `$set` leaves a stored value as it is: the same type
    and equal, where a float is never the same unless both are NaN, and a set
    document or array always counts as a change (the engine compares it, in its
    own container types, with the stored one of the plain types)."""
    kind = type(stored)
    if kind is not type(value) or kind is dict or kind is list:
        return False
    if kind is float:
        return math.isnan(stored) and math.isnan(value)
    return bool(stored == value)


def _plain_field(key: object) -> bool:
    return type(key) is str and key != "" and key != "_id" and "." not in key and key[0] != "$"


def simple_update_parts(entry: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, int]] | None:
    """(`_id`, `$set`, `$inc`) of an update entry the simple path can apply, else None."""
    selector, change = entry.get("q"), entry.get("u")
    if (
        not isinstance(selector, dict)
        or len(selector) != 1
        or type(selector.get("_id")) is not str
        or not isinstance(change, dict)
        or not change
        or not set(change) <= {"$set", "$inc"}
    ):
        return None
    sets, incs = change.get("$set", {}), change.get("$inc", {})
    if type(sets) is not dict or type(incs) is not dict or set(sets) & set(incs):
        return None
    if ("$set" in change and not sets) or ("$inc" in change and not incs):
        return None
    if not all(_plain_field(key) for key in itertools.chain(sets, incs)):
        return None
    if not all(type(value) is int and INT64_MIN <= value <= INT64_MAX for value in incs.values()):
        return None
    try:
        plain_encode(sets)
    except _NotPlain:
        return None
    return selector["_id"], sets, incs


def _scalar_fields(document: dict[str, Any], fields: list[str]) -> bool:
    """Whether none of these top-level fields holds an array or a sub-document."""
    return not any(isinstance(document.get(f), (list, dict)) for f in fields)


class HubConnection(SQLiteConnection):
    """The engine's connection, keeping one physical index per entry table.

    The engine gives every logical index three physical SQLite indexes: an
    expression index on `documents` (over every document of every collection:
    each write to any collection evaluates and maintains all of them), and a
    copy of the same `(collection_id, index_name, ...)` index on each entry
    table. Entries carry their collection and index name first, so one index
    per entry table answers for all; here the engine names the shared one for
    every logical index (`HubSQLiteEngine._physical_*_index_name`), creating it
    is idempotent, dropping one logical index leaves it (its entries are still
    deleted by the engine), and the expression indexes on `documents` are not
    made: the engine reads through the entry indexes.
    """

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if sql.startswith(("CREATE INDEX ", "DROP INDEX ")):
            rewritten = _physical_index_statement(sql)
            if rewritten is None:
                return super().execute("SELECT 1 WHERE 0")
            sql = rewritten
        return super().execute(sql, parameters)


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


class HubSQLiteEngine(SQLiteEngine):
    capabilities = dataclasses.replace(SQLiteEngine.capabilities, change_delivery="none")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Fields (by path, in any collection) seen holding an array, or with no
        # scalar index entry (missing, an array or a sub-document), or holding a
        # value whose index key does not sort as BSON does. Only ever grows.
        self._hub_seen_arrays: set[str] = set()
        self._hub_seen_gaps: set[str] = set()
        self._hub_seen_unordered: set[str] = set()
        # The same facts read once from the stored data, per (db, coll, field).
        self._hub_facts: dict[tuple[str, str, str, str], bool] = {}
        self._hub_residuals: OrderedDict[int, Any] = OrderedDict()
        self._hub_tokens = itertools.count(1)
        self._hub_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    # -- writes -------------------------------------------------------------------

    def _validate_document_against_unique_indexes(  # type: ignore[override]
        self,
        db_name: str,
        coll_name: str,
        document: Any,
        *,
        exclude_storage_key: str | None = None,
        skip_id_check: bool = False,
        scan_payload_id: bool = False,
    ) -> None:
        if scan_payload_id and not id_contains_numeric_value(document.get("_id")):
            scan_payload_id = False
        super()._validate_document_against_unique_indexes(
            db_name,
            coll_name,
            document,
            exclude_storage_key=exclude_storage_key,
            skip_id_check=skip_id_check,
            scan_payload_id=scan_payload_id,
        )

    def _plan_requires_python_for_decimal_numeric(  # type: ignore[override]
        self, db_name: str, coll_name: str, plan: Any
    ) -> bool:
        return bool(self._plan_contains_decimal_operand(plan))

    def _scalar_value_signature_for_document(  # type: ignore[override]
        self, document: Any, field: str
    ) -> tuple[str, str] | None:
        # Every write that maintains a single-field index asks this, per document.
        signature = super()._scalar_value_signature_for_document(document, field)
        if signature is None:
            found, value = get_document_value(document, field)
            if found and isinstance(value, list):
                self._hub_seen_arrays.add(field)
            self._hub_seen_gaps.add(field)
        elif signature[0] not in ORDERED_KEY_TYPES:
            self._hub_seen_unordered.add(field)
        return signature

    async def _run_blocking(self, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        # The engine hands every operation to a worker thread and back. In the
        # store's own process nothing else runs on the event loop but the wire
        # server, and the engine's lock lets one operation run at a time anyway:
        # here it runs on the loop's thread, without the two thread hops.
        return func(*args, **kwargs)

    async def hub_update_batch(
        self,
        db_name: str,
        coll_name: str,
        operations: list[Any],
        *,
        ordered: bool,
        session: Any = None,
    ) -> list[Any]:
        """Run compiled single-document updates in one transaction, one after the
        other, each as the engine's own update does; return each one's outcome,
        or the error it raised (its own changes undone). Ordered: stop at the
        first error. The engine's lock is held throughout, so no other client's
        write runs inside this transaction, and none is acknowledged before its
        own commit."""
        return list(
            await self._run_blocking(
                self._hub_update_batch_sync, db_name, coll_name, operations, ordered, session
            )
        )

    def _hub_update_batch_sync(
        self, db_name: str, coll_name: str, operations: list[Any], ordered: bool, context: Any
    ) -> list[Any]:
        results: list[Any] = []
        with self._lock:
            conn = self._require_connection(context)
            with (
                self._bind_connection(conn),
                sqlite_write_scope(
                    conn,
                    begin_write=lambda current: self._begin_write(current, context),
                    commit_write=lambda current: self._commit_write(current, context),
                    rollback_write=lambda current: self._rollback_write(current, context),
                ),
            ):
                lean = self._hub_lean_indexes(conn, db_name, coll_name)
                for operation in operations:
                    if isinstance(operation, SimpleUpdate):
                        if lean is not None:
                            outcome = self._hub_simple_update(
                                conn, db_name, coll_name, operation, lean
                            )
                            if outcome is not None:
                                results.append(outcome)
                                continue
                        try:
                            operation = operation.compile()
                        except UPDATE_ITEM_ERRORS as error:
                            results.append(error)
                            if ordered:
                                break
                            continue
                    if lean is not None:
                        try:
                            outcome = self._hub_lean_update(
                                conn, db_name, coll_name, operation, lean
                            )
                        except UPDATE_ITEM_ERRORS as error:
                            results.append(error)
                            if ordered:
                                break
                            continue
                        if outcome is not None:
                            results.append(outcome)
                            continue
                    # Inside the open transaction each update is a savepoint.
                    try:
                        outcome = self._update_with_operation_sync(
                            db_name,
                            coll_name,
                            operation,
                            False,  # upsert
                            None,  # upsert seed
                            None,  # selector filter
                            operation.context.session,
                            None,  # dialect
                            False,  # bypass document validation
                            None,  # replacement document
                            None,  # on commit
                            operation.context,
                        )
                    except UPDATE_ITEM_ERRORS as error:
                        results.append(error)
                        if ordered:
                            break
                    else:
                        results.append(outcome)
        return results

    # -- physical indexes -----------------------------------------------------------

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

    def _hub_lean_indexes(self, conn: Any, db_name: str, coll_name: str) -> list[Any] | None:
        """The collection's indexes when its updates may take the lean path (only
        plain single-field indexes on top-level fields; no validator, TTL or
        search index), else None."""
        indexes = list(self._load_indexes(db_name, coll_name))
        for index in indexes:
            fields = index["fields"]
            if (
                len(fields) != 1
                or "." in fields[0]
                or index.get("unique")
                or index.get("sparse")
                or index.get("partial_filter_expression") is not None
                or index.get("expire_after_seconds") is not None
                or index.get("collation") is not None
                or not self._supports_scalar_index(index)
            ):
                return None
        if self._load_search_index_rows(db_name, coll_name):
            return None
        if self._collection_options_or_empty_sync(conn, db_name, coll_name).get("validator"):
            return None
        return indexes

    def _hub_simple_update(
        self, conn: Any, db_name: str, coll_name: str, update: SimpleUpdate, indexes: list[Any]
    ) -> Any:
        """`$set` and `$inc` of top-level fields the document already has, applied
        without compiling the update: each value is replaced in place (so the
        fields keep their order) and an increment adds to a stored integer. None
        when the document lacks one of the fields, an increment meets anything
        but an integer or leaves int64's range, or an indexed field holds an
        array or a sub-document: the compiled path then decides. Modified, and
        written, as the engine's `$set` and `$inc` decide it (`_same_for_update`).
        """
        storage_key = self._storage_key(update.doc_id)
        original = self._hub_stored_document(conn, db_name, coll_name, storage_key)
        if original is None:
            return LeanOutcome(UpdateResult(matched_count=0, modified_count=0))
        document = dict(original)
        modified = False
        for key, value in update.sets.items():
            if key not in document:
                return None
            modified = modified or not _same_for_update(document[key], value)
            document[key] = value
        for key, amount in update.incs.items():
            current = document.get(key)
            if type(current) is not int:
                return None
            total = current + amount
            if not INT64_MIN <= total <= INT64_MAX:
                return None
            modified = modified or amount != 0
            document[key] = total
        fields = [index["fields"][0] for index in indexes]
        if not _scalar_fields(original, fields) or not _scalar_fields(document, fields):
            return None
        if not modified:
            return LeanOutcome(UpdateResult(matched_count=1, modified_count=0))
        self._hub_rewrite(conn, db_name, coll_name, storage_key, original, document, indexes)
        return LeanOutcome(UpdateResult(matched_count=1, modified_count=1))

    def _hub_stored_document(
        self, conn: Any, db_name: str, coll_name: str, storage_key: Any
    ) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT document FROM documents WHERE db_name = ? AND coll_name = ? "
            "AND storage_key = ?",
            (db_name, coll_name, storage_key),
        ).fetchone()
        return None if row is None else self._deserialize_document(row[0])

    def _hub_rewrite(
        self,
        conn: Any,
        db_name: str,
        coll_name: str,
        storage_key: Any,
        original: dict[str, Any],
        document: dict[str, Any],
        indexes: list[Any],
    ) -> None:
        """Write a changed document back, and change its index entries whose key
        changed."""
        conn.execute(
            "UPDATE documents SET document = ? WHERE db_name = ? AND coll_name = ? "
            "AND storage_key = ?",
            (self._serialize_document(document), db_name, coll_name, storage_key),
        )
        before = set(self._build_scalar_rows_for_document(storage_key, original, indexes))
        after = set(self._build_scalar_rows_for_document(storage_key, document, indexes))
        if before != after:
            collection_id = self._lookup_collection_id(conn, db_name, coll_name, create=True)
            conn.executemany(
                "DELETE FROM scalar_index_entries WHERE collection_id = ? AND storage_key = ? "
                "AND index_name = ? AND element_type = ? AND type_score = ? "
                "AND element_key = ?",
                [(collection_id, storage_key, *entry) for entry in before - after],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO scalar_index_entries (collection_id, index_name, "
                "storage_key, element_type, type_score, element_key) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (collection_id, name, storage_key, kind, score, key)
                    for name, kind, score, key in after - before
                ],
            )
        self._invalidate_collection_features_cache(db_name, coll_name)

    def _hub_lean_update(
        self, conn: Any, db_name: str, coll_name: str, operation: Any, indexes: list[Any]
    ) -> Any:
        """An operator update of one document by its string or ObjectId `_id`,
        done directly: read the row, apply the engine's compiled update, write
        the row back and change only the index entries whose key changed. None
        when the update is not of that kind, or an indexed field holds an array
        or a sub-document (the engine's own path then does it)."""
        selector = operation.filter_spec
        if (
            not isinstance(selector, dict)
            or len(selector) != 1
            or type(selector.get("_id")) not in (str, ObjectId)
            or operation.array_filters is not None
            or operation.collation is not None
            or getattr(operation, "sort", None)
            or getattr(operation, "hint", None) is not None
        ):
            return None
        semantics = sqlite_engine.compile_update_semantics(operation)
        plan = semantics.compiled_update_plan
        if type(plan) is not CompiledUpdatePlan or plan.touches_document_id:
            return None
        storage_key = self._storage_key(selector["_id"])
        original = self._hub_stored_document(conn, db_name, coll_name, storage_key)
        if original is None:
            return LeanOutcome(UpdateResult(matched_count=0, modified_count=0))
        fields = [index["fields"][0] for index in indexes]
        if not _scalar_fields(original, fields):
            return None
        document = copy_containers(original)
        if not plan.apply(document, variables=semantics.variables):
            return LeanOutcome(UpdateResult(matched_count=1, modified_count=0))
        if not _scalar_fields(document, fields) or document.get("_id") != original["_id"]:
            return None  # nothing is written yet: the engine's own path does it all
        self._hub_rewrite(conn, db_name, coll_name, storage_key, original, document, indexes)
        return LeanOutcome(UpdateResult(matched_count=1, modified_count=1))

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
        unnamed = conn.execute(
            "SELECT 1 FROM indexes WHERE scalar_physical_name IS NULL "
            "AND json_array_length(fields) = 1 LIMIT 1"
        ).fetchone()
        if row is not None and row[0] == stamp and unnamed is None:
            return
        super()._backfill_scalar_indexes_sync(conn)
        conn.execute(
            "INSERT OR REPLACE INTO hub_engine_meta (key, value) VALUES ('scalar_entries', ?)",
            (stamp,),
        )

    # -- the row check used by both index paths ------------------------------------

    def _create_sqlite_connection(self) -> Any:
        # The engine's own, with the connection class that keeps the shared
        # physical indexes (see `HubConnection`).
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
        connection.create_function(MATCH_FUNCTION, 2, self._hub_match, deterministic=False)
        return connection

    def _hub_match(self, token: int, payload: str) -> int:
        with self._hub_lock:
            semantics = self._hub_residuals.get(token)
        if semantics is None:
            raise RuntimeError("query filter expired before its rows were read")
        document = self._deserialize_document(payload)
        return 1 if any(True for _ in iter_filtered_documents((document,), semantics)) else 0

    def _hub_residual_token(self, semantics: Any) -> int:
        with self._hub_lock:
            token = next(self._hub_tokens)
            self._hub_residuals[token] = dataclasses.replace(
                semantics, sort=None, skip=0, limit=None, projection=None
            )
            while len(self._hub_residuals) > RESIDUALS_KEPT:
                self._hub_residuals.popitem(last=False)
            return token

    # -- facts about a field ------------------------------------------------------

    def _hub_fact(self, db_name: str, coll_name: str, field: str, kind: str, index: Any) -> bool:
        key = (db_name, coll_name, field, kind)
        known = self._hub_facts.get(key)
        if known is None:
            known = self._hub_read_fact(db_name, coll_name, field, kind, index)
            self._hub_facts[key] = known
        seen = {
            "array": self._hub_seen_arrays,
            "gap": self._hub_seen_gaps,
            "unordered": self._hub_seen_unordered,
        }[kind]
        return known or field in seen

    def _hub_read_fact(
        self, db_name: str, coll_name: str, field: str, kind: str, index: Any
    ) -> bool:
        if kind == "array":
            return bool(
                SQLiteEngine._field_is_top_level_array_in_collection(
                    self, db_name, coll_name, field
                )
            )
        conn = self._require_connection()
        collection_id = self._lookup_collection_id(conn, db_name, coll_name)
        if collection_id is None:
            return False
        if kind == "gap":
            (documents,) = conn.execute(
                "SELECT COUNT(*) FROM documents WHERE db_name = ? AND coll_name = ?",
                (db_name, coll_name),
            ).fetchone()
            (entries,) = conn.execute(
                "SELECT COUNT(*) FROM scalar_index_entries "
                "WHERE collection_id = ? AND index_name = ?",
                (collection_id, index["name"]),
            ).fetchone()
            return int(entries) != int(documents)
        marks = ", ".join("?" for _ in ORDERED_KEY_TYPES)
        row = conn.execute(
            "SELECT 1 FROM scalar_index_entries "  # noqa: S608
            "WHERE collection_id = ? AND index_name = ? "
            f"AND element_type NOT IN ({marks}) LIMIT 1",
            (collection_id, index["name"], *sorted(ORDERED_KEY_TYPES)),
        ).fetchone()
        return row is not None

    def _field_is_top_level_array_in_collection(  # type: ignore[override]
        self, db_name: str, coll_name: str, field: str
    ) -> bool:
        if field == "_id":
            return False  # an `_id` is never an array (the engine refuses one)
        if "." not in field and self._find_scalar_sort_index(db_name, coll_name, field):
            return self._hub_fact(db_name, coll_name, field, "array", None)
        return bool(super()._field_is_top_level_array_in_collection(db_name, coll_name, field))

    # -- the index paths ------------------------------------------------------------

    def _compile_read_execution_plan(  # type: ignore[override]
        self,
        db_name: str,
        coll_name: str,
        semantics: Any,
        *,
        select_clause: str = "document",
        hint: Any = None,
    ) -> SQLiteReadExecutionPlan:
        if (
            select_clause == "document"
            and hint is None
            and semantics.hint is None
            and semantics.text_query is None
            and semantics.collation is None
        ):
            plan = self._index_seek_plan(db_name, coll_name, semantics)
            if plan is None:
                plan = self._index_walk_plan(db_name, coll_name, semantics)
            if plan is not None:
                return plan
        return super()._compile_read_execution_plan(
            db_name, coll_name, semantics, select_clause=select_clause, hint=hint
        )

    def _index_from(
        self, db_name: str, coll_name: str, collection_id: int, index: Any
    ) -> tuple[str, list[Any]]:
        """FROM and WHERE for one single-field index joined to its documents."""
        physical = self._quote_identifier(str(index["scalar_physical_name"]))
        sql = (
            f"scalar_index_entries AS entry INDEXED BY {physical} "
            "JOIN documents ON documents.db_name = ? AND documents.coll_name = ? "
            "AND documents.storage_key = entry.storage_key "
            "WHERE entry.collection_id = ? AND entry.index_name = ?"
        )
        return sql, [db_name, coll_name, collection_id, index["name"]]

    def _index_seek_plan(
        self, db_name: str, coll_name: str, semantics: Any
    ) -> SQLiteReadExecutionPlan | None:
        query_plan = semantics.query_plan
        clauses = query_plan.clauses if isinstance(query_plan, AndCondition) else (query_plan,)
        collection_id = self._lookup_collection_id(self._require_connection(), db_name, coll_name)
        if collection_id is None:
            return None
        for clause in clauses:
            ids = _id_values(clause)
            if ids is not None:
                marks = ", ".join("?" for _ in ids)
                sql = (
                    "FROM documents WHERE documents.db_name = ? AND documents.coll_name = ? "
                    f"AND documents.storage_key IN ({marks})"
                )
                params = [db_name, coll_name, *(self._storage_key(i) for i in ids)]
                return self._hub_seek(semantics, len(clauses) > 1, sql, params)
        for clause in clauses:
            if (
                isinstance(clause, EqualsCondition)
                and type(clause.value) is str
                and "." not in clause.field
                and clause.field != "_id"
            ):
                index = self._find_scalar_sort_index(db_name, coll_name, clause.field)
                if index is not None and not self._hub_fact(
                    db_name, coll_name, clause.field, "array", index
                ):
                    from_where, params = self._index_from(db_name, coll_name, collection_id, index)
                    seek: list[Any] = [*params, self._multikey_type_score("string"), clause.value]
                    sql = f"FROM {from_where} AND entry.type_score = ? AND entry.element_key = ?"
                    return self._hub_seek(semantics, len(clauses) > 1, sql, seek)
        for clause in clauses:
            field = getattr(clause, "field", "")
            if type(clause) not in RANGE_OPERATORS or "." in field or field == "_id":
                continue
            index = self._find_scalar_sort_index(db_name, coll_name, field)
            if index is None or self._hub_fact(db_name, coll_name, field, "array", index):
                continue
            ranges = [c for c in clauses if type(c) in RANGE_OPERATORS]
            usable = [b for b in (self._entry_condition(c, field) for c in ranges) if b]
            if not usable:
                continue
            from_where, params = self._index_from(db_name, coll_name, collection_id, index)
            sql = f"FROM {from_where}"
            for condition, values in usable:
                sql += f" AND {condition}"
                params += values
            # The bounds select exactly what they say, except among numbers (NaN
            # has a key among them): there, and for the rest of the filter, the
            # filter itself decides per row.
            numbers = self._multikey_type_score("number")
            exact = len(usable) == len(clauses) and all(v[0] != numbers for _, v in usable)
            return self._hub_seek(semantics, not exact, sql, params)
        return None

    def _hub_seek(
        self, semantics: Any, residual: bool, sql: str, params: list[Any]
    ) -> SQLiteReadExecutionPlan:
        """The plan for the few rows `sql` (FROM and WHERE) selects: the rest of
        the filter checked per row, the sort (if any) done on them by the engine.
        When only `_id`s are asked for, only they are read out of each row."""
        # Only quoted identifiers and placeholders are formatted into the SQL of
        # this module; every value is bound.
        columns = "documents.document"
        if not semantics.sort and _only_ids(semantics.projection):
            columns = "json_object('_id', documents.document -> '$._id')"
        sql = f"SELECT {columns} {sql}"
        if residual:
            sql += f" AND {MATCH_FUNCTION}(?, documents.document)"
            params.append(self._hub_residual_token(semantics))
        sort = bool(semantics.sort)
        if not sort and (semantics.limit is not None or semantics.skip):
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if semantics.limit is None else semantics.limit, semantics.skip]
        return self._hub_plan(semantics, "hub-index-seek", sql, params, python_sort=sort)

    def _index_walk_plan(
        self, db_name: str, coll_name: str, semantics: Any
    ) -> SQLiteReadExecutionPlan | None:
        sort = semantics.sort
        if not sort or semantics.limit is None or semantics.limit <= 0:
            return None
        field, direction = sort[0]
        if direction not in (1, -1) or "." in field:
            return None
        index = self._find_scalar_sort_index(db_name, coll_name, field)
        if index is None:
            return None
        collection_id = self._lookup_collection_id(self._require_connection(), db_name, coll_name)
        if collection_id is None:
            return None
        if self._hub_fact(db_name, coll_name, field, "gap", index) or self._hub_fact(
            db_name, coll_name, field, "unordered", index
        ):
            return None
        order = "DESC" if direction == -1 else "ASC"
        # The boundary is the last row taken: the lowest key walking down, the
        # highest walking up.
        back = "ASC" if direction == -1 else "DESC"
        from_where, base = self._index_from(db_name, coll_name, collection_id, index)
        bound_sql, bound_params = self._walk_bounds(semantics.query_plan, field)
        match_sql, match_params = "", []
        if not isinstance(semantics.query_plan, MatchAll):
            match_sql = f" AND {MATCH_FUNCTION}(?, documents.document)"
            match_params = [self._hub_residual_token(semantics)]
        sql = (
            "WITH walk AS MATERIALIZED ("  # noqa: S608
            "SELECT entry.type_score AS score, entry.element_key AS key, "
            "documents.storage_key AS storage_key, documents.document AS document "
            f"FROM {from_where}{bound_sql}{match_sql} "
            f"ORDER BY entry.type_score {order}, entry.element_key {order} LIMIT ?), "
            f"boundary AS (SELECT score, key FROM walk ORDER BY score {back}, key {back} LIMIT 1) "
            "SELECT document FROM walk UNION ALL "
            f"SELECT documents.document FROM {from_where} "
            "AND entry.type_score = (SELECT score FROM boundary) "
            "AND entry.element_key = (SELECT key FROM boundary) "
            f"AND documents.storage_key NOT IN (SELECT storage_key FROM walk){match_sql}"
        )
        params = [
            *base,
            *bound_params,
            *match_params,
            semantics.skip + semantics.limit,
            *base,
            *match_params,
        ]
        return self._hub_plan(semantics, "hub-index-walk", sql, params, python_sort=True)

    def _walk_bounds(self, query_plan: Any, field: str) -> tuple[str, list[Any]]:
        """Conditions on the index entries that every row matching the filter
        meets, read from the filter's own conditions on the walked field (a
        cursor's `$lt`, an `$or` of them): the walk then skips what lies before
        a cursor by its index keys alone. The whole filter is still checked on
        each row, so these only need to let every match through."""
        clauses = query_plan.clauses if isinstance(query_plan, AndCondition) else (query_plan,)
        sql, params = "", []
        for clause in clauses:
            found = self._entry_condition(clause, field)
            if found is not None:
                sql += f" AND {found[0]}"
                params += found[1]
        return sql, params

    def _entry_condition(self, clause: Any, field: str) -> tuple[str, list[Any]] | None:
        if isinstance(clause, OrCondition):
            parts = [self._branch_condition(branch, field) for branch in clause.clauses]
            if not parts or any(part is None for part in parts):
                return None
            return (
                "(" + " OR ".join(part[0] for part in parts if part) + ")",
                [p for part in parts if part for p in part[1]],
            )
        if getattr(clause, "field", None) != field:
            return None
        if isinstance(clause, EqualsCondition):
            try:
                signatures = self._multikey_signatures_for_query_value(
                    clause.value, null_matches_undefined=clause.null_matches_undefined
                )
            except NotImplementedError:
                return None
            params: list[Any] = []
            for element_type, element_key in signatures:
                params += [self._multikey_type_score(element_type), element_key]
            term = "(entry.type_score = ? AND entry.element_key = ?)"
            terms = " OR ".join(term for _ in signatures)
            return f"({terms})", params
        operator = RANGE_OPERATORS.get(type(clause))
        if operator is None:
            return None
        signature = self._multikey_value_signature(clause.value)
        if signature is None or signature[0] not in ORDERED_KEY_TYPES or signature[0] == "null":
            return None
        # A range matches only values of its operand's type (BSON type brackets).
        return (
            f"(entry.type_score = ? AND entry.element_key {operator} ?)",
            [self._multikey_type_score(signature[0]), signature[1]],
        )

    def _branch_condition(self, branch: Any, field: str) -> tuple[str, list[Any]] | None:
        clauses = branch.clauses if isinstance(branch, AndCondition) else (branch,)
        for clause in clauses:
            if not isinstance(clause, OrCondition):
                found = self._entry_condition(clause, field)
                if found is not None:
                    return found
        return None

    @staticmethod
    def _hub_plan(
        semantics: Any, strategy: str, sql: str, params: list[Any], *, python_sort: bool
    ) -> SQLiteReadExecutionPlan:
        return SQLiteReadExecutionPlan(
            semantics=semantics,
            strategy=strategy,
            execution_lineage=(),
            physical_plan=(),
            use_sql=True,
            sql=sql,
            params=tuple(params),
            apply_python_sort=python_sort,
        )


class WalCheckpointer:
    """Checkpoints the store's write-ahead log from a thread of its own.

    SQLite checkpoints the log inside the commit that finds it 1,000 pages long:
    that commit, and every command queued behind it on the store's one event
    loop, waits while pages are read, written back and synced. Here a thread
    with its own connection runs a passive checkpoint every `interval` seconds
    (it takes no lock a writer needs, and SQLite lets go of the GIL while it
    works), so commits only append to the log. Stopping runs a last, full
    checkpoint."""

    def __init__(self, path: str, interval: float = 0.5) -> None:
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout = 5000")
            while not self._stopping.wait(self._interval):
                self._checkpoint(connection, "PASSIVE")
            self._checkpoint(connection, "TRUNCATE")
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection, mode: str) -> None:
        try:
            connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as error:  # busy, or the store is closing: next time
            log.warning("store checkpoint skipped", extra={"error": str(error)})
        else:
            self.checkpoints += 1


def copy_containers(value: Any, memo: Any = None) -> Any:  # deepcopy's signature
    """A copy of a document's dicts and lists, sharing every other value.

    What the engine's update copies a document for: the update changes the
    copy's containers (set, unset, push...) and puts new values in; it never
    changes a stored value in place, and every scalar type a document holds is
    immutable. `copy.deepcopy` copies each value too, a third of an update's
    cost. Containers of other types are deep-copied as before.
    """
    kind = type(value)
    if kind is dict:
        return {key: copy_containers(item) for key, item in value.items()}
    if kind is list:
        return [copy_containers(item) for item in value]
    if isinstance(value, (dict, list, set, bytearray)):
        return copy.deepcopy(value)
    return value


def patch_update_translation() -> None:
    """An update with an operator the engine cannot write as SQL (`$inc`, `$push`
    ...) is refused by its SQL translation only after it has walked the whole
    stored document; here it is refused first, and the engine's Python path
    applies it as before."""
    translate = sqlite_engine.translate_compiled_update_plan

    def translate_sql_operators_only(plan: Any, *, current_document: Any = None) -> Any:
        if any(op.operator not in SQL_UPDATE_OPERATORS for op in plan.compiled_operators):
            raise NotImplementedError("Unsupported update operator for SQL translation")
        return translate(plan, current_document=current_document)

    sqlite_engine.translate_compiled_update_plan = translate_sql_operators_only


def patch_update_copies() -> None:
    """The engine's write paths copy documents with `copy_containers`: an update
    (three copies in the engine, two in the update plan, two in its outcome) and
    an insert (two per document)."""
    for module in (modify_ops, operators, results, collection_insert):
        module.deepcopy = copy_containers  # type: ignore[attr-defined]


class _NotPlain(Exception):
    """A value `plain_encode` leaves to the engine's own codec."""


_NOT_PLAIN = _NotPlain()
_PLAIN_SCALARS = frozenset({str, float, bool, type(None)})
_DOCUMENT_TYPES = frozenset[type]((dict, codec_module._InternalBsonDocument))
_ARRAY_TYPES = frozenset[type]((list, codec_module._InternalBsonArray))
_NUMERIC_TAGS = {BsonInt32: "int32", BsonInt64: "int64", BsonDouble: "double"}
_MARKER = DocumentCodec._MARKER


def plain_encode(value: Any) -> Any:
    """The engine codec's encoding of a document made of the types a hub document
    holds (strings, numbers, booleans, None, datetimes, ObjectIds, the engine's
    number wrappers, dicts and lists), checked as the codec checks them, in one
    walk; `_NotPlain` for anything else (other types, an integer out of int64's
    range, a key that is not a string, a dict that looks like a tagged value), so
    the engine's own codec decides those: the same result or the same error."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise _NOT_PLAIN
    if kind in _DOCUMENT_TYPES:
        encoded = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NOT_PLAIN
            encoded[key] = plain_encode(item)
        if _MARKER in encoded:
            raise _NOT_PLAIN
        return encoded
    if kind in _ARRAY_TYPES:
        return [plain_encode(item) for item in value]
    if kind is datetime.datetime:
        return {
            _MARKER: {"type": "datetime", "value": normalize_utc_bson_datetime(value).isoformat()}
        }
    if kind in OBJECT_ID_TYPES:
        return {_MARKER: {"type": "objectid", "value": str(normalize_object_id(value))}}
    tag = _NUMERIC_TAGS.get(kind)
    if tag is not None:
        return {_MARKER: {"type": tag, "value": value.value}}
    raise _NOT_PLAIN


def patch_codec_validation() -> None:
    """Check each document's values once per encoding, not once per level, and
    encode the plain documents the hub writes in one walk.

    The engine's codec re-checks the whole subtree at every document it descends
    into (and each scalar again), so a value three levels down was checked four
    times; and it tries some thirty types on each scalar before it keeps a string
    as it is. A document `plain_encode` can encode is encoded by it; any other is
    checked once, from the top, then encoded by the engine's codec: the same
    values are refused with the same errors."""
    from mongoeco.core import codec

    if getattr(codec, "_hub_validation_patched", False):
        return
    check = codec.validate_bson_value
    encode = codec.DocumentCodec.encode
    state = threading.local()

    def check_outside_encoding(value: object) -> None:
        if not getattr(state, "encoding", False):
            check(value)

    def encode_checked_once(data: Any) -> Any:
        if getattr(state, "encoding", False):
            return encode(data)
        try:
            return plain_encode(data)
        except _NotPlain:
            pass
        check(data)
        state.encoding = True
        try:
            return encode(data)
        finally:
            state.encoding = False

    codec.validate_bson_value = check_outside_encoding
    codec.DocumentCodec.encode = staticmethod(encode_checked_once)  # type: ignore[method-assign]
    codec._hub_validation_patched = True  # type: ignore[attr-defined]


_WIRE_PLAIN = frozenset({str, int, float, bool, type(None), datetime.datetime})


def patch_wire_decoding() -> None:
    """Decode the wire's documents without trying a dozen BSON types on each
    string, number and date.

    The wire layer turns each decoded BSON value into the engine's own types;
    a plain dict, list, string, integer, float, boolean, None or datetime it
    keeps as it is (an `Int64` is an int of another type, and goes to the engine
    as before). Those are answered first here; every other value is handed to
    the engine's own function."""
    from mongoeco.wire import protocol

    if getattr(protocol, "_hub_decoding_patched", False):
        return
    engine_decode = protocol.decode_wire_value

    def decode_wire_value(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {key: decode_wire_value(item) for key, item in value.items()}
        if kind is list:
            return [decode_wire_value(item) for item in value]
        if kind in _WIRE_PLAIN:
            return value
        return engine_decode(value)

    protocol.decode_wire_value = decode_wire_value
    protocol._hub_decoding_patched = True  # type: ignore[attr-defined]


def patch_insert_command() -> None:
    """The wire `insert` of two or more documents goes through the batch path."""
    service = write_commands.DatabaseAdminWriteCommandService
    one_by_one = service.command_insert

    async def command_insert(self: Any, spec: dict[str, object], *, session: Any = None) -> Any:
        documents = spec.get("documents")
        if (
            not isinstance(documents, list)
            or len(documents) < 2
            or spec.get("bypassDocumentValidation")
            or not isinstance(spec.get("insert"), str)
            or not all(isinstance(d, dict) for d in documents)
        ):
            return await one_by_one(self, spec, session=session)
        collection = self._admin._database.get_collection(spec["insert"])
        ordered = spec.get("ordered", True) is not False
        try:
            result = await collection.insert_many(documents, ordered=ordered, session=session)
        except BulkWriteError as error:
            details: dict[str, Any] = getattr(error, "details", None) or {}
            return {
                "n": int(details.get("nInserted", 0)),
                "writeErrors": [
                    {
                        "index": int(item.get("index", 0)),
                        "code": int(item.get("code") or 11000),
                        "errmsg": str(item.get("errmsg", "write error")),
                    }
                    for item in details.get("writeErrors", [])
                ],
                "ok": 1.0,
            }
        return {"n": len(result.inserted_ids), "ok": 1.0}

    service.command_insert = command_insert  # type: ignore[method-assign]


# A wire `update` entry the batch path takes: a filter and an operator update,
# nothing else (no upsert, multi, array filters, hint, collation or sort).
BATCH_UPDATE_KEYS = frozenset({"q", "u", "multi", "upsert"})
BATCH_COMMAND_KEYS = frozenset(
    {"update", "updates", "ordered", "writeConcern", "lsid", "txnNumber", "$db", "comment"}
)


def _batchable_update(entry: object) -> bool:
    if not isinstance(entry, dict) or not set(entry) <= BATCH_UPDATE_KEYS:
        return False
    if entry.get("multi") or entry.get("upsert"):
        return False
    change = entry.get("u")
    return (
        isinstance(entry.get("q"), dict)
        and isinstance(change, dict)
        and bool(change)
        and all(isinstance(k, str) and k.startswith("$") for k in change)
    )


@write_command_errors
async def update_one(collection: Any, error: BaseException) -> None:
    """Raise an update's error as the engine's `update_one` reports it."""
    raise error


def patch_update_command() -> None:
    """The wire `update` of two or more single-document operator updates runs in
    one transaction (`HubSQLiteEngine.hub_update_batch`) instead of one each.

    Each update is compiled and applied exactly as the engine's `update_one`
    does, its errors reported the same way; what changes is that they share one
    commit and one trip to the engine's worker thread. In-process change streams
    (which the hub does not use) do not see these updates.
    """
    service = write_commands.DatabaseAdminWriteCommandService
    one_by_one = service.command_update

    async def command_update(
        self: Any, spec: dict[str, object], *, session: Any = None, execution_context: Any = None
    ) -> Any:
        updates = spec.get("updates")
        collection_name = spec.get("update")
        if (
            not isinstance(updates, list)
            or len(updates) < 2
            or not isinstance(collection_name, str)
            or not set(spec) <= BATCH_COMMAND_KEYS
            or (session is not None and getattr(session, "in_transaction", False))
            or not all(_batchable_update(entry) for entry in updates)
        ):
            return await one_by_one(
                self, spec, session=session, execution_context=execution_context
            )
        validate_write_fields(spec, "update")
        ordered = self._admin._normalize_ordered_from_command(spec.get("ordered"))
        acknowledged = write_command_acknowledged(spec, dialect=self._admin._mongodb_dialect.key)
        collection = self._admin._database.get_collection(collection_name)
        variables = (
            execution_context or self._admin._database._new_execution_context()
        ).with_bindings({})
        engine = collection._engine
        if not isinstance(engine, HubSQLiteEngine):
            return await one_by_one(
                self, spec, session=session, execution_context=execution_context
            )

        def compile_entry(entry: dict[str, Any]) -> Any:
            operation = compile_update_operation(
                collection._normalize_filter(self._admin._normalize_filter(entry["q"])),
                collation=None,
                sort=None,
                array_filters=None,
                hint=None,
                comment=spec.get("comment"),
                let=collection._normalize_let(variables),
                dialect=collection._mongodb_dialect,
                update_spec=DocumentCodec.to_internal(entry["u"]),
                planning_mode=collection._planning_mode,
            )
            operation = bind_execution_context(
                operation, collection, session=session, change_operation_type="update"
            )
            if operation.planning_issues:
                raise OperationFailure(operation_issue_message(operation))
            return operation

        failures: dict[int, BaseException] = {}
        compiled: list[tuple[int, Any]] = []
        for index, entry in enumerate(updates):
            parts = simple_update_parts(entry)
            if parts is not None:
                doc_id, sets, incs = parts
                compile_later = functools.partial(compile_entry, entry)
                compiled.append((index, SimpleUpdate(doc_id, sets, incs, compile_later)))
                continue
            try:
                operation = compile_entry(entry)
            except UPDATE_ITEM_ERRORS as error:
                failures[index] = error
                if ordered:
                    break
                continue
            compiled.append((index, operation))

        outcomes = await engine.hub_update_batch(
            collection._db_name,
            collection._collection_name,
            [operation for _, operation in compiled],
            ordered=ordered,
            session=session,
        )
        matched = modified = 0
        for (index, _), outcome in zip(compiled, outcomes, strict=False):
            if isinstance(outcome, BaseException):
                failures[index] = outcome
            else:
                matched += outcome.result.matched_count
                modified += outcome.result.modified_count
        if ordered and failures:
            # Only what ran before the first failure counts; it is the one reported.
            first = min(failures)
            failures = {first: failures[first]}

        write_errors: list[Any] = []
        command_failure = None
        for index in sorted(failures):
            try:
                await update_one(collection, failures[index])
            except UPDATE_ITEM_ERRORS as error:
                command_failure = record_write_failure(
                    write_errors, error, index=index, first_failure=command_failure
                )
        if command_failure is not None:
            raise command_failure
        return write_commands._write_command_result(
            WriteCommandResult(
                count=matched,
                modified_count=modified,
                upserted=None,
                write_errors=write_errors or None,
            ),
            acknowledged=acknowledged,
        )

    service.command_update = command_update  # type: ignore[method-assign]
