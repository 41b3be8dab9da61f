"""The write paths.

- The wire `update` of several single-document updates runs them in one
  transaction (`patch_update_command`); an operator update of one document by
  its `_id`, in a collection with plain single-field indexes only, reads the
  row, applies the engine's compiled update, writes the row back and changes
  only the index entries whose key changed (`_hub_lean_update`), instead of
  the engine's general path (TTL purge, catalog reloads, unique and search
  index upkeep, every entry deleted and inserted again); an indexed field
  holding an array or a sub-document, before or after, takes the general path;
  in that command, an update by a string `_id` (and, beside it, only
  comparisons of fields with values: `plain_conditions`, matched on the row
  read) of only `$set` of plain values and `$inc` by integers, on top-level
  fields, is applied to the stored document without compiling it
  (`SimpleUpdate`), with the counts the engine gives; anything else about it,
  it hands to the compiled path.
- A lean or simple update remakes the index entries of the fields it changed
  only.
- An update whose operators the engine cannot write as SQL walks the stored
  document before finding so (`patch_update_translation`).
- An update deep-copies the document seven times and an insert twice; here
  only their dicts and lists are copied (`patch_update_copies`).
- A single insert re-checks `_id` uniqueness by loading every document, even
  when the `_id` is a string or ObjectId whose primary-key lookup already
  decided it (the scan exists for numeric ids, where 1 and 1.0 are equal).
- The wire `insert` command inserts its documents one by one, one transaction
  each, instead of using the engine's batch path (patched in
  `patch_insert_command`).
- The durable change-stream outbox is switched off (it starts a thread and
  serialises the whole document on every write, more than half the cost of an
  update): the hub does not use change streams, and in-process change streams
  still work from the engine's in-memory publication.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import itertools
import math
from typing import Any

import mongoeco.engines.sqlite as sqlite_engine
from bson import ObjectId
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
from mongoeco.core import operators
from mongoeco.core.bson_scalars import INT64_MAX, INT64_MIN
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.filtering import QueryEngine
from mongoeco.core.identity import id_contains_numeric_value
from mongoeco.core.operators import CompiledUpdatePlan
from mongoeco.core.query_plan import compile_filter
from mongoeco.engines import _sqlite_modify_ops as modify_ops
from mongoeco.engines import results
from mongoeco.engines._sqlite_write_scope import sqlite_write_scope
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.errors import BulkWriteError, OperationFailure, WriteError
from mongoeco.types import PlanningMode, UpdateResult, WriteCommandResult

from hub.store.engine.codec import _NotPlain, plain_encode

# The durable change-stream outbox, off (see above; `HubWritesEngine.capabilities`).
sqlite_engine._sqlite_append_change = lambda *args, **kwargs: None

SQL_UPDATE_OPERATORS = frozenset({"$set", "$unset"})  # what the engine writes as SQL
# What a single update may raise and still leave the others to run (as the
# engine's own `update` command has it).
UPDATE_ITEM_ERRORS = (WriteError, OperationFailure, TypeError, ValueError)


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
    # Each field with its value and whether it is an increment, in the order
    # the engine applies them (`update_steps`): a field the document lacks is
    # added in that order.
    steps: tuple[tuple[str, Any, bool], ...]
    # The rest of the filter beside the `_id` (a conditional update), compiled
    # as the engine compiles a filter, with the dialect to match it in; None:
    # the `_id` alone.
    condition: Any = None
    dialect: Any = None


def _update_path_order(key: str) -> tuple[int, int | str]:
    """The engine's order of the fields of one update operator (its default
    policy's `sort_update_path_items`): digit-only names first, by number, then
    the others as strings."""
    return (0, int(key)) if key.isdigit() else (1, key)


def update_steps(change: dict[str, Any]) -> tuple[tuple[str, Any, bool], ...]:
    """(field, value, is an increment) of a `$set`/`$inc` update, in the order
    the engine applies them: operator by operator as the update names them, each
    operator's fields in `_update_path_order`."""
    return tuple(
        (key, value, operator == "$inc")
        for operator, fields in change.items()
        for key, value in sorted(fields.items(), key=lambda item: _update_path_order(item[0]))
    )


_ABSENT = object()  # a field a document lacks


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


# What a condition beside the `_id` of an update the simple path takes may use:
# fields compared with values, and these logical operators of such conditions.
CONDITION_OPERATORS = frozenset(
    {"$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists"}
)
LOGICAL_OPERATORS = frozenset({"$or", "$and", "$nor"})


def plain_conditions(conditions: dict[Any, Any]) -> bool:
    """Whether a filter only compares fields with values (`CONDITION_OPERATORS`),
    alone or in `$or`/`$and`/`$nor`: no expression, text, regular expression
    operator or anything else whose match could depend on more than the
    document and the values (the engine's own matcher still decides each)."""
    for key, value in conditions.items():
        if type(key) is not str or not key:
            return False
        if key in LOGICAL_OPERATORS:
            if type(value) is not list or not value:
                return False
            if not all(type(c) is dict and c and plain_conditions(c) for c in value):
                return False
        elif key[0] == "$" or (
            type(value) is dict
            and any(type(k) is str and k[:1] == "$" for k in value)
            and not set(value) <= CONDITION_OPERATORS
        ):
            return False
    return True


def simple_update_parts(entry: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, int]] | None:
    """(`_id`, `$set`, `$inc`) of an update entry the simple path can apply, else
    None. Conditions beside the `_id` are the caller's to compile."""
    selector, change = entry.get("q"), entry.get("u")
    if (
        not isinstance(selector, dict)
        or type(selector.get("_id")) is not str
        or (len(selector) > 1 and not plain_conditions(selector))
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


class HubWritesEngine(SQLiteEngine):
    """The engine's writes: the insert's uniqueness check, the batched update,
    and its lean and simple paths."""

    capabilities = dataclasses.replace(SQLiteEngine.capabilities, change_delivery="none")

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
                results = self._hub_run_updates(conn, db_name, coll_name, operations, ordered)
        return results

    def _hub_run_updates(
        self, conn: Any, db_name: str, coll_name: str, operations: list[Any], ordered: bool
    ) -> list[Any]:
        """Each update in the open transaction, by the simple path, the lean path
        or the engine's own, whichever first takes it; its outcome or its error."""
        results: list[Any] = []
        found = self._hub_lean_indexes(conn, db_name, coll_name)
        simple, guarded = found if found is not None else (None, frozenset())
        # The lean path applies any compiled update: only where every index is plain.
        lean = simple if not guarded else None
        # Documents the simple path changed, written once after the batch (or
        # before any other path reads the table): ingest's summary is two
        # updates of one conversation, read and written once.
        held: dict[Any, tuple[dict[str, Any], dict[str, Any]]] = {}
        for operation in operations:
            if (
                isinstance(operation, SimpleUpdate)
                and simple is not None
                and guarded.isdisjoint(itertools.chain(operation.sets, operation.incs))
            ):
                outcome = self._hub_simple_update(conn, db_name, coll_name, operation, simple, held)
                if outcome is not None:
                    results.append(outcome)
                    continue
            if held:
                assert simple is not None
                self._hub_write_held(conn, db_name, coll_name, held, simple)
            if isinstance(operation, SimpleUpdate):
                try:
                    operation = operation.compile()
                except UPDATE_ITEM_ERRORS as error:
                    results.append(error)
                    if ordered:
                        break
                    continue
            if lean is not None:
                try:
                    outcome = self._hub_lean_update(conn, db_name, coll_name, operation, lean)
                except UPDATE_ITEM_ERRORS as error:
                    results.append(error)
                    if ordered:
                        break
                    continue
                if outcome is not None:
                    results.append(outcome)
                    continue
            try:
                outcome = self._hub_engine_update(db_name, coll_name, operation)
            except UPDATE_ITEM_ERRORS as error:
                results.append(error)
                if ordered:
                    break
            else:
                results.append(outcome)
        if held:
            assert simple is not None
            self._hub_write_held(conn, db_name, coll_name, held, simple)
        return results

    def _hub_write_held(
        self,
        conn: Any,
        db_name: str,
        coll_name: str,
        held: dict[Any, tuple[dict[str, Any], dict[str, Any]]],
        indexes: list[Any],
    ) -> None:
        """Write the documents the simple path changed (each as stored before,
        and now), and forget them."""
        for storage_key, (stored, document) in held.items():
            self._hub_rewrite(conn, db_name, coll_name, storage_key, stored, document, indexes)
        held.clear()

    def _hub_engine_update(self, db_name: str, coll_name: str, operation: Any) -> Any:
        """The engine's own update of one document; inside the open transaction
        it is a savepoint."""
        return self._update_with_operation_sync(
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

    def _hub_lean_indexes(
        self, conn: Any, db_name: str, coll_name: str
    ) -> tuple[list[Any], frozenset[str]] | None:
        """The collection's plain indexes (single-field, on a top-level field,
        sparse or not: a sparse one has an entry only while the document has the
        field, as the engine's own rows for a document decide), whose entries
        the lean and simple paths keep, and the top-level fields its other
        indexes read (a text, unique or nested field's): an update that touches
        none of those leaves their entries as they are, so the simple path may
        take it; the lean path only where there are none.
        None when no update may take either path (a partial or TTL index, a
        collation, a validator or a search index)."""
        plain: list[Any] = []
        guarded: set[str] = set()
        for index in self._load_indexes(db_name, coll_name):
            fields = index["fields"]
            if (
                index.get("partial_filter_expression") is not None
                or index.get("expire_after_seconds") is not None
                or index.get("collation") is not None
                or any(not isinstance(f, str) or not f or "$" in f for f in fields)
            ):
                return None
            if (
                len(fields) != 1
                or "." in fields[0]
                or index.get("unique")
                or not self._supports_scalar_index(index)
            ):
                guarded.update(f.split(".", 1)[0] for f in fields)
            else:
                plain.append(index)
        if self._load_search_index_rows(db_name, coll_name):
            return None
        if self._collection_options_or_empty_sync(conn, db_name, coll_name).get("validator"):
            return None
        return plain, frozenset(guarded)

    def _hub_simple_update(
        self,
        conn: Any,
        db_name: str,
        coll_name: str,
        update: SimpleUpdate,
        indexes: list[Any],
        held: dict[Any, tuple[dict[str, Any], dict[str, Any]]],
    ) -> Any:
        """`$set` and `$inc` of top-level fields, applied without compiling the
        update: each value is replaced in place (so the fields keep their order),
        a field the document lacks is added after the others, in the order the
        engine adds them (`update_steps`), and an increment adds to a stored
        integer or, on a missing field, sets it to the amount (as the engine's
        `$inc` does). None when an increment meets anything but an integer, or
        leaves int64's range, or an indexed field holds an array or a
        sub-document: the compiled path then decides. Modified as the engine's
        `$set` and `$inc` decide it (`_same_for_update`); a modified document
        is `held` (as stored, and now), written by the caller, and an earlier
        update of the batch's held document is taken up from there.
        """
        storage_key = self._storage_key(update.doc_id)
        earlier = held.get(storage_key)
        original = (
            earlier[1]
            if earlier is not None
            else self._hub_stored_document(conn, db_name, coll_name, storage_key)
        )
        if original is None:
            return LeanOutcome(UpdateResult(matched_count=0, modified_count=0))
        if update.condition is not None and not QueryEngine.match_plan(
            original, update.condition, dialect=update.dialect
        ):
            return LeanOutcome(UpdateResult(matched_count=0, modified_count=0))
        document = dict(original)
        modified = False
        for key, value, increment in update.steps:
            if not increment:
                if key not in document or not _same_for_update(document[key], value):
                    modified = True
                document[key] = value
                continue
            if key not in document:  # as `$set` of the amount (a conversation
                modified = True  # opened before a count was kept gains it here)
                document[key] = value
                continue
            current = document[key]
            if type(current) is not int:
                return None
            total = current + value
            if not INT64_MIN <= total <= INT64_MAX:
                return None
            modified = modified or value != 0
            document[key] = total
        fields = [index["fields"][0] for index in indexes]
        if not _scalar_fields(original, fields) or not _scalar_fields(document, fields):
            return None
        if not modified:
            return LeanOutcome(UpdateResult(matched_count=1, modified_count=0))
        held[storage_key] = (original if earlier is None else earlier[0], document)
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
        # A plain index's entry depends only on its field's value: where the
        # document still holds the very same value (or still lacks it), the
        # entry is the same, and is not made twice to be compared.
        changed = [
            index
            for index in indexes
            if original.get(index["fields"][0], _ABSENT)
            is not document.get(index["fields"][0], _ABSENT)
        ]
        before = set(self._build_scalar_rows_for_document(storage_key, original, changed))
        after = set(self._build_scalar_rows_for_document(storage_key, document, changed))
        if before != after:
            collection_id = self._lookup_collection_id(conn, db_name, coll_name, create=True)
            # At most one entry per index (a scalar value): an index whose entry
            # changed has its row changed in place, which leaves the row where it
            # is and the entries' index by storage key untouched (a delete and an
            # insert wrote a page of each, at random places in a large store).
            removed = {entry[0]: entry for entry in before - after}
            added = {entry[0]: entry for entry in after - before}
            if len(removed) + len(added) != len(before ^ after):
                raise AssertionError("more than one entry of an index for a scalar value")
            conn.executemany(
                "UPDATE scalar_index_entries SET element_type = ?, type_score = ?, "
                "element_key = ? WHERE collection_id = ? AND storage_key = ? "
                "AND index_name = ? AND element_type = ? AND type_score = ? "
                "AND element_key = ?",
                [
                    (*added[name][1:], collection_id, storage_key, *entry)
                    for name, entry in removed.items()
                    if name in added
                ],
            )
            conn.executemany(
                "DELETE FROM scalar_index_entries WHERE collection_id = ? AND storage_key = ? "
                "AND index_name = ? AND element_type = ? AND type_score = ? "
                "AND element_key = ?",
                [
                    (collection_id, storage_key, *entry)
                    for name, entry in removed.items()
                    if name not in added
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO scalar_index_entries (collection_id, index_name, "
                "storage_key, element_type, type_score, element_key) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (collection_id, name, storage_key, kind, score, key)
                    for name, kind, score, key in added.values()
                    if name not in removed
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
        or a sub-document (the engine's own path then does it).

        A filter with more conditions beside the `_id` (a conditional update:
        `{"_id": x, "status": "resolved"}`, an `$or` of a field's values) is
        taken too: the one row the `_id` names is read and the whole filter is
        checked on it by the engine's own matcher (`QueryEngine.match_plan`, what
        its update uses when the filter is not written as SQL); no match is
        matched 0. The engine's own path would select the row through a read
        plan compiled for the filter, about half of such an update's cost."""
        selector = operation.filter_spec
        if (
            not isinstance(selector, dict)
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
        if len(selector) > 1 and not QueryEngine.match_plan(
            original,
            semantics.query_plan,
            dialect=semantics.dialect,
            collation=semantics.collation,
            variables=semantics.variables,
        ):
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


# Set while the wire `insert` command's own documents are inserted: they were
# decoded for it and nothing else holds them, so the insert need not copy them.
WIRE_DOCUMENTS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hub_wire_documents", default=False
)


def copy_for_insert(value: Any, memo: Any = None) -> Any:  # deepcopy's signature
    """The insert's copy of a document (two per document, a public and an
    internal one): none of documents only the wire command holds."""
    return value if WIRE_DOCUMENTS.get() else copy_containers(value, memo)


def patch_update_copies() -> None:
    """The engine's write paths copy documents with `copy_containers`: an update
    (three copies in the engine, two in the update plan, two in its outcome) and
    an insert (two per document, none of the wire command's: `copy_for_insert`)."""
    for module in (modify_ops, operators, results):
        module.deepcopy = copy_containers  # type: ignore[attr-defined]
    collection_insert.deepcopy = copy_for_insert  # type: ignore[attr-defined,assignment]


def _no_entries_to_delete(conn: Any, db_name: str, coll_name: str, storage_key: str) -> None:
    """What is left to delete of a document's index entries right after it was
    inserted where no document was: nothing (the engine writes and deletes a
    document's entries in the same transaction as the document)."""


def patch_insert_batch() -> None:
    """The batch insert deletes each new document's index entries (three
    statements: multikey, scalar and TTL) right after its row was inserted,
    which it is only where no document had its storage key: there are none."""
    insert_batch = sqlite_engine._sqlite_insert_document_batch

    def insert_document_batch(conn: Any, **kwargs: Any) -> Any:
        kwargs["delete_multikey_entries_for_storage_key"] = _no_entries_to_delete
        kwargs["delete_scalar_entries_for_storage_key"] = _no_entries_to_delete
        return insert_batch(conn, **kwargs)

    sqlite_engine._sqlite_insert_document_batch = insert_document_batch


def patch_insert_command() -> None:
    """The wire `insert` of two or more documents goes through the batch path.

    Its write errors carry the index, code and message of each refusal (what the
    hub reads), not the `keyPattern` and `keyValue` the one-by-one path adds."""
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
        wire_documents = WIRE_DOCUMENTS.set(True)
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
        finally:
            WIRE_DOCUMENTS.reset(wire_documents)
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
    one transaction (`HubWritesEngine.hub_update_batch`) instead of one each.

    Each update is compiled and applied exactly as the engine's `update_one`
    does, its errors reported the same way; what changes is that they share one
    commit and one trip to the engine's worker thread. In-process change streams
    (which the hub does not use) do not see these updates. An error that fails
    the whole command rather than one update (an integer past int64's range)
    undoes them all, where the engine's own command keeps those before it.
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
        if not isinstance(engine, HubWritesEngine):
            return await one_by_one(
                self, spec, session=session, execution_context=execution_context
            )

        compile_entry = functools.partial(
            _compile_entry, self, collection, spec, variables, session
        )
        compile_condition = functools.partial(_compile_condition, self, collection)
        failures, compiled = _compile_updates(updates, compile_entry, ordered, compile_condition)
        outcomes = await engine.hub_update_batch(
            collection._db_name,
            collection._collection_name,
            [operation for _, operation in compiled],
            ordered=ordered,
            session=session,
        )
        matched, modified, failures = _tally(compiled, outcomes, failures, ordered)
        return await _command_result(collection, failures, matched, modified, acknowledged)

    service.command_update = command_update  # type: ignore[method-assign]


def _compile_entry(
    service: Any,
    collection: Any,
    spec: dict[str, object],
    variables: Any,
    session: Any,
    entry: dict[str, Any],
) -> Any:
    """An update entry compiled as the engine's `update_one` compiles it."""
    operation = compile_update_operation(
        collection._normalize_filter(service._admin._normalize_filter(entry["q"])),
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


def _compile_condition(
    service: Any, collection: Any, entry: dict[str, Any]
) -> tuple[Any, Any] | None:
    """The filter of an update entry compiled as `_compile_entry` compiles it
    (without its update), and the dialect to match it in, for the simple path to
    match the stored document with (`QueryEngine.match_plan`, as the lean path
    does); None where the collection plans leniently (the compiled path then
    reports what it finds)."""
    if collection._planning_mode is not PlanningMode.STRICT:
        return None
    spec = collection._normalize_filter(service._admin._normalize_filter(entry["q"]))
    dialect = collection._mongodb_dialect
    plan = compile_filter(
        DocumentCodec.to_internal(spec),
        dialect=dialect,
        variables={},
        planning_mode=collection._planning_mode,
    )
    return plan, dialect


def _compile_updates(
    updates: list[Any], compile_entry: Any, ordered: bool, compile_condition: Any = None
) -> tuple[dict[int, BaseException], list[tuple[int, Any]]]:
    """The errors compiling raised, by index, and the updates to run with their
    index: a `SimpleUpdate` where it may apply, else the compiled operation.
    Ordered: none after the first error."""
    failures: dict[int, BaseException] = {}
    compiled: list[tuple[int, Any]] = []
    for index, entry in enumerate(updates):
        parts = simple_update_parts(entry)
        condition = None
        if parts is not None and len(entry["q"]) > 1:
            # A filter the engine refuses is refused by compiling the entry below,
            # whatever compiling the filter alone raised.
            try:
                condition = None if compile_condition is None else compile_condition(entry)
            except Exception:
                condition = None
            if condition is None:
                parts = None
        if parts is not None:
            doc_id, sets, incs = parts
            compile_later = functools.partial(compile_entry, entry)
            steps = update_steps(entry["u"])
            simple = SimpleUpdate(doc_id, sets, incs, compile_later, steps)
            if condition is not None:
                simple.condition, simple.dialect = condition
            compiled.append((index, simple))
            continue
        try:
            operation = compile_entry(entry)
        except UPDATE_ITEM_ERRORS as error:
            failures[index] = error
            if ordered:
                break
            continue
        compiled.append((index, operation))
    return failures, compiled


def _tally(
    compiled: list[tuple[int, Any]],
    outcomes: list[Any],
    failures: dict[int, BaseException],
    ordered: bool,
) -> tuple[int, int, dict[int, BaseException]]:
    """The matched and modified counts of the updates that ran, and the failures
    to report (ordered: only the first)."""
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
    return matched, modified, failures


async def _command_result(
    collection: Any,
    failures: dict[int, BaseException],
    matched: int,
    modified: int,
    acknowledged: bool,
) -> Any:
    """The command's reply, each failure reported as the engine's `update_one`
    reports it."""
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
