"""Every kind of message renders as what it is, the contact panel shows the whole
contact, canned responses come with `/shortcut`; and, when HUB_SCREENSHOTS names
a folder, the demo inbox is photographed there (docs/screenshots/ in the README):

    HUB_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/ui -k demo
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from playwright.async_api import expect

from tests.ui.conftest import Pages, UiHub, log_in
from tests.ui.demo import RECORDING, seed


async def test_demo_inbox_renders_every_kind_of_message_and_the_contact(
    ui: UiHub, pages: Pages
) -> None:
    ids = await seed(ui)
    page = await pages.open(viewport=(1440, 900))
    await log_in(page, ui)
    # One list across every channel, newest activity first, with unread counts.
    items = page.locator("#conversations li")
    await expect(items).to_have_count(5)
    channels = await items.evaluate_all("(els) => els.map((e) => e.dataset.channel)")
    assert sorted(channels) == ["email", "sms", "telegram", "voice", "whatsapp"]
    maria = page.locator(f'#conversations li[data-id="{ids["maria"]}"]')
    await expect(maria.locator(".unread")).to_have_text("2")
    await page.select_option("#filter-channel", "email")
    await expect(items).to_have_count(1)
    await page.select_option("#filter-channel", "")
    await page.fill("#search", "Tom")
    await expect(items).to_have_count(1)
    await expect(items.first).to_contain_text("Tom Baker")
    await page.fill("#search", "")
    await expect(items).to_have_count(5)

    await maria.locator("button").click()
    thread = page.locator("#messages")
    await expect(thread.locator("li.bot .sender")).to_have_text("Bot · faq")  # and which bot
    await expect(thread.locator("li.kind-media img.media-img")).to_have_attribute(
        "src", re.compile(r"^data:image/png;base64,")
    )
    pdf = thread.locator("a.file")
    await expect(pdf).to_have_text("⤓ receipt-8812.pdf")
    await expect(pdf).to_have_attribute("href", "https://example.com/receipt-8812.pdf")
    await expect(thread.locator("li.note")).to_contain_text("offer the 10% code")
    await expect(thread.locator("li.system")).to_contain_text("joined the conversation")
    await expect(thread.locator("li.out .ticks.read").first).to_have_text("✓✓")
    await expect(page.locator("#window-state")).to_contain_text("24-hour window open")

    # The contact panel: identities on every channel, birthday, zone, opt-outs...
    contact = page.locator("#contact")
    await expect(contact).to_contain_text("+34612345678")
    await expect(contact).to_contain_text("maria@example.com")
    await expect(contact).to_contain_text("1991")
    await expect(contact).to_contain_text("Europe/Madrid")
    await expect(contact.locator(".opted-out")).to_have_text("SMS: opted out")
    await expect(contact).to_contain_text("Gold")
    await expect(contact.locator(".earlier button")).to_have_count(1)

    shots = os.environ.get("HUB_SCREENSHOTS")
    if shots:
        await asyncio.to_thread(Path(shots).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(shots) / "inbox.png"))

    await page.click(f'#conversations li[data-id="{ids["lena"]}"] button')
    email = thread.locator("li.kind-email")
    await expect(email.locator(".subject")).to_have_text("Double charge on invoice 2024-118")
    quoted = email.locator("details.quoted")
    await expect(quoted.locator("pre")).to_be_hidden()
    await expect(email.locator(".text")).not_to_contain_text("Thanks for your order")
    await quoted.locator("summary").click()
    await expect(quoted.locator("pre")).to_contain_text("> Thanks for your order!")

    await page.click(f'#conversations li[data-id="{ids["omar"]}"] button')
    await expect(thread.locator("li.kind-call")).to_have_count(2)
    await expect(thread.locator("li.kind-call").first).to_contain_text("Incoming call")
    await expect(thread.locator("li.kind-call").first).to_contain_text("2:14")
    await expect(thread.locator("li.kind-voicemail")).to_contain_text("please call me back")
    await expect(thread.locator("audio.recording")).to_have_count(2)
    await expect(thread.locator("audio.recording").first).to_have_attribute("src", RECORDING)

    await page.click(f'#conversations li[data-id="{ids["tom"]}"] button')
    await expect(thread.locator(".ticks.failed")).to_contain_text("code 30007")
    assert not pages.console_errors, pages.console_errors

    if shots:
        phone = await pages.open(viewport=(390, 844), is_mobile=True, has_touch=True)
        await log_in(phone, ui)
        await expect(phone.locator("#conversations li")).to_have_count(5)
        await phone.screenshot(path=str(Path(shots) / "inbox-phone.png"))
        await phone.tap(f'#conversations li[data-id="{ids["maria"]}"] button')
        await expect(phone.locator("#messages li").last).to_be_visible()
        await phone.screenshot(path=str(Path(shots) / "inbox-phone-thread.png"))


async def test_unsafe_urls_in_messages_are_never_links_or_sources(ui: UiHub, pages: Pages) -> None:
    store = ui.hub.store
    assert store is not None
    message_id = await ui.inbound("look", "+15551230009")
    conversation_id = await ui.conversation_of(message_id)
    unsafe = [
        {"url": "javascript:window.__x=1", "content_type": "image/png"},
        {"url": "javascript:window.__x=1", "content_type": "application/pdf"},
        {"url": "data:text/html,<script>window.__x=1</script>"},
        {"url": "data:image/svg+xml,<svg onload='window.__x=1'/>"},
    ]
    await store.messages.update_one(
        {"_id": message_id}, {"$set": {"kind": "media", "attachments": unsafe}}
    )
    page = await pages.open()
    await log_in(page, ui)
    await page.click(f'#conversations li[data-id="{conversation_id}"] button')
    bubble = page.locator(f'#messages li[data-id="{message_id}"]')
    await expect(bubble.locator(".file.unsafe")).to_have_count(4)
    assert await bubble.locator("a, img, audio, video").count() == 0
    assert await page.evaluate("typeof window.__x") == "undefined"


async def test_slash_shortcut_offers_canned_responses(ui: UiHub, pages: Pages) -> None:
    store = ui.hub.store
    assert store is not None
    await store.canned.insert_many(
        [
            {"_id": "thanks", "text": "Thank you for your patience!"},
            {"_id": "hours", "text": "We are open 9-18, Monday to Friday."},
        ]
    )
    conversation_id = await ui.conversation_of(
        await ui.inbound("When are you open?", "+15551230008")
    )
    page = await pages.open()
    await log_in(page, ui)
    await page.click(f'#conversations li[data-id="{conversation_id}"] button')
    await page.fill("#reply-text", "/ho")
    await expect(page.locator("#canned li")).to_have_count(1)
    await expect(page.locator("#canned")).to_contain_text("/hours")
    await page.press("#reply-text", "Enter")  # picks the suggestion, does not send
    await expect(page.locator("#reply-text")).to_have_value("We are open 9-18, Monday to Friday.")
    await expect(page.locator("#canned")).to_be_hidden()
    await page.press("#reply-text", "Enter")
    await expect(page.locator("#messages li.out")).to_contain_text("We are open 9-18")


async def test_reports_page_charts_the_summary_for_a_supervisor(ui: UiHub, pages: Pages) -> None:
    ids = await seed(ui)
    store = ui.hub.store
    assert store is not None
    await store.conversations.update_one({"_id": ids["yuki"]}, {"$set": {"status": "resolved"}})
    page = await pages.open(viewport=(1440, 900))
    await log_in(page, ui)
    await page.click("#show-reports")
    await expect(page.locator("#reports")).to_be_visible()
    await expect(page.locator("main.panes")).to_be_hidden()
    await expect(page.locator("#reports figure.chart-card")).to_have_count(2)
    await expect(page.locator("#reports .stat").first).to_contain_text("Conversations")
    conversations = await page.locator("#reports .stat-value").first.text_content()
    assert conversations is not None and int(conversations) >= 5
    await expect(
        page.locator("#reports figure.chart-card").first.locator("rect")
    ).not_to_have_count(0)
    await expect(page.locator("#reports .legend").first).to_contain_text("WhatsApp")
    assert not pages.console_errors, pages.console_errors
    shots = os.environ.get("HUB_SCREENSHOTS")
    if shots:
        await asyncio.to_thread(Path(shots).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(shots) / "reports.png"), full_page=True)
    await page.click("#show-inbox")
    await expect(page.locator("main.panes")).to_be_visible()
