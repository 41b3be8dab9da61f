"""Twilio's webhooks as recorded in tests/fixtures/twilio, and a test inbox pointed
at the simulator (`channels.twilio.simulator`)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from channels.twilio.simulator import ACCOUNT_SID, AUTH_TOKEN

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"


def fixture_body(name: str) -> str:
    """A fixture file's form body as Twilio sent it (without the file's newline)."""
    return (FIXTURES / name).read_text(encoding="utf-8").strip()


def fixture_params(name: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(fixture_body(name), keep_blank_values=True)


def twilio_inbox(api_base: str, **overrides: Any) -> dict[str, Any]:
    """A `channel = "twilio"` inbox for tests, pointed at a simulator's `api_base`."""
    inbox: dict[str, Any] = {
        "id": "tw",
        "channel": "twilio",
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "number": "+15005550006",
        "whatsapp_number": "+14155238886",
        "api_base": api_base,
        "rate": 200.0,
    }
    inbox.update(overrides)
    return inbox
