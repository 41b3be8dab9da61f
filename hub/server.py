"""Serving the hub: the HTTP server `hub serve` runs, with its connection limits,
until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from hub.app import build_app
from hub.settings import ServerSettings, Settings

log = logging.getLogger("hub.server")

# -- the server's connections ---------------------------------------------------------------
#
# aiohttp itself closes a connection left idle for `keepalive_timeout`, whether it
# never sent a request or is between two. It sets no deadline for a request that
# trickles in (headers or body), and it takes connections until the process runs
# out of file descriptors. `_Connections` adds both, wrapping aiohttp's
# per-connection protocol (`RequestHandler`) and seeing each request start (the
# server's request factory) and get its answer (`on_response_prepare`).


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler for it, plus what the limits need."""

    def __init__(self, connections: _Connections) -> None:
        self.connections = connections
        self.handler: web.RequestHandler | None = None  # None: refused at the cap
        # When the request now arriving began (loop time), until it is all in; the
        # connections' sweep closes the connection once it is read_timeout old. (One
        # sweep rather than a timer per request: this runs for every webhook.)
        self.since: float | None = None
        self.handling = False  # a request has started and its answer is not ready
        self.body_pending = False  # that request's body has not all arrived
        self.upgraded = False  # a WebSocket: busy for as long as it is open

    @property
    def waiting_on_client(self) -> bool:
        """Idle, or in a request that has not all arrived: closing it stops no work."""
        return not self.upgraded and (self.body_pending or not self.handling)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.connections.admit(self):
            transport.close()
            return
        self.handler = self.connections.new_handler(self)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return
        self.connections.touch(self)
        if self.since is None and not self.handling and not self.upgraded:
            self._arm()  # the first bytes of a request
        self.handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.connections.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def request_started(self, body: StreamReader) -> None:
        """The request's headers are in; aiohttp hands it to the application."""
        self.handling = True
        if body.is_eof():
            self._received()
        else:
            self.body_pending = True
            if self.since is None:
                self._arm()
            body.on_eof(self._received)

    def response_prepared(self, status: int) -> None:
        self.handling = False
        self.connections.touch(self)
        if status == 101:
            self.upgraded = True
            self._disarm()

    def close(self) -> None:
        if self.handler is not None:
            self.handler.force_close()

    def _received(self) -> None:
        self.body_pending = False
        self._disarm()

    def _arm(self) -> None:
        self.since = self.connections.loop.time()

    def _disarm(self) -> None:
        self.since = None

    def too_slow(self) -> None:
        self.since = None
        peer = self.handler.peername if self.handler is not None else None
        log.info(
            "connection closed: request not received in time",
            extra={"peer": str(peer), "read_timeout": self.connections.read_timeout},
        )
        self.close()


class _Connections:
    """The server's open connections: each request must arrive in full within
    `read_timeout` of its first byte, and at most `max_connections` are open (a new
    one closes the one idle longest, or is refused when none is idle)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.read_timeout = settings.read_timeout
        self.max_connections = settings.max_connections
        self.open: OrderedDict[_Connection, None] = OrderedDict()  # idle longest first
        self.by_handler: dict[web.RequestHandler, _Connection] = {}
        self.server: web.Server | None = None
        self.closed_at_cap = 0
        self.refused_at_cap = 0
        self.next_cap_warning = 0.0
        self.loop = asyncio.get_running_loop()
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Close connections whose request has not all arrived in read_timeout."""
        self._sweeper = asyncio.create_task(self._sweep(), name="hub-connection-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        # A quarter of the timeout between looks: a slow request is closed within
        # 1.25 read_timeout of its first byte (a second at most past it).
        every = min(1.0, self.read_timeout / 4)
        while True:
            await asyncio.sleep(every)
            late = self.loop.time() - self.read_timeout
            for connection in [c for c in self.open if c.since is not None and c.since < late]:
                connection.too_slow()

    def serve(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for a listening socket of `server`'s."""
        self.server = server
        make_request = server.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            connection = self.by_handler.get(protocol)
            if connection is not None:
                connection.request_started(payload)
            return make_request(message, payload, protocol, writer, task)

        server.request_factory = request_factory
        return lambda: _Connection(self)

    async def response_prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        """`on_response_prepare`: the application has answered the request."""
        connection = self.by_handler.get(request.protocol)
        if connection is not None:
            connection.response_prepared(response.status)

    def new_handler(self, connection: _Connection) -> web.RequestHandler:
        assert self.server is not None
        handler = self.server()
        self.by_handler[handler] = connection
        return handler

    def admit(self, connection: _Connection) -> bool:
        if len(self.open) >= self.max_connections:
            idle = next((c for c in self.open if c.waiting_on_client), None)
            if idle is None:
                self._at_cap(refused=True)
                return False
            self.forget(idle)
            idle.close()
            self._at_cap(refused=False)
        self.open[connection] = None
        return True

    def touch(self, connection: _Connection) -> None:
        if connection in self.open:
            self.open.move_to_end(connection)

    def forget(self, connection: _Connection) -> None:
        self.open.pop(connection, None)
        if connection.handler is not None:
            self.by_handler.pop(connection.handler, None)

    def _at_cap(self, *, refused: bool) -> None:
        if refused:
            self.refused_at_cap += 1
        else:
            self.closed_at_cap += 1
        now = time.monotonic()
        if now >= self.next_cap_warning:  # once a minute at most: it comes in floods
            log.warning(
                "connection cap reached",
                extra={
                    "max_connections": self.max_connections,
                    "closed_idle": self.closed_at_cap,
                    "refused": self.refused_at_cap,
                },
            )
            self.closed_at_cap = self.refused_at_cap = 0
            self.next_cap_warning = now + 60


def _raise_fd_limit(max_connections: int) -> None:
    """Raise the soft file-descriptor limit to the hard one: the connection cap,
    not running out of descriptors, is what should turn connections away."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("cannot raise the file-descriptor limit", extra={"error": str(error)})
    # Room beyond the connections: the store's connections, files, the listener.
    if soft != resource.RLIM_INFINITY and soft < max_connections + 100:
        log.warning(
            "server.max_connections is above what the file-descriptor limit leaves room for",
            extra={"max_connections": max_connections, "fd_limit": soft},
        )


# The graceful stop: requests in flight get `shutdown_timeout`, then sends in flight
# as long again, then the store is flushed and closed. Whatever is still running
# at 2 x shutdown_timeout + STOP_SLACK is cut off, so the stop fits the grace
# period the deployment files give it (docs/operations.md, "Graceful stop").
STOP_SLACK = 5.0


def stop_budget(settings: ServerSettings) -> float:
    """The most seconds a graceful stop takes, from SIGTERM to exit."""
    return 2 * settings.shutdown_timeout + STOP_SLACK


async def _clean_up(runner: web.AppRunner, budget: float) -> None:
    """Stop the application (in-flight requests, then its parts), within `budget`."""
    try:
        async with asyncio.timeout(budget):
            await runner.cleanup()
    except TimeoutError:
        # Cut short like a SIGKILL at the end of the grace period would, but at
        # a known point, said in the log: sends still in flight are sent again
        # by another hub (at-least-once), webhooks not answered are retried.
        log.error("graceful stop cut short", extra={"after_seconds": budget})


async def run_forever(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (within `stop_budget`)."""
    import signal

    server_settings = settings.server
    _raise_fd_limit(server_settings.max_connections)
    app = build_app(settings)
    connections = _Connections(server_settings)
    app.on_response_prepare.append(connections.response_prepared)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=server_settings.shutdown_timeout,
        keepalive_timeout=server_settings.keepalive_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    listener: asyncio.Server | None = None
    try:
        # What web.TCPSite does, with the connections' protocol around aiohttp's.
        listener = await loop.create_server(
            connections.serve(runner.server),
            server_settings.host,
            server_settings.port,
            backlog=128,
        )
        connections.start()
        port = server_settings.port
        if listener.sockets:
            port = listener.sockets[0].getsockname()[1]
        print(f"hub: inbox at http://{server_settings.host}:{port}/", flush=True)
        # What start-up built lives as long as the hub: out of the collector's way,
        # a full collection no longer walks it (tens of milliseconds each, in the
        # middle of whatever webhook is waiting).
        gc.freeze()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        log.info("shutting down")
    finally:
        if listener is not None:
            listener.close()  # take no more connections; the runner ends the open ones
        await _clean_up(runner, stop_budget(server_settings))
        await connections.stop()
