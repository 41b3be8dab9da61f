"""The composer's files and WhatsApp templates in headless Chromium (issue 15):
files chosen by the button (several at once) or dropped on the reply box are
listed, then sent as multipart; a file the channel refuses shows the API's
message and nothing is sent; in a WhatsApp conversation whose 24-hour window is
closed the composer offers the inbox's approved templates, and one picked and
filled is sent (the WhatsApp Cloud simulator receives it)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import expect

from channels.whatsapp.simulator import FakeWhatsApp
from hub.api.base import API
from hub.app import build_app
from hub.config import parse_settings
from hub.model import IdentityRef
from hub.ports import FileRefusal
from hub.services.accounts import Passwords
from hub.services.conversations import add_note
from tests.api.conftest import FAST_HASHER, PASSWORD
from tests.support.fakeprovider import FakeProvider
from tests.support.waiting import eventually
from tests.ui.conftest import Pages, UiHub, log_in, ui_inboxes

ANN = "+15551230001"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PDF = b"%PDF-1.7\n" + b"x" * 3000 + b"\n%%EOF\n"


@pytest.fixture
async def wa() -> AsyncIterator[FakeWhatsApp]:
    fake = FakeWhatsApp()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def ui(
    embedded_uri: str, db_name: str, tmp_path: Path, provider: FakeProvider, wa: FakeWhatsApp
) -> AsyncIterator[UiHub]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    cloud = {
        "id": "cloud",
        "channel": "whatsapp",
        "phone_number_id": wa.phone_number_id,
        "access_token": wa.access_token,
        "app_secret": "wa-app-secret-0123456789abcdef",
        "verify_token": "wa-verify-token-42",
        "api_base": wa.url,
        "business_account_id": wa.business_account_id,
    }
    settings = parse_settings(
        {
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
            "events": {"poll_interval": 0.05},
            "inboxes": [*ui_inboxes(provider.url), cloud],
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


def conv(page: Any, conversation_id: str) -> Any:
    return page.locator(f'#conversations li[data-id="{conversation_id}"]')


async def outbound(ui: UiHub, conversation_id: str) -> list[dict[str, Any]]:
    store = ui.hub.store
    assert store is not None
    found: list[dict[str, Any]] = await store.messages.find(
        {"conversation_id": conversation_id, "direction": "out"}
    ).to_list()
    return found


async def test_files_chosen_by_the_button_and_dropped_are_listed_then_sent(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Send me the form", ANN))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    await page.set_input_files(
        "#reply-file-input",
        files=[
            {"name": "photo.png", "mimeType": "image/png", "buffer": PNG},
            {"name": "form.pdf", "mimeType": "application/pdf", "buffer": PDF},
        ],
    )
    # A third one dropped on the reply box.
    await page.evaluate(
        """() => {
          const data = new DataTransfer();
          data.items.add(new File(['plain words'], 'notes.txt', { type: 'text/plain' }));
          document.querySelector('#reply').dispatchEvent(
            new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
        }"""
    )
    files = page.locator("#reply-files li")
    await expect(files).to_have_count(3)
    await expect(files.nth(0)).to_contain_text("photo.png")
    await expect(files.nth(2)).to_contain_text("notes.txt")
    await files.nth(2).locator("button").click()  # changed my mind about that one
    await expect(files).to_have_count(2)
    await page.fill("#reply-text", "Here they are")
    await page.click("#reply-send")
    await expect(page.locator("#reply-files")).to_be_hidden()
    await expect(page.locator("#reply-text")).to_have_value("")

    (message,) = await eventually(lambda: outbound(ui, conversation_id), lambda ms: len(ms) == 1)
    assert message["text"] == "Here they are"
    assert [a["name"] for a in message["attachments"]] == ["photo.png", "form.pdf"]
    assert [a["content_type"] for a in message["attachments"]] == ["image/png", "application/pdf"]
    assert not pages.console_errors, pages.console_errors


async def test_a_refused_file_shows_the_apis_message_and_nothing_is_sent(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Hi", ANN))
    adapter: Any = ui.hub.adapters["t1"]
    # The test channel takes every file; this inbox's limit is tightened for the test.
    adapter.refuse_file = lambda medium, name, content_type, size: FileRefusal(
        415, f"this channel does not send {content_type} files"
    )
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    await page.set_input_files(
        "#reply-file-input",
        files=[{"name": "doc.pdf", "mimeType": "application/pdf", "buffer": PDF}],
    )
    await page.click("#reply-send")
    await expect(page.locator("#reply-error")).to_have_text(
        "doc.pdf: this channel does not send application/pdf files"
    )
    await expect(page.locator("#reply-files li")).to_have_count(1)  # kept for another try
    assert await outbound(ui, conversation_id) == []


async def test_a_closed_whatsapp_window_offers_the_templates_and_sends_one_filled(
    ui: UiHub, pages: Pages, wa: FakeWhatsApp
) -> None:
    assert ui.hub.ingestor is not None
    conversation_id, _ = await ui.hub.ingestor.open_conversation(
        "cloud", "whatsapp", IdentityRef(kind="phone", value=ANN)
    )
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    panel = page.locator("#reply-templates")
    await expect(panel).to_be_visible()
    await page.select_option("#template-pick", label="appointment_reminder (en_US)")
    await expect(page.locator("#template-body")).to_have_text(
        "Hello {{1}}, your appointment is on {{2}}."
    )
    inputs = page.locator("#template-params input")
    await expect(inputs).to_have_count(2)
    await inputs.nth(0).fill("Ann")
    await inputs.nth(1).fill("Monday")
    await page.click("#template-send")
    await expect(page.locator("#template-error")).to_have_text("")
    (message,) = await eventually(lambda: outbound(ui, conversation_id), lambda ms: len(ms) == 1)
    assert message["text"] == "Hello Ann, your appointment is on Monday."
    sent = await eventually(lambda: _sent(wa), lambda s: len(s) == 1)
    assert sent[0]["template"]["name"] == "appointment_reminder"
    assert not pages.console_errors, pages.console_errors


async def test_a_template_parameter_being_typed_keeps_the_focus_when_the_thread_loads(
    ui: UiHub, pages: Pages
) -> None:
    """The templates can show before the thread's messages have loaded; the agent
    already typing a parameter is not moved to the reply box when they arrive."""
    assert ui.hub.ingestor is not None and ui.hub.store is not None
    assert ui.hub.events is not None
    conversation_id, _ = await ui.hub.ingestor.open_conversation(
        "cloud", "whatsapp", IdentityRef(kind="phone", value=ANN)
    )
    conversation = await ui.hub.store.conversations.find_one({"_id": conversation_id})
    assert conversation is not None
    await add_note(
        ui.hub.store, ui.hub.events, conversation, "Prefers mornings",
        {"type": "agent", "id": ui.agent_id},
    )
    page = await pages.open()
    await log_in(page, ui)
    held: list[Any] = []

    async def hold(route: Any) -> None:
        held.append(route)

    await page.route(re.compile(r"/api/conversations/[^/]+/messages\?"), hold)
    await conv(page, conversation_id).click()
    await page.select_option("#template-pick", label="appointment_reminder (en_US)")
    first = page.locator("#template-params input").nth(0)
    await first.fill("An")
    await eventually(lambda: _held(held))
    await held[0].continue_()
    await expect(page.locator("#messages li.note")).to_contain_text("Prefers mornings")
    await expect(first).to_be_focused()
    await page.keyboard.type("n")
    await expect(first).to_have_value("Ann")
    await expect(page.locator("#reply-text")).to_have_value("")
    assert not pages.console_errors, pages.console_errors


async def _held(held: list[Any]) -> list[Any]:
    return held


async def _sent(wa: FakeWhatsApp) -> list[dict[str, Any]]:
    return wa.sent
