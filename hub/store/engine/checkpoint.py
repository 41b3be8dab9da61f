"""The write-ahead log, checkpointed from a thread of its own (`WalCheckpointer`),
not inside whichever commit finds it long, where the store's one loop waited on
the copying and the sync.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

# A commit that finds the write-ahead log this long (in pages) checkpoints it
# itself. `WalCheckpointer` keeps the log far shorter from its own thread; this
# is the backstop should it fall behind (SQLite's default is 1,000 pages).
AUTOCHECKPOINT_PAGES = 16_384


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
