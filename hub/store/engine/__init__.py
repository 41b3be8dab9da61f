"""The embedded store's engine: mongoeco's SQLite engine, adjusted for the hub.

Imported only by the store's child process (`hub.store.embedded_server`). Every
adjustment keeps what a client sees exactly as before; each one removes a scan of
a whole collection, or repeated work, from a path the hub takes all the time.
Each is explained, and made, in the module of its concern:

- `layout`: one shared physical index per entry table instead of three per
  logical index (a store in the old layout is moved at open, once), the index
  entries rebuilt at open only when the engine's version changes, and the
  connections' settings;
- `writes`: several updates in one transaction, the lean and simple update
  paths, the update's SQL translation refused early, containers copied instead
  of whole documents, the batch insert (without copies of the wire's documents
  or deletes of a new document's entries), the insert's uniqueness scan only
  for numeric ids, and the change-stream outbox switched off;
- `reads`: the seek and walk plans of a multi-document `find`, the Decimal128
  question answered from the query's operands, and every stored document
  decoded through the codec's one parse;
- `codec` and `wire`: a document checked once and encoded in one walk, a stored
  one decoded as it is parsed, and plain wire values kept as they are, read and
  answered;
- `checkpoint`: the write-ahead log checkpointed from a thread of its own;
- `text`: `$text` answered from SQLite FTS5, kept in step by triggers.

They rely on private names of mongoeco (subclassed methods, patched module
attributes, SQL rewritten by its text), so the package is written for one minor
version of it: `compat` checks, before any of them is imported, that the
installed mongoeco is that version and still has every one of those names, and
refuses to load (`IncompatibleMongoeco`, an ImportError) saying what changed.
"""

from __future__ import annotations

from typing import Any

from hub.store.engine import compat

compat.verify_mongoeco()  # before any module below imports a private name of mongoeco

from hub.store.engine.checkpoint import AUTOCHECKPOINT_PAGES, WalCheckpointer  # noqa: E402
from hub.store.engine.codec import patch_codec_validation, plain_encode  # noqa: E402
from hub.store.engine.layout import HubLayoutEngine  # noqa: E402
from hub.store.engine.reads import HubReadsEngine  # noqa: E402
from hub.store.engine.text import HubTextEngine  # noqa: E402
from hub.store.engine.wire import patch_wire_decoding, patch_wire_encoding  # noqa: E402
from hub.store.engine.writes import (  # noqa: E402
    HubWritesEngine,
    patch_insert_batch,
    patch_insert_command,
    patch_update_command,
    patch_update_copies,
    patch_update_translation,
)

# What the store's child process (`hub.store.embedded_server`) and the tests use.
__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "HubSQLiteEngine",
    "WalCheckpointer",
    "compat",
    "patch_codec_validation",
    "patch_insert_batch",
    "patch_insert_command",
    "patch_update_command",
    "patch_update_copies",
    "patch_update_translation",
    "patch_wire_decoding",
    "patch_wire_encoding",
    "plain_encode",
]


class HubSQLiteEngine(HubTextEngine, HubReadsEngine, HubWritesEngine, HubLayoutEngine):
    """mongoeco's SQLite engine with every adjustment of this package.

    The order of the bases matters where two of them adjust one method: a new
    connection is made by the layout's `_create_sqlite_connection`, then the
    reads' one registers its row check on it."""

    async def _run_blocking(self, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        # The engine hands every operation to a worker thread and back. In the
        # store's own process nothing else runs on the event loop but the wire
        # server, and the engine's lock lets one operation run at a time anyway:
        # here it runs on the loop's thread, without the two thread hops.
        return func(*args, **kwargs)
