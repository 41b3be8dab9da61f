"""Whether the installed mongoeco is the one the hub's engine was written for.

The engine's adjustments subclass private methods of mongoeco's SQLite engine,
replace attributes of its private modules, call its private functions with the
arguments they take today, and rewrite its SQL by the text of the statements.
None of that is an interface: a new version may rename, move or change any of
it, and the adjustment would then fail in the middle of a write, or worse,
quietly stop applying. So the package is written for one minor version, and
before any of its modules is imported (`hub.store.engine.__init__`) this module
checks that mongoeco is that version and that each of the following still is as
the engine expects:

- `NAMES`: every module, function, class, method and attribute of mongoeco the
  engine imports, subclasses, replaces or calls;
- `PARAMETERS`: the parameters of each method it overrides, and of each private
  function or method it calls with arguments;
- `FIELDS`: the fields of the engine's records it builds or reads;
- `INSTANCE_ATTRIBUTES`: attributes of mongoeco's objects it reads, that their
  constructors set;
- `SQL`: the statements of the engine's schema the hub's own SQL reads, the
  names it gives physical indexes, and its lock's kind (the batched update holds
  it while the engine's own update takes it again);
- `INDEX_STATEMENTS`: every CREATE/DROP INDEX statement in mongoeco's engines,
  which `HubConnection` rewrites by their text: one more, or one less, is a
  change;
- `COPIED`: the functions the engine copies or mirrors (the connection it makes,
  the wire `insert` and `update` commands and the update path it replaces), by
  a digest of their source.

The checks that read mongoeco's source are made from its files, so they hold
however the modules have been patched since; where the source is not installed
they cannot be made, and are left out. Any difference is an
`IncompatibleMongoeco` (an ImportError) that says what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

WRITTEN_FOR = "4.11"  # major.minor, as pinned in pyproject: mongoeco>=4.11,<4.12

SQLITE = "mongoeco.engines.sqlite"
ENGINE = f"{SQLITE}:SQLiteEngine"
WRITE_COMMANDS = "mongoeco.api._async._database_admin_write_commands"
ADMIN_RUNTIME = "mongoeco.engines._sqlite_admin_runtime"

# "module:attribute.path": each must exist.
NAMES: tuple[str, ...] = (
    # the engine class, and what the hub's subclasses override
    ENGINE,
    f"{ENGINE}.capabilities",
    f"{ENGINE}._validate_document_against_unique_indexes",
    f"{ENGINE}._plan_requires_python_for_decimal_numeric",
    f"{ENGINE}._scalar_value_signature_for_document",
    f"{ENGINE}._run_blocking",
    f"{ENGINE}._physical_scalar_index_name",
    f"{ENGINE}._physical_multikey_index_name",
    f"{ENGINE}._resolve_hint_index",
    f"{ENGINE}._backfill_scalar_indexes_sync",
    f"{ENGINE}._create_sqlite_connection",
    f"{ENGINE}._ensure_scalar_physical_indexes_sync",
    f"{ENGINE}._connect_sync",
    f"{ENGINE}._disconnect_sync",
    f"{ENGINE}._connection",
    f"{ENGINE}._field_is_top_level_array_in_collection",
    f"{ENGINE}._compile_read_execution_plan",
    # ... and what they call
    f"{ENGINE}._plan_contains_decimal_operand",
    f"{ENGINE}._require_connection",
    f"{ENGINE}._bind_connection",
    f"{ENGINE}._begin_write",
    f"{ENGINE}._commit_write",
    f"{ENGINE}._rollback_write",
    f"{ENGINE}._update_with_operation_sync",
    f"{ENGINE}._quote_identifier",
    f"{ENGINE}._invalidate_index_cache",
    f"{ENGINE}._load_indexes",
    f"{ENGINE}._supports_scalar_index",
    f"{ENGINE}._load_search_index_rows",
    f"{ENGINE}._collection_options_or_empty_sync",
    f"{ENGINE}._storage_key",
    f"{ENGINE}._deserialize_document",
    f"{ENGINE}._serialize_document",
    f"{ENGINE}._build_scalar_rows_for_document",
    f"{ENGINE}._lookup_collection_id",
    f"{ENGINE}._invalidate_collection_features_cache",
    f"{ENGINE}._find_scalar_sort_index",
    f"{ENGINE}._multikey_type_score",
    f"{ENGINE}._multikey_signatures_for_query_value",
    f"{ENGINE}._multikey_value_signature",
    # the catalog reads `layout.HubAdminRuntime` overrides, and what they call
    f"{ENGINE}._PROFILE_COLLECTION_NAME",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.collection_exists",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_databases",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_collections",
    f"{ADMIN_RUNTIME}:_sqlite_list_collections",
    f"{ADMIN_RUNTIME}:_sqlite_list_databases",
    # module attributes of the engine's module the hub replaces or calls
    f"{SQLITE}:_sqlite_append_change",
    f"{SQLITE}:_sqlite_insert_document_batch",
    f"{SQLITE}:translate_compiled_update_plan",
    f"{SQLITE}:compile_update_semantics",
    "mongoeco.engines._sqlite_connection:SQLiteConnection",
    "mongoeco.engines._sqlite_connection:SQLiteConnection.execute",
    "mongoeco.engines._sqlite_write_scope:sqlite_write_scope",
    "mongoeco.engines.semantic_core:iter_filtered_documents",
    "mongoeco.engines.sqlite_planner:SQLiteReadExecutionPlan",
    # the copies `patch_update_copies` replaces
    "mongoeco.engines._sqlite_modify_ops:deepcopy",
    "mongoeco.engines.results:deepcopy",
    "mongoeco.core.operators:deepcopy",
    "mongoeco.api._async._collection_insert:deepcopy",
    # the codec (`patch_codec_validation`, `plain_encode`)
    "mongoeco.core.codec:validate_bson_value",
    "mongoeco.core.codec:DocumentCodec.encode",
    "mongoeco.core.codec:DocumentCodec.to_internal",
    "mongoeco.core.codec:DocumentCodec._MARKER",
    "mongoeco.core.codec:DocumentCodec.decode",
    "mongoeco.types:ObjectId",
    "mongoeco.core.codec:_InternalBsonDocument",
    "mongoeco.core.codec:_InternalBsonArray",
    "mongoeco.core.bson_scalars:INT64_MAX",
    "mongoeco.core.bson_scalars:INT64_MIN",
    "mongoeco.core.bson_scalars:BsonDouble",
    "mongoeco.core.bson_scalars:BsonInt32",
    "mongoeco.core.bson_scalars:BsonInt64",
    "mongoeco.core.bson_scalars:normalize_utc_bson_datetime",
    "mongoeco._types._bson_objectid:OBJECT_ID_TYPES",
    "mongoeco._types._bson_objectid:normalize_object_id",
    # the wire layer (`patch_wire_decoding`, `patch_wire_encoding`)
    "mongoeco.wire.protocol:decode_wire_value",
    "mongoeco.wire.protocol:encode_wire_value",
    # the wire commands (`patch_insert_command`, `patch_update_command`)
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService",
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_insert",
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_update",
    f"{WRITE_COMMANDS}:_write_command_result",
    "mongoeco.api._async._collection_modify:_bind_execution_context",
    "mongoeco.api._async._collection_modify:update_one",
    "mongoeco.api._async._collection_modify:execute_server_update",
    "mongoeco.api._async._write_command_validation:write_command_acknowledged",
    "mongoeco.api._async._write_errors:write_command_errors",
    "mongoeco.api._async._write_failures:record_write_failure",
    "mongoeco.api._async.cursor:_operation_issue_message",
    "mongoeco.api._command_bson:validate_write_fields",
    "mongoeco.api.operations:compile_update_operation",
    "mongoeco.api._async.collection:AsyncCollection._normalize_filter",
    "mongoeco.api._async.collection:AsyncCollection._normalize_let",
    "mongoeco.api._async.database_admin:AsyncDatabaseAdminService._normalize_filter",
    "mongoeco.api._async.database_admin:AsyncDatabaseAdminService._normalize_ordered_from_command",
    "mongoeco.api._async.database_admin:AsyncDatabaseAdminService._mongodb_dialect",
    "mongoeco.api._async.client:AsyncDatabase.get_collection",
    "mongoeco.api._async.client:AsyncDatabase._new_execution_context",
    "mongoeco.core.expression_context:ExpressionExecutionContext.with_bindings",
    "mongoeco.errors:BulkWriteError",
    "mongoeco.errors:OperationFailure",
    "mongoeco.errors:WriteError",
    "mongoeco.types:UpdateResult",
    "mongoeco.types:WriteCommandResult",
    # updates and queries, as the engine compiles them
    "mongoeco.core.operators:CompiledUpdatePlan",
    "mongoeco.core.operators:CompiledUpdatePlan.apply",
    "mongoeco.core.identity:id_contains_numeric_value",
    "mongoeco.core.paths:get_document_value",
    "mongoeco.core.filtering:QueryEngine",
    "mongoeco.core.filtering:QueryEngine.match_plan",
    "mongoeco.core.query_plan:compile_filter",
    "mongoeco.types:PlanningMode.STRICT",
    *(
        f"mongoeco.core.query_plan:{name}"
        for name in (
            "AndCondition",
            "EqualsCondition",
            "GreaterThanCondition",
            "GreaterThanOrEqualCondition",
            "InCondition",
            "LessThanCondition",
            "LessThanOrEqualCondition",
            "MatchAll",
            "OrCondition",
            "RegexCondition",
        )
    ),
    # the store's child process serves the engine with this
    "mongoeco.wire:AsyncMongoEcoProxyServer",
)

# "module:attribute.path" of a callable: the names of its parameters, in order
# (an override must accept what the engine passes; a call passes them by place).
PARAMETERS: dict[str, tuple[str, ...]] = {
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.collection_exists": (
        "self",
        "conn",
        "db_name",
        "coll_name",
    ),
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_databases": ("self", "context"),
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_collections": ("self", "db_name", "context"),
    f"{ADMIN_RUNTIME}:_sqlite_list_databases": ("conn", "profiler", "list_database_names"),
    f"{ADMIN_RUNTIME}:_sqlite_list_collections": (
        "conn",
        "db_name",
        "profiler",
        "profile_collection_name",
        "list_collection_names",
    ),
    f"{ENGINE}._validate_document_against_unique_indexes": (
        "self",
        "db_name",
        "coll_name",
        "document",
        "exclude_storage_key",
        "skip_id_check",
        "scan_payload_id",
    ),
    f"{ENGINE}._plan_requires_python_for_decimal_numeric": (
        "self",
        "db_name",
        "coll_name",
        "plan",
    ),
    f"{ENGINE}._scalar_value_signature_for_document": ("self", "document", "field"),
    f"{ENGINE}._run_blocking": ("self", "func", "args", "kwargs"),
    f"{ENGINE}._deserialize_document": ("self", "payload", "preserve_bson_wrappers"),
    f"{ENGINE}._physical_scalar_index_name": ("self", "db_name", "coll_name", "index_name"),
    f"{ENGINE}._physical_multikey_index_name": ("self", "db_name", "coll_name", "index_name"),
    f"{ENGINE}._backfill_scalar_indexes_sync": ("self", "conn"),
    f"{ENGINE}._create_sqlite_connection": ("self",),
    f"{ENGINE}._ensure_scalar_physical_indexes_sync": ("self", "conn", "indexes"),
    f"{ENGINE}._connect_sync": ("self",),
    f"{ENGINE}._disconnect_sync": ("self",),
    f"{ENGINE}._field_is_top_level_array_in_collection": ("self", "db_name", "coll_name", "field"),
    f"{ENGINE}._compile_read_execution_plan": (
        "self",
        "db_name",
        "coll_name",
        "semantics",
        "select_clause",
        "hint",
    ),
    f"{ENGINE}._update_with_operation_sync": (
        "self",
        "db_name",
        "coll_name",
        "operation",
        "upsert",
        "upsert_seed",
        "selector_filter",
        "context",
        "dialect",
        "bypass_document_validation",
        "replacement_document",
        "on_commit",
        "operation_context",
        "deadline",
    ),
    f"{ENGINE}._require_connection": ("self", "context"),
    f"{ENGINE}._begin_write": ("self", "conn", "context"),
    f"{ENGINE}._commit_write": ("self", "conn", "context"),
    f"{ENGINE}._rollback_write": ("self", "conn", "context"),
    f"{ENGINE}._load_indexes": ("self", "db_name", "coll_name"),
    f"{ENGINE}._load_search_index_rows": ("self", "db_name", "coll_name", "name"),
    f"{ENGINE}._collection_options_or_empty_sync": ("self", "conn", "db_name", "coll_name"),
    f"{ENGINE}._build_scalar_rows_for_document": ("self", "storage_key", "document", "indexes"),
    f"{ENGINE}._lookup_collection_id": ("self", "conn", "db_name", "coll_name", "create"),
    f"{ENGINE}._invalidate_collection_features_cache": ("self", "db_name", "coll_name"),
    f"{ENGINE}._find_scalar_sort_index": ("self", "db_name", "coll_name", "field"),
    f"{ENGINE}._multikey_signatures_for_query_value": ("cls", "value", "null_matches_undefined"),
    f"{SQLITE}:translate_compiled_update_plan": ("plan", "current_document"),
    "mongoeco.core.filtering:QueryEngine.match_plan": (
        "document",
        "plan",
        "dialect",
        "collation",
        "variables",
    ),
    "mongoeco.core.operators:CompiledUpdatePlan.apply": ("self", "doc", "variables"),
    "mongoeco.core.query_plan:compile_filter": (
        "filter_spec",
        "dialect",
        "variables",
        "planning_mode",
        "_depth",
    ),
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_insert": (
        "self",
        "spec",
        "session",
    ),
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_update": (
        "self",
        "spec",
        "session",
        "execution_context",
    ),
    f"{WRITE_COMMANDS}:_write_command_result": ("result", "acknowledged"),
    "mongoeco.api._async._collection_modify:_bind_execution_context": (
        "operation",
        "collection",
        "session",
        "change_operation_type",
    ),
    "mongoeco.api._async._write_failures:record_write_failure": (
        "errors",
        "error",
        "index",
        "operation",
        "first_failure",
    ),
    "mongoeco.engines._sqlite_write_scope:sqlite_write_scope": (
        "conn",
        "begin_write",
        "commit_write",
        "rollback_write",
    ),
}

# "module:Class": fields (or constructor parameters) the engine builds or reads.
FIELDS: dict[str, tuple[str, ...]] = {
    "mongoeco.engines.sqlite_planner:SQLiteReadExecutionPlan": (
        "semantics",
        "strategy",
        "execution_lineage",
        "physical_plan",
        "use_sql",
        "sql",
        "params",
        "apply_python_sort",
    ),
    "mongoeco.engines.semantic_core:EngineFindSemantics": (
        "query_plan",
        "text_query",
        "projection",
        "collation",
        "sort",
        "skip",
        "limit",
        "hint",
    ),
    "mongoeco.engines.semantic_core:EngineUpdateSemantics": (
        "compiled_update_plan",
        "query_plan",
        "dialect",
        "collation",
        "variables",
    ),
    "mongoeco.api.operations:UpdateOperation": (
        "filter_spec",
        "collation",
        "sort",
        "array_filters",
        "hint",
        "planning_issues",
        "context",
    ),
    "mongoeco.core.operation_context:OperationContext": ("session",),
    "mongoeco.core.operators:CompiledUpdatePlan": ("compiled_operators", "touches_document_id"),
    "mongoeco.core.operators:CompiledUpdateOperator": ("operator",),
    "mongoeco.engines.capabilities:EngineCapabilities": ("change_delivery",),
    "mongoeco.types:UpdateResult": ("matched_count", "modified_count"),
    "mongoeco.types:WriteCommandResult": ("count", "modified_count", "upserted", "write_errors"),
    "mongoeco.core.query_plan:EqualsCondition": ("field", "value", "null_matches_undefined"),
    "mongoeco.core.query_plan:InCondition": ("field", "values"),
    "mongoeco.core.query_plan:AndCondition": ("clauses",),
    "mongoeco.core.query_plan:OrCondition": ("clauses",),
    "mongoeco.core.query_plan:RegexCondition": ("field", "pattern", "options"),
    **{
        f"mongoeco.core.query_plan:{name}": ("field", "value")
        for name in (
            "LessThanCondition",
            "LessThanOrEqualCondition",
            "GreaterThanCondition",
            "GreaterThanOrEqualCondition",
        )
    },
}

# "module:Class": attributes its constructor sets on the object, which the
# engine reads.
INSTANCE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    ENGINE: ("_path", "_lock", "_pending_connection", "_codec", "_admin_runtime", "_profiler"),
    # what `layout.HubAdminRuntime` reads of its engine
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime": ("_engine",),
    # what a dedicated reader kept for the next read (`layout.ReaderPool`) clears
    "mongoeco.engines._sqlite_connection:SQLiteConnection": ("_catalog_data_version",),
    "mongoeco.api._async.collection:AsyncCollection": (
        "_engine",
        "_db_name",
        "_collection_name",
        "_mongodb_dialect",
        "_planning_mode",
    ),
    "mongoeco.api._async.database_admin:AsyncDatabaseAdminService": ("_database",),
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService": ("_admin",),
}

# module: statements its source holds (compared with runs of white space as one
# space).
SQL: dict[str, tuple[str, ...]] = {
    # `find_one`'s fallback after its first-row fast path asks for this select list,
    # which `reads.SEEK_SELECTS` seeks (else every miss reads the whole collection)
    "mongoeco.engines._sqlite_read_fast_path_runtime": ('select_clause="storage_key, document"',),
    # a dedicated reader is made by the engine's connection factory and closed by
    # `close()` when its read is over: `layout.ReaderPool` keeps it instead
    "mongoeco.engines._sqlite_reader": (
        "self.connection = engine._create_sqlite_connection()",
        "self.connection.close()",
    ),
    # building an index deletes each document's entry by this statement, which
    # `layout.HubConnection` sends through the engine's index by storage key
    "mongoeco.engines._sqlite_index_runtime": (
        "DELETE FROM scalar_index_entries WHERE collection_id = ? AND storage_key = ? "
        "AND index_name = ?",
    ),
    # ... and a kept one's catalogs are cleared as its close clears them
    "mongoeco.engines._sqlite_connection": (
        "self.index_catalogs.clear() self._catalog_data_version = None",
    ),
    SQLITE: (
        "CREATE TABLE IF NOT EXISTS documents ( db_name TEXT NOT NULL, "
        "coll_name TEXT NOT NULL, storage_key TEXT NOT NULL, document TEXT NOT NULL, "
        "PRIMARY KEY (db_name, coll_name, storage_key) )",
        "CREATE TABLE IF NOT EXISTS scalar_index_entries ( collection_id INTEGER NOT NULL "
        "DEFAULT 0, index_name TEXT NOT NULL, storage_key TEXT NOT NULL, element_type TEXT "
        "NOT NULL, type_score INTEGER NOT NULL DEFAULT 100, element_key TEXT NOT NULL )",
        "CREATE TABLE IF NOT EXISTS multikey_entries ( collection_id INTEGER NOT NULL "
        "DEFAULT 0, index_name TEXT NOT NULL, storage_key TEXT NOT NULL, element_type TEXT "
        "NOT NULL, type_score INTEGER NOT NULL DEFAULT 100, element_key TEXT NOT NULL )",
        "CREATE TABLE IF NOT EXISTS indexes ( db_name TEXT NOT NULL, coll_name TEXT NOT NULL, "
        "name TEXT NOT NULL, physical_name TEXT, fields TEXT NOT NULL,",
        "multikey_physical_name TEXT,",
        '"ALTER TABLE indexes ADD COLUMN scalar_physical_name TEXT"',
        # the per-index copies the move to the shared layout drops, by name
        'return f"scidx_{digest}"',
        'return f"mkidx_{digest}"',
        # held by the batched update while the engine's own update takes it again
        "self._lock = threading.RLock()",
    ),
}

# module: every CREATE/DROP INDEX statement in it (the line that has it and
# the next, as in `SQL`), as many times as it occurs.
INDEX_STATEMENTS: dict[str, tuple[str, ...]] = {
    SQLITE: (
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_collections_collection_id "
        "ON collections (collection_id)",
        "CREATE INDEX IF NOT EXISTS idx_scalar_index_entries_storage "
        "ON scalar_index_entries (collection_id, storage_key)",
        "CREATE INDEX IF NOT EXISTS idx_ttl_index_entries_expiration ON ttl_index_entries (",
    ),
    "mongoeco.engines._sqlite_index_admin": (
        'CREATE INDEX {quote_identifier(physical_name)} " f"ON documents ({expressions})"',
        'CREATE INDEX {quote_identifier(str(multikey_physical_name))} " "ON multikey_entries '
        '(collection_id, index_name, type_score, element_key, storage_key)"',
        'CREATE INDEX {quote_identifier(str(scalar_physical_name))} " "ON scalar_index_entries '
        '(collection_id, index_name, type_score, element_key, storage_key)"',
        "DROP INDEX IF EXISTS {quote_identifier(str(target['physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(target['scalar_physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(target['multikey_physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(index['physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(index['scalar_physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(index['multikey_physical_name']))}\" )",
    ),
    "mongoeco.engines._sqlite_index_runtime": (
        'CREATE INDEX IF NOT EXISTS {engine._quote_identifier(physical_name)} " '
        '"ON multikey_entries (collection_id, index_name, type_score, element_key, storage_key)"',
        'CREATE INDEX IF NOT EXISTS {engine._quote_identifier(str(physical_name))} " '
        '"ON scalar_index_entries (collection_id, index_name, type_score, element_key, '
        'storage_key)"',
    ),
    "mongoeco.engines._sqlite_namespace_admin": (
        "DROP INDEX IF EXISTS {quote_identifier(str(index['physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(index['scalar_physical_name']))}\" )",
        "DROP INDEX IF EXISTS {quote_identifier(str(index['multikey_physical_name']))}\" )",
        'DROP INDEX IF EXISTS {quote_identifier(str(physical_name))}" )',
        'DROP INDEX IF EXISTS {quote_identifier(str(scalar_physical_name))}" )',
        'DROP INDEX IF EXISTS {quote_identifier(str(multikey_physical_name))}" )',
    ),
}
# Where to look for index statements: every module of this package of mongoeco.
INDEX_STATEMENT_PACKAGE = "mongoeco.engines"
INDEX_STATEMENT = re.compile(r"(?:CREATE (?:UNIQUE )?INDEX|DROP INDEX)\b[^\n]*\n[^\n]*")

# "module:function or Class.method": a digest of its source (as in `SQL`).
COPIED: dict[str, str] = {
    # `HubLayoutEngine._create_sqlite_connection` is a copy of it
    f"{ENGINE}._create_sqlite_connection": "7beca1fbf7010a39",
    # `patch_insert_command` and `patch_update_command` stand in for these
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_insert": "8adc348d0f610193",
    f"{WRITE_COMMANDS}:DatabaseAdminWriteCommandService.command_update": "160444f5afee3f9e",
    # `writes._compile_entry` compiles an update as these do
    "mongoeco.api._async._collection_modify:update_one": "4455fb3dd15f5d80",
    "mongoeco.api._async._collection_modify:execute_server_update": "afc6e68a5ea14f99",
    # `patch_insert_batch` leaves out its deletes of a new document's entries
    # (they follow an insert where no document was)
    "mongoeco.engines._sqlite_write_ops:insert_document_batch": "9f6f0624acf97713",
    # `HubSQLiteEngine._deserialize_document` stands in for it, and
    # `codec.plain_decode` decodes dates, ObjectIds and number wrappers as the
    # codec does
    f"{ENGINE}._deserialize_document": "7b20558fb2878f06",
    "mongoeco.core.codec:DocumentCodec.decode": "4b56dbb1c189fd50",
    "mongoeco.core.codec:DocumentCodec._is_tagged_value": "38a9b5b1977bc0a4",
    # `HubReadsEngine._find_scalar_sort_index` is a copy of it, less text indexes
    f"{ENGINE}._find_scalar_sort_index": "3ac1f465fa1b1f78",
    # The index facts (`reads.HubReadsEngine._hub_read_fact`) read what these
    # write: a multikey entry for each keyed element of an array, and each key
    # type's score
    f"{ENGINE}._extract_multikey_entries": "e9a6c802142805fe",
    f"{ENGINE}._build_multikey_rows_for_document": "0f0e773fedbe3365",
    f"{ENGINE}._multikey_value_signature": "f6b7838a5a330a7c",
    f"{ENGINE}._multikey_type_score": "314dbf482ab7479f",
    # `reads.HubReadsEngine._literal_scan_plan` finds the rows a `$regex` of plain
    # text may match in the stored JSON: a regex is matched with `re.search`
    # against string values only, and documents are stored as JSON text
    (
        "mongoeco.core._filtering_specials:FilteringSpecialOperatorsMixin._evaluate_regex"
    ): "3d947e5e014a5447",
    "mongoeco.core._filtering_support:compile_regex": "0b52cf0400fc1dd7",
    "mongoeco.core.json_compat:json_dumps_compact": "f92a85335019bdfa",
    f"{ENGINE}._serialize_document": "469a091acbc6f16f",
    # `layout.HubAdminRuntime` reads the catalog as these do (the same four
    # tables), and lists as these do with its own reads
    "mongoeco.engines._sqlite_catalog:list_collection_names": "76ebcaea83582fdc",
    "mongoeco.engines._sqlite_catalog:list_database_names": "a715915474595c57",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.collection_exists": "f67750801dcf5d1d",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_databases": "76982eecf5104cbe",
    f"{ADMIN_RUNTIME}:SQLiteAdminRuntime.list_collections": "4c93f5f96b678336",
}


class IncompatibleMongoeco(ImportError):
    """The installed mongoeco is not the one the hub's engine was written for."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "the hub's store engine cannot run on the installed mongoeco: "
            + "; ".join(problems)
            + " (hub/store/engine/ was written for mongoeco "
            + f"{WRITTEN_FOR}.x: install that, or adapt the engine to the new version)"
        )


def verify_mongoeco() -> None:
    """Raise `IncompatibleMongoeco` naming every difference `check_mongoeco` finds."""
    problems = check_mongoeco()
    if problems:
        raise IncompatibleMongoeco(problems)


def check_mongoeco(
    *,
    version: str | None = None,
    names: Iterable[str] = NAMES,
    parameters: Mapping[str, tuple[str, ...]] = PARAMETERS,
    fields: Mapping[str, tuple[str, ...]] = FIELDS,
    instance_attributes: Mapping[str, tuple[str, ...]] = INSTANCE_ATTRIBUTES,
    sql: Mapping[str, tuple[str, ...]] = SQL,
    index_statements: Mapping[str, tuple[str, ...]] = INDEX_STATEMENTS,
    copied: Mapping[str, str] = COPIED,
) -> list[str]:
    """What differs between the installed mongoeco and the one the engine was
    written for, one sentence each (empty: nothing). Each argument defaults to
    what the engine relies on; `version` to the installed one. A different
    version is the only problem reported: the names of another version are not
    worth comparing."""
    installed = importlib.metadata.version("mongoeco") if version is None else version
    if installed.split(".")[:2] != WRITTEN_FOR.split("."):
        return [f"mongoeco {installed} installed, the hub's engine was written for {WRITTEN_FOR}.x"]
    sources = _Sources()
    problems = [problem for name in names if (problem := _missing(name))]
    for name, expected in parameters.items():
        problems += _parameters_problem(name, expected)
    for name, wanted in fields.items():
        problems += _fields_problems(name, wanted)
    for name, attributes in instance_attributes.items():
        problems += _instance_attribute_problems(sources, name, attributes)
    for module, statements in sql.items():
        problems += _sql_problems(sources, module, statements)
    problems += _index_statement_problems(sources, index_statements)
    for name, digest in copied.items():
        problems += _copied_problems(sources, name, digest)
    return list(dict.fromkeys(problems))  # a name gone is one problem, however used


def _dotted(name: str) -> str:
    return name.replace(":", ".")


def _resolve(name: str) -> Any:
    """The object `module:attribute.path` names; LookupError naming what is gone."""
    module_name, _, path = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError:
        raise LookupError(f"{module_name} no longer exists") from None
    walked = module_name
    for part in path.split(".") if path else ():
        walked += f".{part}"
        try:
            # A module's attributes may be made on demand (its `__getattr__`);
            # a class's are looked up without running their descriptors.
            if inspect.ismodule(target):
                target = getattr(target, part)
            else:
                target = inspect.getattr_static(target, part)
        except AttributeError:
            raise LookupError(f"{walked} no longer exists") from None
        if isinstance(target, (staticmethod, classmethod)):
            target = target.__func__
    return target


def _missing(name: str) -> str | None:
    try:
        _resolve(name)
    except LookupError as gone:
        return str(gone)
    return None


def _parameters_problem(name: str, expected: tuple[str, ...]) -> list[str]:
    try:
        target = _resolve(name)
    except LookupError as gone:
        return [str(gone)]
    try:
        found = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return [f"{_dotted(name)} is no longer a function"]
    if found != expected:
        return [
            f"{_dotted(name)} now takes ({', '.join(found)}), "
            f"the hub's engine was written for ({', '.join(expected)})"
        ]
    return []


def _fields_problems(name: str, wanted: tuple[str, ...]) -> list[str]:
    try:
        target = _resolve(name)
    except LookupError as gone:
        return [str(gone)]
    if dataclasses.is_dataclass(target):
        found = {field.name for field in dataclasses.fields(target)}
    else:
        try:
            found = set(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            found = set()
    return [
        f"{_dotted(name)} no longer has the field {field!r}"
        for field in wanted
        if field not in found
    ]


class _Sources:
    """mongoeco's source files, each read once, with white space collapsed."""

    def __init__(self) -> None:
        self._texts: dict[str, str | None] = {}

    def text(self, module: str) -> str | None:
        """The module's source (None when it is not installed as source)."""
        if module not in self._texts:
            try:
                spec = importlib.util.find_spec(module)
            except ImportError:
                spec = None
            origin = spec.origin if spec is not None else None
            text = None
            if origin and origin.endswith(".py"):
                try:
                    text = Path(origin).read_text(encoding="utf-8")
                except OSError:
                    text = None
            self._texts[module] = text
        return self._texts[module]

    def flat(self, module: str) -> str | None:
        text = self.text(module)
        return None if text is None else _collapse(text)

    def package_modules(self, package: str) -> list[str]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return []
        return sorted(
            f"{package}.{path.stem}"
            for location in spec.submodule_search_locations
            for path in Path(location).glob("*.py")
            if path.stem != "__init__"
        )


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _instance_attribute_problems(
    sources: _Sources, name: str, attributes: tuple[str, ...]
) -> list[str]:
    module, _, path = name.partition(":")
    body = _definition(sources.text(module), path)
    if body is None:
        return [] if sources.text(module) is None else [f"{_dotted(name)} no longer exists"]
    return [
        f"{_dotted(name)} no longer sets self.{attribute}"
        for attribute in attributes
        if not re.search(rf"\bself\.{re.escape(attribute)}\s*(?::[^=\n]*)?=", body)
    ]


def _sql_problems(sources: _Sources, module: str, statements: tuple[str, ...]) -> list[str]:
    text = sources.flat(module)
    if text is None:
        return []
    return [
        f"{module} no longer has {statement!r}"
        for statement in statements
        if _collapse(statement) not in text
    ]


def _index_statement_problems(
    sources: _Sources, expected: Mapping[str, tuple[str, ...]]
) -> list[str]:
    problems = []
    modules = set(sources.package_modules(INDEX_STATEMENT_PACKAGE)) | set(expected)
    for module in sorted(modules):
        text = sources.text(module)
        if text is None:
            continue
        found = Counter(_collapse(match) for match in INDEX_STATEMENT.findall(text))
        wanted = Counter(_collapse(statement) for statement in expected.get(module, ()))
        problems += [
            f"{module} no longer has the index statement {statement!r}, "
            "which the hub's HubConnection rewrites"
            for statement in sorted((wanted - found).elements())
        ]
        problems += [
            f"{module} has an index statement the hub's HubConnection does not know: {statement!r}"
            for statement in sorted((found - wanted).elements())
        ]
    return problems


def _copied_problems(sources: _Sources, name: str, digest: str) -> list[str]:
    module, _, path = name.partition(":")
    text = sources.text(module)
    if text is None:
        return []
    body = _definition(text, path)
    if body is None:
        return [f"{_dotted(name)} no longer exists"]
    found = source_digest(body)
    if found != digest:
        return [
            f"{_dotted(name)} has changed (the hub's engine copies or stands in for it; "
            f"its source digest is {found}, was {digest})"
        ]
    return []


def source_digest(source: str) -> str:
    """A short digest of a definition's source, white space collapsed."""
    return hashlib.sha256(_collapse(source).encode()).hexdigest()[:16]


def _definition(text: str | None, path: str) -> str | None:
    """The source of the class or function `path` (dotted: a method is
    `Class.method`) in a module's source: its `def` or `class` line and the
    lines under it, up to the next line indented as far as it or less (but for
    the closing bracket of a header on several lines)."""
    if text is None:
        return None
    start, stop, depth = 0, len(text), 0
    for part in path.split("."):
        header = re.compile(
            rf"^ {{{depth}}}(?:async\s+def|def|class)\s+{re.escape(part)}\b", re.MULTILINE
        )
        found = header.search(text, start, stop)
        if found is None:
            return None
        after = text.find("\n", found.end())
        after = stop if after == -1 or after > stop else after
        outdent = re.compile(rf"^ {{0,{depth}}}[^\s)]", re.MULTILINE).search(text, after, stop)
        start, stop, depth = found.start(), outdent.start() if outdent else stop, depth + 4
    return text[start:stop].rstrip()
