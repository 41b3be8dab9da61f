"""Time in the inbox, in headless Chromium: a reply scheduled from the composer,
edited and cancelled in the thread, one that the running scheduler sends at its
time; a reminder set on a conversation and its toast when due; a breached
first-response SLA's badge, toast and the "Overdue" filter. With HUB_SCREENSHOTS
set to a folder, the overdue thread with a scheduled reply is photographed there
(docs/screenshots/ in the README):

    HUB_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/ui/test_scheduling.py
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from hub.model import utcnow
from hub.services import sla
from hub.settings import InboxSla
from tests.ui.conftest import Pages, UiHub, log_in

ANN = "+15551230101"
BOB = "+15551230102"

# A datetime-local value `seconds` from now, in the browser's own zone.
LOCAL_IN = """(seconds) => {
  const d = new Date(Date.now() + seconds * 1000);
  const p = (n) => String(n).padStart(2, '0');
  const day = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  return `${day}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}"""


def conv(page: Any, conversation_id: str) -> Any:
    return page.locator(f'#conversations li[data-id="{conversation_id}"]')


async def _open(page: Any, ui: UiHub, conversation_id: str) -> None:
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    await expect(page.locator("#thread")).to_be_visible()


async def test_schedule_edit_cancel_and_send_later_from_the_composer(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(
        await ui.inbound("Call me tomorrow", ANN, name="Ann")
    )
    page = await pages.open()
    await _open(page, ui, conversation_id)

    await page.fill("#reply-text", "Good morning, Ann!")
    await page.click("#send-later summary")
    await page.fill("#send-later-at", await page.evaluate(LOCAL_IN, 3600))
    await page.click("#send-later-go")
    await expect(page.locator("#reply-text")).to_have_value("")
    first = page.locator("#messages li.out").filter(has_text="Good morning, Ann!")
    await expect(first.locator(".scheduled-at")).to_contain_text("Scheduled for")
    await expect(first.locator(".ticks")).to_have_attribute("data-status", "scheduled")

    await first.get_by_role("button", name="Edit").click()
    await first.locator(".scheduled-text").fill("Good morning, Ann! Calling at ten.")
    await first.get_by_role("button", name="Save").click()
    await expect(first.locator(".text").first).to_have_text("Good morning, Ann! Calling at ten.")

    await first.get_by_role("button", name="Cancel").click()
    await expect(first.locator(".schedule-info")).to_have_text("Cancelled: not sent")
    await expect(first.locator(".ticks")).to_have_attribute("data-status", "cancelled")

    # One due in a few seconds: the hub's scheduler sends it then.
    await page.fill("#reply-text", "Sent by the scheduler")
    await page.click("#send-later summary")
    await page.fill("#send-later-at", await page.evaluate(LOCAL_IN, 3))
    await page.click("#send-later-go")
    second = page.locator("#messages li.out").filter(has_text="Sent by the scheduler")
    await expect(second.locator(".ticks")).to_have_attribute("data-status", "scheduled")
    await expect(second.locator(".ticks")).to_have_attribute("data-status", "sent", timeout=20000)
    await expect(second.locator(".schedule-info")).to_have_count(0)
    texts = [s["text"] for s in ui.provider.sent]
    assert texts.count("Sent by the scheduler") == 1
    assert not any(t.startswith("Good morning") for t in texts)

    # A past time is refused with the reason, and nothing is scheduled.
    await page.fill("#reply-text", "Too late")
    await page.click("#send-later summary")
    await page.fill("#send-later-at", await page.evaluate(LOCAL_IN, -120))
    await page.click("#send-later-go")
    await expect(page.locator("#reply-error")).to_contain_text("future")
    await expect(page.locator("#messages li.out").filter(has_text="Too late")).to_have_count(0)
    # The browser logs the refused request itself; nothing else went wrong.
    errors = [e for e in pages.console_errors if "status of 422" not in e]
    assert not errors, errors


async def test_a_reminder_set_on_a_conversation_pops_a_toast_when_due(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Ring me back", BOB, name="Bob"))
    page = await pages.open()
    await _open(page, ui, conversation_id)
    await page.click("#remind summary")
    await page.fill("#remind-at", await page.evaluate(LOCAL_IN, 4))
    await page.fill("#remind-note", "call Bob back")
    await page.click("#remind-go")
    await expect(page.locator("#toast")).to_contain_text("Reminder set")
    await expect(page.locator("#reminder-list li")).to_have_count(1)
    await expect(page.locator("#reminder-list li")).to_contain_text("call Bob back")
    toast = page.locator("#toast")
    await expect(toast).to_have_text("Reminder: call Bob back (Bob)", timeout=20000)
    assert not pages.console_errors, pages.console_errors


async def test_a_breached_first_response_shows_a_badge_a_toast_and_the_overdue_filter(
    ui: UiHub, pages: Pages
) -> None:
    late = await ui.conversation_of(await ui.inbound("Hello? Anyone?", ANN, name="Ann"))
    fine = await ui.conversation_of(await ui.inbound("Just browsing", BOB, name="Bob"))
    page = await pages.open()
    await log_in(page, ui)
    await expect(conv(page, fine)).to_be_visible()
    await conv(page, late).click()
    await expect(page.locator("#thread-overdue")).to_be_hidden()

    hub = ui.hub
    assert hub.store is not None and hub.events is not None
    # Only Ann's conversation is old enough for a 15-minute SLA at this moment.
    await hub.store.conversations.update_one(
        {"_id": fine}, {"$set": {"last_agent_reply_at": utcnow()}}
    )
    rules = {"t1": InboxSla(first_response=900)}
    done = await sla.check(hub.store, hub.events, rules, utcnow() + timedelta(minutes=16))
    assert done == [(late, "assignee")]

    await expect(page.locator("#toast")).to_have_text("First response overdue: Ann")
    await expect(conv(page, late).locator(".overdue-badge")).to_be_visible()
    await expect(conv(page, fine).locator(".overdue-badge")).to_have_count(0)
    await expect(page.locator("#thread-overdue")).to_be_visible()

    # A reply scheduled for later shows in the thread with its time (and is no answer yet).
    await page.fill("#reply-text", "I will call you at ten.")
    await page.click("#send-later summary")
    await page.fill("#send-later-at", await page.evaluate(LOCAL_IN, 3600))
    await page.click("#send-later-go")
    scheduled = page.locator("#messages li.out").filter(has_text="I will call you at ten.")
    await expect(scheduled.locator(".schedule-info")).to_contain_text("Scheduled for")
    await expect(page.locator("#thread-overdue")).to_be_visible()
    shots = os.environ.get("HUB_SCREENSHOTS")
    if shots:
        await asyncio.to_thread(Path(shots).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(shots) / "overdue-and-send-later.png"))

    await page.check("#filter-overdue")
    await expect(page.locator("#conversations li")).to_have_count(1)
    await expect(conv(page, late)).to_be_visible()

    # An agent's reply ends it.
    await page.fill("#reply-text", "Sorry for the wait!")
    await page.press("#reply-text", "Enter")
    await expect(page.locator("#thread-overdue")).to_be_hidden()
    await page.uncheck("#filter-overdue")
    await expect(conv(page, late).locator(".overdue-badge")).to_have_count(0)
    await expect(page.locator("#filter-overdue")).not_to_be_checked()

    # The reports count it, by inbox (it had no assignee).
    await page.click("#show-reports")
    card = page.locator(".stat").filter(has_text="First-response SLA breaches")
    await expect(card.locator(".stat-value")).to_have_text("1")
    await expect(card.locator(".stat-detail")).to_contain_text("by inbox: t1 1")
    assert not pages.console_errors, pages.console_errors
