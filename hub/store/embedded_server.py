"""The embedded store's child process: mongoeco's wire server on its SQLite engine.

Run as `python -m hub.store.embedded_server --data-dir DIR`. It prints
`READY <port>` once it accepts connections, writes `store.json` beside the data so
other hub commands can find it, and exits when its parent dies (stdin closes, or
the kernel's parent-death signal), so a `kill -9` of the hub never leaves it behind.

The engine itself, adjusted for the hub's reads and writes, is the package
`hub.store.engine`; it is imported only here, in the child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import signal
import stat
import sys
from pathlib import Path

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


async def _serve(data_dir: Path, host: str, port: int) -> int:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    from hub.store.engine import (
        HubSQLiteEngine,
        WalCheckpointer,
        patch_codec_validation,
        patch_insert_batch,
        patch_insert_command,
        patch_update_command,
        patch_update_copies,
        patch_update_translation,
        patch_wire_decoding,
        patch_wire_encoding,
    )

    patch_codec_validation()
    patch_insert_batch()
    patch_insert_command()
    patch_update_command()
    patch_update_copies()
    patch_update_translation()
    patch_wire_decoding()
    patch_wire_encoding()
    engine = HubSQLiteEngine(str(data_dir / DB_NAME))
    server = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port)
    address = await server.start()
    checkpointer = WalCheckpointer(str(data_dir / DB_NAME))
    checkpointer.start()
    info = data_dir / INFO_NAME
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": address.host, "port": address.port}))
    tmp.replace(info)
    print(f"READY {address.port}", flush=True)
    gc.freeze()  # the engine's start-up state stays: no full collection walks it again

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
    await asyncio.to_thread(checkpointer.stop)
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
