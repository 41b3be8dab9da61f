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
# The checkpointer's pause while the log grows, and while it does not.
BUSY_INTERVAL = 0.02
IDLE_INTERVAL = 0.5


class WalCheckpointer:
    """Checkpoints the store's write-ahead log from a thread of its own.

    SQLite checkpoints the log inside the commit that finds it 1,000 pages long:
    that commit, and every command queued behind it on the store's one event
    loop, waits while pages are read, written back and synced. Here a thread
    with its own connection runs a passive checkpoint (it takes no lock a
    writer needs, and SQLite lets go of the GIL while it works), so commits
    only append to the log: every `busy_interval` seconds while the log grows,
    every `interval` while it does not. Stopping runs a last, full checkpoint.

    While writes go on, a passive checkpoint never catches up with the log,
    so the log starts over from its beginning only when a commit finds it
    AUTOCHECKPOINT_PAGES long and checkpoints the rest itself, syncing both
    files. The shorter the pause, the less that commit has to copy and sync:
    at half a second, under a steady ingest into a large store, it held the
    store for 100-200 ms about once a second; at 20 ms, for less than 50."""

    def __init__(
        self, path: str, interval: float = IDLE_INTERVAL, busy_interval: float = BUSY_INTERVAL
    ) -> None:
        self._path = path
        self._interval = interval
        self._busy_interval = min(busy_interval, interval)
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
            pause, last = self._busy_interval, None  # a log left long is copied back at once
            while not self._stopping.wait(pause):
                self._checkpoint(connection, "PASSIVE")
                version = self._data_version(connection)
                pause = self._busy_interval if version != last else self._interval
                last = version
            self._checkpoint(connection, "TRUNCATE")
        finally:
            connection.close()

    @staticmethod
    def _data_version(connection: sqlite3.Connection) -> int | None:
        """A number that changes when another connection commits (None if it
        could not be read: the store is closing)."""
        try:
            (version,) = connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(version)

    def _checkpoint(self, connection: sqlite3.Connection, mode: str) -> None:
        try:
            connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as error:  # busy, or the store is closing: next time
            log.warning("store checkpoint skipped", extra={"error": str(error)})
        else:
            self.checkpoints += 1
