"""Pieces of WhatsApp Cloud's wire format that both the sandbox's customer side
and its Graph API simulator build: a message id and a webhook notification."""

from __future__ import annotations

import base64
import secrets
from typing import Any


def new_wamid(digits: str) -> str:
    token = base64.b64encode(f"{digits}:{secrets.token_hex(8)}".encode()).decode()
    return f"wamid.{token}"


def whatsapp_notification(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000001", "changes": [{"value": value, "field": "messages"}]}],
    }
