"""An SMTP relay for tests: a real aiosmtpd server on 127.0.0.1, on the running loop.

It stands in for the provider's SMTP host (the hub reaches it through the inbox's
`smtp_host`/`smtp_port`). It records every message it accepts and every command
it answered (with its monotonic time and code), can enforce a rate (answering
`451 4.7.1` to MAIL FROM over it, counted in `rejected_429` like the HTTP fakes so
a pacing benchmark reads both the same way), can speak STARTTLS or implicit TLS,
can require a login, and can be told to refuse, stall or hang up at a given step.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    at: float

    @property
    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=policy.default).parsebytes(self.raw)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class _Failure:
    code_and_text: str | None  # "550 5.1.1 no such user"; None: act, do not answer
    action: str = "answer"  # answer | hang | drop


@dataclass
class SmtpSink:
    rate: float | None = None  # messages per second over a 1 s window
    starttls: ssl.SSLContext | None = None
    implicit_tls: ssl.SSLContext | None = None
    users: dict[str, str] | None = None  # login -> password; AUTH required when set
    data_size_limit: int = 32 * 1024 * 1024
    messages: list[SinkMessage] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    _failures: dict[str, deque[_Failure]] = field(default_factory=dict)
    _window: deque[float] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _live: set[SMTP] = field(default_factory=set)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    # -- control ---------------------------------------------------------------------

    def fail_next(self, command: str, reply: str, times: int = 1) -> None:
        """Answer the next `times` MAIL, RCPT or DATA with `reply` ("550 5.1.1 ...")."""
        queue = self._failures.setdefault(command.upper(), deque())
        for _ in range(times):
            queue.append(_Failure(reply))

    def hang_next(self, command: str) -> None:
        """Never answer the next `command` (the client times out)."""
        self._failures.setdefault(command.upper(), deque()).append(_Failure(None, "hang"))

    def drop_next(self, command: str) -> None:
        """Close the connection instead of answering the next `command`."""
        self._failures.setdefault(command.upper(), deque()).append(_Failure(None, "drop"))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """The messages, once at least `count` have arrived."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.messages) < count:
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"{len(self.messages)} of {count} messages arrived")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except TimeoutError:
                continue
        return self.messages

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sink = self

        class Session_(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sink._live.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sink._live.discard(self)
                super().connection_lost(error)

        def factory() -> SMTP:
            with warnings.catch_warnings():
                # AUTH without TLS is what a test relay on loopback is for.
                warnings.simplefilter("ignore", UserWarning)
                return Session_(
                    self,
                    data_size_limit=self.data_size_limit,
                    hostname="sink.test",
                    tls_context=self.starttls,
                    require_starttls=self.starttls is not None,
                    authenticator=self._authenticate if self.users is not None else None,
                    auth_required=self.users is not None,
                    auth_require_tls=False,
                    enable_SMTPUTF8=True,
                    loop=loop,
                )

        self._server = await loop.create_server(
            factory, self.host, self.port, ssl=self.implicit_tls
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._release.set()
        if self._server is None:
            return
        self._server.close()
        for session in list(self._live):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None

    # -- aiosmtpd hooks --------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users is not None
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        self.requests.append({"command": "AUTH", "at": time.monotonic(), "ok": ok})
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False)

    async def _scripted(self, server: SMTP, command: str) -> str | None:
        queue = self._failures.get(command)
        if not queue:
            return None
        failure = queue.popleft()
        if failure.action == "hang":
            await self._release.wait()
            return "421 4.3.2 shutting down"
        if failure.action == "drop":
            if server.transport is not None:
                server.transport.close()
            await asyncio.sleep(3600)
        return failure.code_and_text

    def _record(self, command: str, reply: str, **extra: Any) -> str:
        self.requests.append(
            {"command": command, "at": time.monotonic(), "status": int(reply[:3]), **extra}
        )
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._scripted(server, "MAIL")
        if scripted is not None:
            return self._record("MAIL", scripted)
        if self.rate is not None:
            now = time.monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                self.rejected_429 += 1
                return self._record("MAIL", "451 4.7.1 Rate limit exceeded, try again later")
            self._window.append(now)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return self._record("MAIL", "250 2.1.0 OK")

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._scripted(server, "RCPT")
        if scripted is not None:
            return self._record("RCPT", scripted, to=address)
        envelope.rcpt_tos.append(address)
        return self._record("RCPT", "250 2.1.5 OK", to=address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = await self._scripted(server, "DATA")
        if scripted is not None:
            return self._record("DATA", scripted)
        self.messages.append(
            SinkMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                raw=bytes(envelope.original_content or b""),
                at=time.monotonic(),
            )
        )
        self._arrived.set()
        return self._record("DATA", f"250 2.0.0 OK queued as {len(self.messages)}")
