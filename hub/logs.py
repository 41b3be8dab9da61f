"""Structured logs (one JSON object per line) with secrets redacted.

Redaction works on the rendered line, so a secret cannot leak through a message,
an argument, an exception or an `extra` field: every configured secret value and
every value of a sensitive-looking key is replaced by `***`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SENSITIVE_KEY = re.compile(
    r"(?i)(authorization|password|passwd|secret|token|api[_-]?key|signature|cookie)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return _BEARER.sub(r"\1 ***", value)

    def value(self, key: str, value: Any) -> Any:
        if _SENSITIVE_KEY.search(key):
            return "***"
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(key, v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.text(str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.redactor.text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = self.redactor.value(key, value)
        if record.exc_info:
            entry["exc"] = self.redactor.text("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: self.redactor.value(k, v)
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        }
        if extras:
            line += " " + json.dumps(extras, default=str)
        return self.redactor.text(line)


def setup_logging(level: str, fmt: str, secrets: Iterable[str], stream: Any = None) -> Redactor:
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel("WARNING")
    logging.getLogger("pymongo").setLevel("WARNING")
    # APScheduler says "Running job ..." at INFO for every tick of every job.
    logging.getLogger("apscheduler").setLevel("WARNING")
    return redactor
