"""Text search: a `$text` query answered from SQLite's FTS5 instead of a scan.

The engine answers a classic `$text` query by reading every document of the
collection and scoring it in Python (seconds at 200,000 messages). Here each
collection named in `hub.store.TEXT_INDEXES` has its words in one FTS5 table,
`hub_text` (contentless: only the words' positions, keyed by the document's
rowid in `documents`), kept in step by triggers on `documents` (insert, update
of the indexed fields, delete), so every write path of the engine, the hub's
own included, keeps it whole. It is filled once from the stored documents when
it is first made.

A `find` with `$text` on such a collection is then one FTS5 `MATCH` (terms: any
of them; quoted phrases: all of them; `-word`: none of them; any case, any
diacritics, whole words as FTS5's `unicode61` tokenizer splits them), joined to
its documents. When sorted on a date field with a limit, the matches are put in
order by that date as the engine stores it (ISO text: sorts as the dates do) and
only the first skip + limit, and those tying with the last of them, are read;
range conditions on that field (a page's cursor) bound the matches in SQL; any
other condition of the filter is checked per row by the engine's matcher; the
engine's own sort decides the final order. A query this cannot answer exactly
(case- or diacritic-sensitive, a hint, a collation) takes the engine's path.
"""

from __future__ import annotations

import json
from typing import Any

from mongoeco.core.query_plan import AndCondition, MatchAll
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_planner import SQLiteReadExecutionPlan

from hub.store import TEXT_INDEXES, TEXT_ORDER
from hub.store.engine.reads import MATCH_FUNCTION, RANGE_OPERATORS, SEEK_SELECTS

TEXT_TABLE = "hub_text"
KEY_TABLE = "hub_text_keys"  # each indexed row's date of TEXT_ORDER: the order of matches
TEXT_LAYOUT = "fts5-2"
DATE_MARK = "$mongoeco"
JOINED = "documents.rowid = keyed.rowid"


def _json_path(field: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in field.split("."))


def _body_sql(row: str, fields: tuple[str, ...]) -> str:
    """The indexed words of a `documents` row (`new`, `old` or `documents`)."""
    parts = [
        f"coalesce(json_extract({row}.document, '{_json_path(field)}'), '')" for field in fields
    ]
    return " || ' ' || ".join(parts)


def _key_sql(row: str, field: str) -> str:
    """A row's date in `field` as the engine stores it (ISO text, which sorts as
    the dates do), or NULL when it holds no date."""
    path = f'{_json_path(field)}."{DATE_MARK}"'
    return (
        f"CASE WHEN json_extract({row}.document, '{path}.type') = 'datetime' "
        f"THEN json_extract({row}.document, '{path}.value') END"
    )


def _schema(collections: dict[str, tuple[str, ...]]) -> list[str]:
    statements = [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {TEXT_TABLE} USING fts5("
        "body, content='', tokenize='unicode61 remove_diacritics 2')",
        f"CREATE TABLE IF NOT EXISTS {KEY_TABLE} "
        "(rowid INTEGER PRIMARY KEY, db_name TEXT, coll_name TEXT, k TEXT)",
    ]
    for coll, fields in collections.items():
        new, old = _body_sql("new", fields), _body_sql("old", fields)
        new_key, old_key = _key_sql("new", TEXT_ORDER[coll]), _key_sql("old", TEXT_ORDER[coll])
        name = f"{TEXT_TABLE}_{coll}"
        when = f"WHEN {{row}}.coll_name = '{coll}'"
        # Only the hub's own constants (TEXT_INDEXES) are formatted into this SQL.
        insert = (
            f"INSERT INTO {TEXT_TABLE} (rowid, body) VALUES (new.rowid, {new}); "  # noqa: S608
            f"INSERT OR REPLACE INTO {KEY_TABLE} (rowid, db_name, coll_name, k) "
            f"VALUES (new.rowid, new.db_name, new.coll_name, {new_key});"
        )
        delete = (
            f"INSERT INTO {TEXT_TABLE} ({TEXT_TABLE}, rowid, body) "  # noqa: S608
            f"VALUES ('delete', old.rowid, {old}); "
            f"DELETE FROM {KEY_TABLE} WHERE rowid = old.rowid;"
        )
        statements += [
            f"CREATE TRIGGER IF NOT EXISTS {name}_ai AFTER INSERT ON documents "
            f"{when.format(row='new')} BEGIN {insert} END",
            f"CREATE TRIGGER IF NOT EXISTS {name}_ad AFTER DELETE ON documents "
            f"{when.format(row='old')} BEGIN {delete} END",
            f"CREATE TRIGGER IF NOT EXISTS {name}_au AFTER UPDATE OF document ON documents "
            f"{when.format(row='new')} AND (({old}) IS NOT ({new}) OR ({old_key}) IS NOT "
            f"({new_key})) BEGIN {delete} {insert} END",
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
        conn.execute(f"DROP TABLE IF EXISTS {TEXT_TABLE}")
        conn.execute(f"DROP TABLE IF EXISTS {KEY_TABLE}")
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
            (f"{TEXT_TABLE}_%",),
        ).fetchall():
            conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        for statement in _schema(TEXT_INDEXES):
            conn.execute(statement)
        for coll, fields in TEXT_INDEXES.items():
            conn.execute(
                f"INSERT INTO {TEXT_TABLE} (rowid, body) "  # noqa: S608
                f"SELECT rowid, {_body_sql('documents', fields)} FROM documents "
                "WHERE coll_name = ?",
                (coll,),
            )
            conn.execute(
                f"INSERT OR REPLACE INTO {KEY_TABLE} (rowid, db_name, coll_name, k) "  # noqa: S608
                f"SELECT rowid, db_name, coll_name, {_key_sql('documents', TEXT_ORDER[coll])} "
                "FROM documents "
                "WHERE coll_name = ?",
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

    def _date_text(self, value: Any) -> str | None:
        """A datetime as the engine stores it (ISO text), or None."""
        encoded = json.loads(self._serialize_document({"_id": 0, "v": value}))["v"]
        if isinstance(encoded, dict) and (encoded.get(DATE_MARK) or {}).get("type") == "datetime":
            return str(encoded[DATE_MARK]["value"])
        return None

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
        # The matches of this collection, by rowid, with their date: from the
        # FTS index and the keys table alone (no document is read for them).
        matches = (
            f"FROM {TEXT_TABLE} JOIN {KEY_TABLE} AS keyed ON keyed.rowid = {TEXT_TABLE}.rowid "
            f"WHERE {TEXT_TABLE} MATCH ? AND keyed.db_name = ? AND keyed.coll_name = ?"
        )
        params: list[Any] = [expression, db_name, coll_name]
        plan = semantics.query_plan
        clauses = plan.clauses if isinstance(plan, AndCondition) else (plan,)
        rest = [c for c in clauses if not isinstance(c, MatchAll)]
        sort = semantics.sort or []
        keyed = bool(sort) and sort[0][1] in (1, -1) and sort[0][0] == TEXT_ORDER.get(coll_name)
        if keyed:
            for clause in list(rest):
                operator = RANGE_OPERATORS.get(type(clause))
                if operator is None or getattr(clause, "field", None) != sort[0][0]:
                    continue
                text = self._date_text(getattr(clause, "value", None))
                if text is None:
                    continue
                matches += f" AND keyed.k {operator} ?"
                params.append(text)
                rest.remove(clause)  # a range on a date matches dates only: exact
        if rest:  # the rest of the filter, checked per row by the engine's matcher
            matches = (
                matches.replace(
                    "WHERE ", "JOIN documents ON documents.rowid = keyed.rowid WHERE ", 1
                )
                + f" AND {MATCH_FUNCTION}(?, documents.document)"
            )
            params.append(self._hub_residual_token(semantics))  # type: ignore[attr-defined]
        if not keyed or semantics.limit is None or semantics.limit <= 0:
            sql = (
                f"SELECT {columns} FROM documents WHERE documents.rowid IN "  # noqa: S608
                f"(SELECT keyed.rowid {matches})"
            )
            if not sort and (semantics.limit is not None or semantics.skip):
                sql += " LIMIT ? OFFSET ?"
                params += [-1 if semantics.limit is None else semantics.limit, semantics.skip]
            return self._text_sql_plan(semantics, sql, params, python_sort=bool(sort))
        # Sorted on the date with a limit: only the first skip + limit matches by
        # the date, those tying with the last of them, and any without a date are
        # read; the engine's sort (on every key) decides among them.
        order = "DESC" if sort[0][1] == -1 else "ASC"
        back = "ASC" if order == "DESC" else "DESC"
        sql = (
            f"WITH found AS MATERIALIZED (SELECT keyed.rowid AS r, keyed.k AS k {matches}), "  # noqa: S608
            f"top AS MATERIALIZED (SELECT r, k FROM found WHERE k IS NOT NULL "
            f"ORDER BY k {order} LIMIT ?), "
            f"boundary AS (SELECT k FROM top ORDER BY k {back} LIMIT 1) "
            f"SELECT {columns} FROM documents WHERE documents.rowid IN ("
            "SELECT r FROM top UNION SELECT r FROM found "
            "WHERE k IS NULL OR k = (SELECT k FROM boundary))"
        )
        params.append(semantics.skip + semantics.limit)
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
