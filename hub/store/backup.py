"""`hub backup`: a consistent copy of the embedded store, taken while it runs.

The embedded store keeps everything in one SQLite database in write-ahead-log mode
(`hub.sqlite3` in `store.data_dir`). SQLite's online backup, run in one step,
copies the database as one read transaction sees it: every write committed
before the copy began, none that came after, while the store goes on taking
writes (in WAL mode readers do not block the writer, nor it them). The copy is
written beside the target under a temporary name, checked, synced and renamed,
so the target is either the old file or a whole new backup.

A `data_dir` holding only the backup, named `hub.sqlite3`, opens with everything
in it (docs/operations.md, "Backups").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from hub.store.embedded_server import DB_NAME

# How long the copy may wait for the store's lock (it needs none in WAL mode but
# for a moment at the start, while the store checkpoints).
BUSY_TIMEOUT_MS = 30_000


class BackupError(Exception):
    """The backup cannot be taken; the message says why and names the file."""


@dataclass
class BackupReport:
    source: Path
    target: Path
    bytes: int
    seconds: float
    documents: dict[str, int] = field(default_factory=dict)  # "database.collection" -> count

    @property
    def total(self) -> int:
        return sum(self.documents.values())


def backup_embedded(data_dir: Path, target: Path) -> BackupReport:
    """Copy the embedded store in `data_dir` to `target` (a running store or not)."""
    source = data_dir / DB_NAME
    if not source.is_file():
        raise BackupError(f"{source}: no embedded store here (is store.data_dir right?)")
    target = target.resolve()
    if target == source.resolve():
        raise BackupError(f"{target}: that is the store itself; write the backup elsewhere")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such directory")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as error:
        raise BackupError(f"{source}: cannot open: {error}") from error
    try:
        dst = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, one read transaction.
            src.backup(dst, pages=-1)
            # The copy is a store of its own: one file, no log beside it.
            dst.execute("PRAGMA journal_mode = DELETE")
            check = dst.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise BackupError(f"{partial}: the copy failed its check: {check}")
            documents = {
                f"{db}.{coll}": int(count)
                for db, coll, count in dst.execute(
                    "SELECT db_name, coll_name, COUNT(*) FROM documents GROUP BY 1, 2"
                )
            }
        finally:
            dst.close()
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(target)
        with contextlib.suppress(OSError):  # the rename itself, durably
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise BackupError(f"{source}: the copy failed: {error}") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return BackupReport(
        source=source,
        target=target,
        bytes=target.stat().st_size,
        seconds=time.monotonic() - started,
        documents=documents,
    )
