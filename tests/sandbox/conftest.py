"""A hub with the sandbox on, one inbox per channel, on the embedded test store."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.app import build_app
from hub.config import Settings, parse_settings

TG_TOKEN = "123456789:SANDBOX-test-token_abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sandbox_inboxes(smtp_port: int) -> list[dict[str, Any]]:
    return [
        {
            "id": "sms",
            "channel": "twilio",
            "account_sid": "ACsandbox0000000000000000000000000",
            "auth_token": "sandbox-twilio-token-0123",
            "number": "+15005550006",
            "whatsapp_number": "+14155238886",
            "api_base": "https://api.twilio.com",
            "rate": 100.0,
            "greeting": "Thanks for calling the sandbox.",
        },
        {
            "id": "tg",
            "channel": "telegram",
            "token": TG_TOKEN,
            "secret_token": "sandbox-secret-token",
            "register_webhook": True,
            "rate": 100.0,
            "per_chat_rate": 100.0,
        },
        {
            "id": "wa",
            "channel": "whatsapp",
            "phone_number_id": "106540352242922",
            "access_token": "sandbox-access-token",
            "app_secret": "sandbox-app-secret",
            "verify_token": "sandbox-verify-token",
        },
        {
            "id": "mail",
            "channel": "email",
            "address": "support@example.com",
            "webhook_secret": "sandbox-webhook-secret-0123",
            "rate": 100.0,
        },
        {
            "id": "mail2",
            "channel": "email",
            "address": "sales@example.com",
            "inbound_smtp_port": smtp_port,
            "rate": 100.0,
        },
        {"id": "pbx", "channel": "pbx", "secret": "sandbox-pbx-secret-0123"},
    ]


@pytest.fixture
def sandbox_settings(embedded_uri: str, db_name: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**sandbox: Any) -> Settings:
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "sandbox": {"enabled": True, "delivery_delay": 0.05, **sandbox},
            "inboxes": sandbox_inboxes(free_port()),
        }
        return parse_settings(data, source="<sandbox test>", base_dir=tmp_path)

    return make


@pytest.fixture
async def sandbox_client(
    sandbox_settings: Callable[..., Settings],
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(sandbox_settings())
    async with TestClient(TestServer(app)) as client:
        yield client
