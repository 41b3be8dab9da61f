"""Text search: a `$text` query answered from SQLite's FTS5 instead of a scan.

The engine answers a classic `$text` query by reading every document of the
collection and scoring it in Python (seconds at 200,000 messages). Here each
collection named in `hub.store.TEXT_INDEXES` has its words in an FTS5 table of
its own, `hub_text_<collection>` (contentless: only the words' positions), kept
in step by triggers on
`documents` (insert, update of the indexed fields or the date, delete), so every
write path of the engine, the hub's own included, keeps it whole. It is filled
once from the stored documents when it is first made.

The FTS5 rowid of a document is not its rowid in `documents` but a number in
the order of its date (`hub.store.TEXT_ORDER`, e.g. `created_at`): the date's
millisecond times 2**20, plus a slot for documents of the same millisecond;
`hub_text_ids` maps it to the document. A document without such a date gets one
below every dated one. So FTS5 itself walks the matches newest (or oldest) first
and stops after the page: no match beyond it is read.

A `find` with `$text` on such a collection is one FTS5 `MATCH` (terms: any of
them; quoted phrases: all of them; `-word`: none of them; any case, any
diacritics, whole words as FTS5's `unicode61` tokenizer splits them). Sorted on
the date with a limit, the first skip + limit matches in that order are read,
with every match of the last one's millisecond and every undated one; ranges on
the date (a page's cursor) bound the walk; the whole filter other than `$text` is
checked per row by the engine's matcher; the engine's own sort decides the final
order. A query this cannot answer exactly (case- or diacritic-sensitive, a hint,
a collation) takes the engine's path.
"""

from __future__ import annotations

import calendar
import json
from datetime import datetime
from typing import Any

from mongoeco.core.query_plan import AndCondition, MatchAll
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_planner import SQLiteReadExecutionPlan

from hub.store import TEXT_INDEXES, TEXT_ORDER
from hub.store.engine.reads import MATCH_FUNCTION, RANGE_OPERATORS, SEEK_SELECTS

TEXT_TABLE = "hub_text"  # one FTS5 table per collection: hub_text_<collection>
IDS_TABLE = "hub_text_ids"  # FTS5 rowid (in date order) -> the document's rowid
TEXT_LAYOUT = "fts5-4"
DATE_MARK = "\x24mongoeco"  # how the engine marks a typed value (a date): not an operator
SLOTS = 1 << 20  # documents of one millisecond (and one bucket of the walk)
LIMIT_MS = 8_000_000_000_000  # dates within about 1716-2223 are walked in order
UNDATED = -(1 << 62)  # below every dated one: the undated, by their document rowid
DATED_FROM = -LIMIT_MS * SLOTS


def fts_table(coll: str) -> str:
    """The FTS5 table of a collection's words (a collection's own: a search of
    one never reads the other's matches)."""
    return f"{TEXT_TABLE}_{coll}"


def _matches(table: str) -> str:
    return (
        f"FROM {table} JOIN {IDS_TABLE} AS ids ON ids.fid = {table}.rowid "
        f"WHERE {table} MATCH ? AND ids.db_name = ? AND ids.coll_name = ?"
    )


JOINED = "JOIN documents ON documents.rowid = ids.doc WHERE "


def _json_path(field: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in field.split("."))


def _body_sql(row: str, fields: tuple[str, ...]) -> str:
    """The indexed words of a `documents` row (`new`, `old` or `documents`)."""
    parts = [
        f"coalesce(json_extract({row}.document, '{_json_path(field)}'), '')" for field in fields
    ]
    return " || ' ' || ".join(parts)


def _ms_sql(row: str, field: str) -> str:
    """A row's date in `field` in milliseconds since 1970 (exact integers, from
    the ISO text the engine stores), or NULL when it holds no date in range."""
    path = f'{_json_path(field)}."{DATE_MARK}"'
    value = f"json_extract({row}.document, '{path}.value')"
    ms = f"(unixepoch({value}) * 1000 + coalesce(CAST(substr({value}, 21, 3) AS INTEGER), 0))"
    return (
        f"(CASE WHEN json_extract({row}.document, '{path}.type') = 'datetime' "
        f"AND {ms} BETWEEN -{LIMIT_MS} AND {LIMIT_MS} THEN {ms} END)"
    )


def date_ms(value: datetime) -> int:
    """A date's millisecond as `_ms_sql` reads it (naive: UTC)."""
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None) - value.utcoffset()  # type: ignore[operator]
    return calendar.timegm(value.timetuple()) * 1000 + value.microsecond // 1000


def _fid_sql(row: str, field: str) -> str:
    """The FTS5 rowid for a new row: its millisecond's first free slot."""
    ms = _ms_sql(row, field)
    return (
        f"(CASE WHEN {ms} IS NULL THEN {UNDATED} + {row}.rowid ELSE coalesce("  # noqa: S608
        f"(SELECT max(fid) + 1 FROM {IDS_TABLE} WHERE fid >= {ms} * {SLOTS} "
        f"AND fid < ({ms} + 1) * {SLOTS}), {ms} * {SLOTS}) END)"
    )


def _schema(collections: dict[str, tuple[str, ...]]) -> list[str]:
    statements = [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts_table(coll)} USING fts5("
        "body, content='', tokenize='unicode61 remove_diacritics 2')"
        for coll in collections
    ]
    statements += [
        f"CREATE TABLE IF NOT EXISTS {IDS_TABLE} "
        "(fid INTEGER PRIMARY KEY, doc INTEGER NOT NULL UNIQUE, db_name TEXT, coll_name TEXT)",
    ]
    for coll, fields in collections.items():
        new, old = _body_sql("new", fields), _body_sql("old", fields)
        field = TEXT_ORDER[coll]
        name, table = f"{TEXT_TABLE}_{coll}", fts_table(coll)
        when = f"WHEN {{row}}.coll_name = '{coll}'"
        # Only the hub's own constants (TEXT_INDEXES, TEXT_ORDER) are formatted
        # into this SQL.
        insert = (
            f"INSERT INTO {IDS_TABLE} (fid, doc, db_name, coll_name) "  # noqa: S608
            f"VALUES ({_fid_sql('new', field)}, new.rowid, new.db_name, new.coll_name); "
            f"INSERT INTO {table} (rowid, body) "
            f"VALUES ((SELECT fid FROM {IDS_TABLE} WHERE doc = new.rowid), {new});"
        )
        delete = (
            f"INSERT INTO {table} ({table}, rowid, body) "  # noqa: S608
            f"VALUES ('delete', (SELECT fid FROM {IDS_TABLE} WHERE doc = old.rowid), {old}); "
            f"DELETE FROM {IDS_TABLE} WHERE doc = old.rowid;"
        )
        changed = (
            f"({old}) IS NOT ({new}) OR {_ms_sql('old', field)} IS NOT {_ms_sql('new', field)}"
        )
        statements += [
            f"CREATE TRIGGER IF NOT EXISTS {name}_ai AFTER INSERT ON documents "
            f"{when.format(row='new')} BEGIN {insert} END",
            f"CREATE TRIGGER IF NOT EXISTS {name}_ad AFTER DELETE ON documents "
            f"{when.format(row='old')} BEGIN {delete} END",
            f"CREATE TRIGGER IF NOT EXISTS {name}_au AFTER UPDATE OF document ON documents "
            f"{when.format(row='new')} AND ({changed}) BEGIN {delete} {insert} END",
        ]
    return statements


def _quoted(words: tuple[str, ...] | str) -> str:
    text = words if isinstance(words, str) else " ".join(words)
    return '"' + text.replace('"', '""') + '"'


def match_expression(query: Any) -> str | None:
    """The FTS5 query of a classic `$text` query (None: nothing to find).

    As MongoDB reads `$search`: any of the terms; with quoted phrases, every
    phrase; never a negated term or phrase."""
    if query.required_phrases:
        base = " AND ".join(_quoted(p) for p in query.required_phrases if p)
    else:
        base = " OR ".join(_quoted(t) for t in query.terms if t.strip())
    if not base:
        return None
    for excluded in (*query.excluded_terms, *query.excluded_phrases):
        if excluded:
            base = f"({base}) NOT {_quoted(excluded)}"
    return base


class HubTextEngine(SQLiteEngine):
    """The engine with FTS5 behind `$text` for the collections the hub searches."""

    def _backfill_scalar_indexes_sync(self, conn: Any) -> None:  # type: ignore[override]
        super()._backfill_scalar_indexes_sync(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hub_engine_meta (key TEXT PRIMARY KEY, value TEXT)"
        )
        row = conn.execute("SELECT value FROM hub_engine_meta WHERE key = 'text'").fetchone()
        layout = f"{TEXT_LAYOUT}:{json.dumps([TEXT_INDEXES, TEXT_ORDER], sort_keys=True)}"
        if row is not None and row[0] == layout:
            return
        # First open with text search (or its fields changed): made and filled once.
        conn.execute(f"DROP TABLE IF EXISTS {TEXT_TABLE}")  # an earlier layout's
        for coll in TEXT_INDEXES:
            conn.execute(f"DROP TABLE IF EXISTS {fts_table(coll)}")
        conn.execute(f"DROP TABLE IF EXISTS {IDS_TABLE}")
        conn.execute("DROP TABLE IF EXISTS hub_text_keys")  # an earlier layout's
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
            (f"{TEXT_TABLE}_%",),
        ).fetchall():
            conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        for statement in _schema(TEXT_INDEXES):
            conn.execute(statement)
        # Every text collection in one numbering: a millisecond's slots are shared.
        ms = " ".join(
            f"WHEN '{coll}' THEN {_ms_sql('documents', TEXT_ORDER[coll])}" for coll in TEXT_INDEXES
        )
        marks = ", ".join("?" for _ in TEXT_INDEXES)
        conn.execute(
            f"INSERT INTO {IDS_TABLE} (fid, doc, db_name, coll_name) "  # noqa: S608
            f"SELECT CASE WHEN ms IS NULL THEN {UNDATED} + r ELSE ms * {SLOTS} - 1 + "
            "row_number() OVER (PARTITION BY ms ORDER BY r) END, r, d, c FROM "
            f"(SELECT rowid AS r, db_name AS d, coll_name AS c, CASE coll_name {ms} END AS ms "
            f"FROM documents WHERE coll_name IN ({marks}))",
            tuple(TEXT_INDEXES),
        )
        for coll, fields in TEXT_INDEXES.items():
            conn.execute(
                f"INSERT INTO {fts_table(coll)} (rowid, body) "  # noqa: S608
                f"SELECT ids.fid, {_body_sql('documents', fields)} FROM documents "
                f"JOIN {IDS_TABLE} AS ids ON ids.doc = documents.rowid "
                "WHERE documents.coll_name = ?",
                (coll,),
            )
        conn.execute(
            "INSERT OR REPLACE INTO hub_engine_meta (key, value) VALUES ('text', ?)", (layout,)
        )
        if conn.in_transaction:
            conn.commit()

    def _compile_read_execution_plan(  # type: ignore[override]
        self,
        db_name: str,
        coll_name: str,
        semantics: Any,
        *,
        select_clause: str = "document",
        hint: Any = None,
    ) -> SQLiteReadExecutionPlan:
        query = semantics.text_query
        if (
            query is not None
            and coll_name in TEXT_INDEXES
            and select_clause == "document"
            and hint is None
            and semantics.hint is None
            and semantics.collation is None
            and not query.case_sensitive
            and not query.diacritic_sensitive
        ):
            plan = self._text_plan(db_name, coll_name, semantics, select_clause)
            if plan is not None:
                return plan
        return super()._compile_read_execution_plan(
            db_name, coll_name, semantics, select_clause=select_clause, hint=hint
        )

    def _text_plan(
        self, db_name: str, coll_name: str, semantics: Any, select_clause: str
    ) -> SQLiteReadExecutionPlan | None:
        # An index must exist, as for the engine (and MongoDB): else its error.
        if not any(
            any(kind == "text" for _, kind in index.key)
            for index in self._load_indexes(db_name, coll_name)
        ):
            return None
        expression = match_expression(semantics.text_query)
        columns = SEEK_SELECTS[select_clause]
        if expression is None:
            sql = f"SELECT {columns} FROM documents WHERE 0"  # noqa: S608
            return self._text_sql_plan(semantics, sql, [], python_sort=False)
        # The matches of this collection, from the FTS index and the ids alone
        # (no document is read for them unless the filter has more to check).
        table = fts_table(coll_name)
        matches = _matches(table)
        params: list[Any] = [expression, db_name, coll_name]
        plan = semantics.query_plan
        clauses = plan.clauses if isinstance(plan, AndCondition) else (plan,)
        rest = [c for c in clauses if not isinstance(c, MatchAll)]
        sort = semantics.sort or []
        keyed = bool(sort) and sort[0][1] in (1, -1) and sort[0][0] == TEXT_ORDER.get(coll_name)
        walk_bounds = ""
        walk_params: list[Any] = []
        if keyed:
            # A range on the date bounds the walk (a millisecond wider each way:
            # the filter itself still decides per row).
            for clause in rest:
                operator = RANGE_OPERATORS.get(type(clause))
                value = getattr(clause, "value", None)
                if operator is None or getattr(clause, "field", None) != sort[0][0]:
                    continue
                if not isinstance(value, datetime) or abs(date_ms(value)) >= LIMIT_MS - 1:
                    continue
                if operator in ("<", "<="):
                    walk_bounds += f" AND {table}.rowid < ?"
                    walk_params.append((date_ms(value) + 2) * SLOTS)
                else:
                    walk_bounds += f" AND ({table}.rowid >= ? OR {table}.rowid < ?)"
                    walk_params += [(date_ms(value) - 1) * SLOTS, DATED_FROM]
        residual = ""
        residual_params: list[Any] = []
        if rest:  # the rest of the filter, checked per row by the engine's matcher
            residual = f" AND {MATCH_FUNCTION}(?, documents.document)"
            residual_params.append(self._hub_residual_token(semantics))  # type: ignore[attr-defined]
            matches = matches.replace("WHERE ", JOINED, 1)
        if not keyed or semantics.limit is None or semantics.limit <= 0:
            sql = (
                f"SELECT {columns} FROM documents WHERE documents.rowid IN "  # noqa: S608
                f"(SELECT ids.doc {matches}{walk_bounds}{residual})"
            )
            params += walk_params + residual_params
            if not sort and (semantics.limit is not None or semantics.skip):
                sql += " LIMIT ? OFFSET ?"
                params += [-1 if semantics.limit is None else semantics.limit, semantics.skip]
            return self._text_sql_plan(semantics, sql, params, python_sort=bool(sort))
        # Sorted on the date with a limit: FTS5 walks the matches in date order
        # and stops after skip + limit of them; those of the last one's
        # millisecond and the undated ones are added; the engine sorts them.
        order = "DESC" if sort[0][1] == -1 else "ASC"
        back = "ASC" if order == "DESC" else "DESC"
        walk = f"{matches} AND {table}.rowid >= {DATED_FROM}{walk_bounds}{residual}"
        # the first slot of the last match's millisecond
        bucket = f"(SELECT f - ((f % {SLOTS}) + {SLOTS}) % {SLOTS} FROM boundary)"  # noqa: S608
        sql = (
            f"WITH top AS MATERIALIZED (SELECT {table}.rowid AS f, ids.doc AS r {walk} "  # noqa: S608
            f"ORDER BY {table}.rowid {order} LIMIT ?), "
            f"boundary AS (SELECT f FROM top ORDER BY f {back} LIMIT 1) "
            f"SELECT {columns} FROM documents WHERE documents.rowid IN ("
            f"SELECT r FROM top UNION "
            f"SELECT ids.doc {matches} AND {table}.rowid >= {bucket} "
            f"AND {table}.rowid < {bucket} + {SLOTS}{residual} UNION "
            f"SELECT ids.doc {matches} AND {table}.rowid < {DATED_FROM}{residual})"
        )
        params += [*walk_params, *residual_params, semantics.skip + semantics.limit]
        params += [expression, db_name, coll_name, *residual_params]
        params += [expression, db_name, coll_name, *residual_params]
        return self._text_sql_plan(semantics, sql, params, python_sort=True)

    @staticmethod
    def _text_sql_plan(
        semantics: Any, sql: str, params: list[Any], *, python_sort: bool
    ) -> SQLiteReadExecutionPlan:
        return SQLiteReadExecutionPlan(
            semantics=semantics,
            strategy="hub-text",
            execution_lineage=(),
            physical_plan=(),
            use_sql=True,
            sql=sql,
            params=tuple(params),
            apply_python_sort=python_sort,
        )
