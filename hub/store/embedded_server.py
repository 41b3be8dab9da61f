"""The embedded store's child process: mongoeco's wire server on its SQLite engine.

Run as `python -m hub.store.embedded_server --data-dir DIR`. It prints
`READY <port>` once it accepts connections, writes `store.json` beside the data so
other hub commands can find it, and exits when its parent dies (stdin closes, or
the kernel's parent-death signal), so a `kill -9` of the hub never leaves it behind.

Two engine behaviours are adjusted here, in the server we ship, because they make
every write cost a scan of the whole collection:

- a single insert re-checks `_id` uniqueness by loading every document, even when
  the `_id` is a string or ObjectId whose primary-key lookup already decided it
  (the scan exists for numeric ids, where 1 and 1.0 are equal);
- the wire `insert` command inserts its documents one by one, one transaction
  each, instead of using the engine's batch path.

Neither changes what a client sees: duplicates are still refused with code 11000
and per-document write errors, exactly as before.

Before every query that follows a write, the engine scans the collection for
Decimal128 values in the queried fields (its cache of that answer is dropped on
each write). The hub stores no Decimal128 values, so here the question is
answered from the query's own operands only.

The engine's durable change-stream outbox is also switched off (it starts a
thread and serialises the whole document on every write, more than half the cost
of an update): the hub does not use change streams, and in-process change streams
still work from the engine's in-memory publication.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

BUSY_EXIT = 3
LOCK_NAME = "store.lock"
INFO_NAME = "store.json"
DB_NAME = "hub.sqlite3"


def _die_with_parent() -> None:
    """Ask Linux to send SIGHUP when the parent dies (best effort elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGHUP, 0, 0, 0)


def _patch_engine() -> type[Any]:
    import dataclasses

    import mongoeco.engines.sqlite as sqlite_engine
    from mongoeco.api._async import _database_admin_write_commands as write_commands
    from mongoeco.core.identity import id_contains_numeric_value
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.errors import BulkWriteError

    sqlite_engine._sqlite_append_change = lambda *args, **kwargs: None

    class HubSQLiteEngine(SQLiteEngine):
        capabilities = dataclasses.replace(SQLiteEngine.capabilities, change_delivery="none")

        def _plan_requires_python_for_decimal_numeric(  # type: ignore[override]
            self, db_name: str, coll_name: str, plan: Any
        ) -> bool:
            return bool(self._plan_contains_decimal_operand(plan))

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
    return HubSQLiteEngine


async def _serve(data_dir: Path, host: str, port: int) -> int:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    engine_class = _patch_engine()
    engine = engine_class(str(data_dir / DB_NAME))
    server = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port)
    address = await server.start()
    info = data_dir / INFO_NAME
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": address.host, "port": address.port}))
    tmp.replace(info)
    print(f"READY {address.port}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Ctrl-C in a terminal, and a SIGTERM sent to the whole process group (a
    # container or service stopping), reach us as well as the hub: the hub decides
    # when its store stops (by closing our stdin), so it can flush first. Run by
    # hand, with no hub above it, SIGTERM stops the server.
    watched = stat.S_ISFIFO(os.fstat(0).st_mode)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if watched:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGHUP, stop.set)  # the parent died
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def watch_parent() -> None:
        # The parent holds our stdin; EOF means it has gone, however it died.
        reader = asyncio.StreamReader()
        with contextlib.suppress(Exception):
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while await reader.read(4096):
                pass
        stop.set()

    # Only a pipe from a parent hub is watched; run by hand, the server stays up.
    watcher = asyncio.create_task(watch_parent() if watched else asyncio.sleep(0))
    await stop.wait()
    watcher.cancel()
    with contextlib.suppress(FileNotFoundError):
        info.unlink()
    await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The hub's embedded store server")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("BUSY", flush=True)
        return BUSY_EXIT
    try:
        return asyncio.run(_serve(data_dir, args.host, args.port))
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
