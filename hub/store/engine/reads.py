"""The read plans: two index paths the engine's multi-document `find` lacks;
and every stored document decoded as it is parsed (`codec.plain_decode`).

- Before a query that follows a write, the engine scans the collection for
  Decimal128 values in the queried fields; the hub stores none, so the question
  is answered from the query's own operands.
- The engine answers every multi-document `find` by reading the whole collection
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

  A third path reads no index: a filter that needs a `$regex` of plain text
  (a search) reads only the rows whose JSON holds that text, found by SQLite
  without parsing them (and, for a text with i, k or s, those not in plain
  ASCII); each is checked against the whole filter (`_literal_scan_plan`).

  Each index path is taken only while the index can answer for every document: no
  document holds an array in the field (a seek would miss it), and for a walk
  every document has a scalar value there whose index order is BSON order. These
  facts are read once from the data, then kept up to date from every document
  the engine indexes, so they cost no scan per query.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId
from mongoeco.core.codec import DocumentCodec
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
    RegexCondition,
)
from mongoeco.engines.semantic_core import iter_filtered_documents
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_planner import SQLiteReadExecutionPlan

from hub.store import IDS_PER_COMMAND
from hub.store.engine.codec import plain_decode

# Index element types whose keys sort, within their type, as BSON orders the values.
ORDERED_KEY_TYPES = frozenset({"null", "number", "string", "bool", "datetime", "objectid"})
RESIDUALS_KEPT = 4096
# Values an equality on an indexed field is sought by (a string exactly; the rest
# by the engine's own index keys, every row found checked against the filter):
# `{"media_pending": True}` read every message of the store at each sweep.
EQUALITY_SEEK_TYPES = frozenset({str, bool, datetime, ObjectId})
MATCH_FUNCTION = "hub_match"
# The select lists the engine asks a read plan for, and the seek's columns for each.
SEEK_SELECTS = {
    "document": "documents.document",
    "storage_key, document": "documents.storage_key, documents.document",
}
# What a pattern may hold to be a plain literal (`re.escape` of a search): any
# character but these, or one of them escaped.
PATTERN_SYNTAX = frozenset(".^$*+?{}[]|()\\")
# A literal whose stored form is itself in the JSON of every document that holds
# it: printable ASCII, with neither of the two characters JSON escapes in it.
PLAIN_LITERAL = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
# The letters `re` matches, case ignored, by a character past ASCII as well:
# `i` by U+0130 and U+0131, `k` by the Kelvin sign, `s` by the long s. A text
# with one of them may match a row whose JSON spells that character otherwise
# (`\u212a`, or in UTF-8), so such rows are checked as a scan would
# (`NOT_PLAIN_ROW`). Any other character of a literal matches only itself, or
# its ASCII other case, and JSON spells both as they are.
FOLDED_BY_OTHERS = frozenset("iks")
# (More bytes than characters: one past ASCII. A GLOB for it took three times
# as long as the rest of the read.)
NOT_PLAIN_ROW = (
    "instr(documents.document, char(92)) > 0 "
    "OR length(CAST(documents.document AS TEXT)) <> length(CAST(documents.document AS BLOB))"
)
# An `$or` of more texts than this is read by the engine's own scan (SQLite
# refuses an expression more than 1,000 deep).
LITERALS_MAX = 64
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


def _literal(condition: Any) -> tuple[str, bool] | None:
    """The text a `$regex` condition looks for, if it is a plain literal (a
    search's `re.escape`), and whether case is ignored; else None."""
    if type(condition) is not RegexCondition or not set(condition.options) <= set("ims"):
        return None
    text, escaped = [], False
    for char in condition.pattern:
        if escaped:
            if char.isalnum():
                return None  # a class (`\d`) or an escape of its own (`\n`)
            text.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in PATTERN_SYNTAX:
            return None
        else:
            text.append(char)
    literal = "".join(text)
    if escaped or not set(literal) <= PLAIN_LITERAL:
        return None
    return literal, "i" in condition.options


def _unordered_score_ranges(score_of: Callable[[str], int]) -> list[tuple[int, int]]:
    """The open ranges of index type scores that no ordered key type has: an
    entry's type is unordered exactly when its score is in one (every type the
    engine gives an entry scores apart from the ordered ones)."""
    ordered = sorted({score_of(kind) for kind in ORDERED_KEY_TYPES})
    bounds = [-(2**62), *ordered, 2**62]
    return [(low, high) for low, high in itertools.pairwise(bounds) if high - low > 1]


class HubReadsEngine(SQLiteEngine):
    """The engine's reads, with the seek and walk plans and what they know about
    each field."""

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

    def _deserialize_document(  # type: ignore[override]
        self, payload: str, *, preserve_bson_wrappers: bool = True
    ) -> Any:
        # Every stored document the engine reads (a find's, an update's, a
        # unique check's) comes through here: decoded as it is parsed
        # (`codec.plain_decode`) unless it holds a tag only the codec decodes.
        if self._codec is DocumentCodec and DocumentCodec._MARKER in payload:
            document = plain_decode(payload, preserve_bson_wrappers=preserve_bson_wrappers)
            if document is not None:
                return document
        return super()._deserialize_document(
            payload, preserve_bson_wrappers=preserve_bson_wrappers
        )

    # -- the row check used by both index paths ------------------------------------

    def _create_sqlite_connection(self) -> Any:
        # Each connection can check a row against a query's filter (see `_hub_match`).
        connection = super()._create_sqlite_connection()
        if not getattr(connection, "hub_match_set", False):  # a kept reader has it
            connection.create_function(MATCH_FUNCTION, 2, self._hub_match, deterministic=False)
            connection.hub_match_set = True  # type: ignore[attr-defined]
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
            "elements": self._hub_seen_arrays,
            "gap": self._hub_seen_gaps,
            "unordered": self._hub_seen_unordered,
        }[kind]
        return known or field in seen

    def _hub_read_fact(
        self, db_name: str, coll_name: str, field: str, kind: str, index: Any
    ) -> bool:
        """A fact read from the stored data, from the index entries where they
        tell it: the engine's own answer for arrays parses every document of the
        collection (3.4 s at 1,000,000 messages, the store's one loop held)."""
        if kind == "elements":
            # Whether an array holds an element an equality of the seeks (a
            # string, bool, date or ObjectId) could match: the engine writes each
            # such element's key among the index's multikey entries (an index it
            # made multikey, as it makes every single-field one). An empty array,
            # or one of sub-documents, matches none of them. One seek.
            if not index.get("multikey"):
                return self._hub_fact(db_name, coll_name, field, "array", index)
            conn = self._require_connection()
            collection_id = self._lookup_collection_id(conn, db_name, coll_name)
            if collection_id is None:
                return False
            row = conn.execute(
                "SELECT 1 FROM multikey_entries WHERE collection_id = ? AND index_name = ? LIMIT 1",
                (collection_id, index["name"]),
            ).fetchone()
            return row is not None
        if kind == "array":
            # An array (or a sub-document, or no value) has no entry in a
            # single-field index: where every document has one, none holds an
            # array. The gap is two counts of index rows (0.2 s at 1,000,000).
            if index is not None and not self._hub_fact(db_name, coll_name, field, "gap", index):
                return False
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
        # An entry of another type: sought by its type's score, which the shared
        # index holds (its element type is only in the table: reading it for
        # every entry took 1.1 s at 1,000,000 messages). Each range between the
        # ordered types' scores is one seek.
        for low, high in _unordered_score_ranges(self._multikey_type_score):
            row = conn.execute(
                "SELECT 1 FROM scalar_index_entries WHERE collection_id = ? AND index_name = ? "
                "AND type_score > ? AND type_score < ? LIMIT 1",
                (collection_id, index["name"], low, high),
            ).fetchone()
            if row is not None:
                return True
        return False

    def _field_is_top_level_array_in_collection(  # type: ignore[override]
        self, db_name: str, coll_name: str, field: str
    ) -> bool:
        if field == "_id":
            return False  # an `_id` is never an array (the engine refuses one)
        index = None if "." in field else self._find_scalar_sort_index(db_name, coll_name, field)
        if index is not None:
            return self._hub_fact(db_name, coll_name, field, "array", index)
        return bool(super()._field_is_top_level_array_in_collection(db_name, coll_name, field))

    def _find_scalar_sort_index(self, db_name: str, coll_name: str, field: str) -> Any:
        """The engine's own choice of a plain single-field index, less a text index
        on the field: the engine took that too (its record names the shared
        physical index), but it has no entries of this kind, so every seek or
        walk through it found nothing (`{"name": "n3"}` with the contacts'
        `words` index)."""
        return self._hub_single_field_index(db_name, coll_name, field, sparse=False)

    def _hub_equality_index(self, db_name: str, coll_name: str, field: str) -> Any:
        """A single-field index that holds every document with a value in `field`:
        a plain one, or a sparse one (it leaves out only documents without the
        field, which no equality to a value matches); never a partial one."""
        index = self._find_scalar_sort_index(db_name, coll_name, field)
        if index is not None:
            return index
        return self._hub_single_field_index(db_name, coll_name, field, sparse=True)

    def _hub_single_field_index(
        self, db_name: str, coll_name: str, field: str, *, sparse: bool
    ) -> Any:
        """The first ordered, non-partial index on `field` alone with entries of
        the shared kind, sparse or not as asked."""
        for index in self._load_indexes(db_name, coll_name):
            if (
                index["fields"] == [field]
                and bool(index.get("sparse")) is sparse
                and not index.get("partial_filter_expression")
                and index.get("scalar_physical_name")
                and self._supports_scalar_index(index)
            ):
                return index
        return None

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
            select_clause in SEEK_SELECTS
            and hint is None
            and semantics.hint is None
            and semantics.text_query is None
            and semantics.collation is None
        ):
            # `find_one` asks for the storage key too, after its first-row fast path
            # found nothing (an `_id` or an indexed value no document has): without
            # a seek here, every such miss read the whole collection.
            plan = self._index_seek_plan(db_name, coll_name, semantics, select_clause)
            if plan is None and select_clause == "document":
                plan = self._index_walk_plan(db_name, coll_name, semantics)
            if plan is None:
                plan = self._literal_scan_plan(db_name, coll_name, semantics, select_clause)
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
        self, db_name: str, coll_name: str, semantics: Any, select_clause: str = "document"
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
                return self._hub_seek(semantics, len(clauses) > 1, sql, params, select_clause)
        for clause in clauses:
            if (
                isinstance(clause, EqualsCondition)
                and type(clause.value) in EQUALITY_SEEK_TYPES
                and "." not in clause.field
                and clause.field != "_id"
            ):
                index = self._hub_equality_index(db_name, coll_name, clause.field)
                if index is None or self._hub_fact(
                    db_name, coll_name, clause.field, "elements", index
                ):
                    continue
                from_where, params = self._index_from(db_name, coll_name, collection_id, index)
                if type(clause.value) is str:
                    seek: list[Any] = [*params, self._multikey_type_score("string"), clause.value]
                    sql = f"FROM {from_where} AND entry.type_score = ? AND entry.element_key = ?"
                    return self._hub_seek(semantics, len(clauses) > 1, sql, seek, select_clause)
                # Another type's keys, as the engine's own index reads make them; each
                # row found is checked against the whole filter.
                keys = self._entry_condition(clause, clause.field)
                if keys is not None:
                    sql = f"FROM {from_where} AND {keys[0]}"
                    seek = [*params, *keys[1]]
                    return self._hub_seek(semantics, True, sql, seek, select_clause)
        for clause in clauses:
            field = getattr(clause, "field", "")
            if type(clause) not in RANGE_OPERATORS or "." in field or field == "_id":
                continue
            index = self._find_scalar_sort_index(db_name, coll_name, field)
            # Any array (not only one with keyed elements): the engine's own
            # matcher compares a range with an array's sub-documents too, and a
            # seek answers as it does.
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
            return self._hub_seek(semantics, not exact, sql, params, select_clause)
        return None

    def _literal_scan_plan(
        self, db_name: str, coll_name: str, semantics: Any, select_clause: str
    ) -> SQLiteReadExecutionPlan | None:
        """A filter that needs a `$regex` of plain text to match (one, or any of
        an `$or` of them: a search of contacts by name, phone or e-mail) reads
        only the rows whose JSON holds that text, which SQLite finds without
        parsing a row; each is checked against the whole filter as a scan would.
        The engine parsed and matched every document of the collection (2.4 s
        for a search of 100,000 contacts, the store's one loop held meanwhile).
        Rows not in plain ASCII are checked too where the text has a letter
        another character matches (`FOLDED_BY_OTHERS`)."""
        query_plan = semantics.query_plan
        clauses = query_plan.clauses if isinstance(query_plan, AndCondition) else (query_plan,)
        for clause in clauses:
            branches = clause.clauses if type(clause) is OrCondition else (clause,)
            literals = [_literal(branch) for branch in branches]
            if not 0 < len(literals) <= LITERALS_MAX or None in literals:
                continue
            holds: list[str] = []
            params: list[Any] = [db_name, coll_name]
            others = False
            for literal, fold in (found for found in literals if found is not None):
                if fold:
                    holds.append("instr(lower(documents.document), ?) > 0")
                    params.append(literal.lower())  # ASCII: SQLite's lower() folds A-Z only
                    others = others or not FOLDED_BY_OTHERS.isdisjoint(literal.lower())
                else:
                    holds.append("instr(documents.document, ?) > 0")
                    params.append(literal)
            if others:
                holds.append(NOT_PLAIN_ROW)
            sql = (
                "FROM documents WHERE documents.db_name = ? AND documents.coll_name = ? "
                f"AND ({' OR '.join(holds)})"
            )
            return self._hub_seek(
                semantics, True, sql, params, select_clause, strategy="hub-literal-scan"
            )
        return None

    def _hub_seek(
        self,
        semantics: Any,
        residual: bool,
        sql: str,
        params: list[Any],
        select_clause: str = "document",
        *,
        strategy: str = "hub-index-seek",
    ) -> SQLiteReadExecutionPlan:
        """The plan for the few rows `sql` (FROM and WHERE) selects: the rest of
        the filter checked per row, the sort (if any) done on them by the engine.
        When only `_id`s are asked for, only they are read out of each row."""
        # Only quoted identifiers and placeholders are formatted into the SQL of
        # this module; every value is bound.
        columns = SEEK_SELECTS[select_clause]
        if select_clause == "document" and not semantics.sort and _only_ids(semantics.projection):
            columns = "json_object('_id', documents.document -> '$._id')"
        sql = f"SELECT {columns} {sql}"
        if residual:
            sql += f" AND {MATCH_FUNCTION}(?, documents.document)"
            params.append(self._hub_residual_token(semantics))
        sort = bool(semantics.sort)
        if not sort and (semantics.limit is not None or semantics.skip):
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if semantics.limit is None else semantics.limit, semantics.skip]
        return self._hub_plan(semantics, strategy, sql, params, python_sort=sort)

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
