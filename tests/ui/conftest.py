"""Fixtures for the inbox's browser tests: the hub on a real TCP port (with
test-channel inboxes standing for SMS, WhatsApp, Telegram, e-mail and voice), an
agent to log in as, and Debian's headless Chromium driven by Playwright.

The tests are skipped, with the reason, only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hub.api.base import API
from hub.app import build_app
from hub.config import parse_settings
from hub.services.accounts import Accounts, Passwords
from hub.services.runtime import HUB, Hub
from tests.api.conftest import FAST_HASHER, PASSWORD, WINDOW_REASON
from tests.conftest import SECRET
from tests.support.fakeprovider import FakeProvider
from tests.support.testchannel import sign

CHROMIUM = Path("/usr/bin/chromium")
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"{CHROMIUM} is absent: install Debian's chromium to run UI tests"
    )
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(skip)


@dataclass
class UiHub:
    """The hub under test, reachable at `url`, and what the tests post to it."""

    server: TestServer
    provider: FakeProvider
    email: str
    agent_id: str
    http: aiohttp.ClientSession
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    @property
    def accounts(self) -> Accounts:
        found = self.app[API].accounts
        assert found is not None
        return found

    def next_sid(self, prefix: str = "SM") -> str:
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]:05d}"

    async def _signed(self, path: str, fields: dict[str, str]) -> dict[str, Any]:
        body = urllib.parse.urlencode(fields).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Signature": sign(SECRET, body),
        }
        async with self.http.post(self.server.make_url(path), data=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            text = await r.text()
            return {} if not text else dict(await r.json(content_type=None))

    async def inbound(
        self, text: str, sender: str, inbox: str = "t1", name: str | None = None, **extra: str
    ) -> str:
        """A customer's message through the test channel's signed webhook; its id."""
        fields = {"MessageSid": self.next_sid(), "From": sender, "Body": text, **extra}
        if name is not None:
            fields["ProfileName"] = name
        answer = await self._signed(f"/webhooks/testchan/{inbox}", fields)
        return str(answer["id"])

    async def status(self, provider_id: str, status: str, inbox: str = "t1", **extra: str) -> None:
        """A provider's status callback for a message it sent."""
        fields = {"MessageSid": provider_id, "MessageStatus": status, **extra}
        await self._signed(f"/webhooks/testchan/{inbox}/status", fields)

    async def conversation_of(self, message_id: str) -> str:
        assert self.hub.store is not None
        doc = await self.hub.store.messages.find_one({"_id": message_id})
        assert doc is not None
        return str(doc["conversation_id"])


def ui_inboxes(provider_url: str) -> list[dict[str, Any]]:
    base = {"channel": "testchan", "secret": SECRET, "api_base": provider_url, "rate": 200.0}
    return [
        {**base, "id": "t1"},
        {**base, "id": "w", "medium": "whatsapp", "refuse_replies": WINDOW_REASON},
        {**base, "id": "wa", "medium": "whatsapp"},
        {**base, "id": "tg", "medium": "telegram"},
        {**base, "id": "mail", "medium": "email"},
        {**base, "id": "pbx", "medium": "voice"},
    ]


@pytest.fixture
async def ui(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider
) -> AsyncIterator[UiHub]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    settings = parse_settings(
        {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": ui_inboxes(provider.url),
        },
        source="<ui test>",
        base_dir=tmp_path,
    )
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        accounts = server.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        email = "ada@example.com"
        agent = await accounts.create_agent(
            email=email, name="Ada Agent", role="supervisor", password=PASSWORD
        )
        async with aiohttp.ClientSession() as http:
            yield UiHub(server, provider, email, str(agent["_id"]), http)
    finally:
        await server.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


@dataclass
class Pages:
    """Opens pages in fresh browser contexts and records what their consoles said."""

    browser: Any
    contexts: list[Any] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    async def open(self, viewport: tuple[int, int] = (1280, 800), **options: Any) -> Any:
        context = await self.browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, **options
        )
        context.set_default_timeout(5000)
        self.contexts.append(context)
        page = await context.new_page()
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda error: self.console_errors.append(str(error)))
        return page


@pytest.fixture
async def pages(browser: Any) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    for context in opened.contexts:
        await context.close()


async def log_in(page: Any, ui: UiHub) -> None:
    """Log in through the form and wait until the realtime feed is live."""
    from playwright.async_api import expect

    await page.goto(ui.url)
    await page.fill("#login-email", ui.email)
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("body")).to_have_attribute("data-ws", "live")


LogIn = Callable[[Any, UiHub], Any]
