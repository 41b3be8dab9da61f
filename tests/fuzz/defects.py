"""The server errors the fuzzers have found and that are not fixed yet.

Each defect is named by the exception and the deepest frame of the hub's own
code (hub/, channels/) it was raised through, read from the traceback that the
error middleware logs with its 500 ("unhandled error"). A fuzzer lets a 5xx
pass only when every error logged for that request is one of these; any other
5xx fails it.

Each defect has a minimal reproducer marked `xfail(strict=True)` (named in
`reproducer`): once the defect is fixed, that test passes, strict xfail turns
it into a failure, and whoever fixed it removes the mark and the entry here.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN_CODE = ("hub/", "channels/", "bots/", "scheduler/")


@dataclass(frozen=True)
class Defect:
    exceptions: tuple[str, ...]  # the exception's class names
    where: str  # "<file>:<function>", the deepest frame in the hub's own code
    reproducer: str  # the xfail test that shows it
    summary: str


# None known: the four the fuzzers found are fixed (see the reproducers in
# test_webhooks.py); a new one is listed here until it is.
KNOWN_DEFECTS: tuple[Defect, ...] = ()


@dataclass(frozen=True)
class ServerError:
    exception: str
    where: str
    message: str
    trace: str

    @property
    def known(self) -> Defect | None:
        for defect in KNOWN_DEFECTS:
            if self.exception in defect.exceptions and defect.where == self.where:
                return defect
        return None

    def __str__(self) -> str:
        return f"{self.exception} at {self.where}: {self.message[:200]}\n{self.trace}"


def describe(error: BaseException) -> ServerError:
    """The exception's class and the deepest frame of the hub's own code it went through."""
    where = "?"
    for frame in traceback.extract_tb(error.__traceback__):
        try:
            relative = Path(frame.filename).resolve().relative_to(ROOT).as_posix()
        except ValueError:
            continue
        if relative.startswith(OWN_CODE):
            where = f"{relative}:{frame.name}"
    trace = "".join(traceback.format_exception(error, limit=-6))
    return ServerError(type(error).__name__, where, str(error), trace)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.errors: list[ServerError] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message == "unhandled error" and record.exc_info and record.exc_info[1] is not None:
            self.errors.append(describe(record.exc_info[1]))
        elif message == "store error":
            # A driver error answered 503: the store refused what the hub gave it.
            error = str(getattr(record, "error", ""))
            self.errors.append(ServerError("store error", "the error middleware (503)", error, ""))


_collector = _Collector()


@contextmanager
def collecting() -> Iterator[None]:
    """Collect what the hub's error middleware logs with its 5xx answers (it logs
    under `hub.`; the handler sits on `hub` so a move between modules is no matter)."""
    logger = logging.getLogger("hub")
    logger.addHandler(_collector)
    try:
        yield
    finally:
        logger.removeHandler(_collector)


def take_errors() -> list[ServerError]:
    """The errors logged since the last call."""
    errors, _collector.errors = _collector.errors, []
    return errors


def is_error_shape(data: object) -> bool:
    """Whether `data` is the API's error body: `{"error": {"code": str, "message": str}}`."""
    error = data.get("error") if isinstance(data, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )


def check_status(status: int, shown: str) -> None:
    """Fail on a 5xx unless every error the hub logged for it is a known defect."""
    errors = take_errors()
    if status < 500:
        return
    unknown = [error for error in errors if error.known is None]
    if errors and not unknown:
        return  # a known defect, shown by its xfail reproducer
    details = "\n".join(str(error) for error in unknown) or "(no error logged)"
    raise AssertionError(f"server error: {shown}\n{details}")
