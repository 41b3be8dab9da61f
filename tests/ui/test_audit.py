"""The Audit page in headless Chromium (issue 15, point 7): an admin sees who
changed what, when and from where, filters by agent, action and date, and the
entries' customer text stays text; a supervisor has no Audit page."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from playwright.async_api import expect

from tests.api.conftest import PASSWORD
from tests.ui.conftest import Pages, UiHub, log_in

XSS = '<img src=x onerror="window.__x=1">'


async def test_an_admin_reads_and_filters_the_audit_log(ui: UiHub, pages: Pages) -> None:
    root = await ui.accounts.create_agent(
        email="root@example.com", name="Root", role="admin", password=PASSWORD
    )
    admin = dataclasses.replace(ui, email="root@example.com")
    conv = await ui.conversation_of(await ui.inbound("hello", "+15551270001"))
    store = ui.hub.store
    assert store is not None
    # What others did: the supervisor assigned it; a label with markup in it.
    await store.audit.insert_many(
        [
            {
                "_id": "a1",
                "at": datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
                "agent_id": ui.agent_id,
                "action": "conversation.assigned",
                "target": conv,
                "address": "203.0.113.9",
                "assignee_id": ui.agent_id,
            },
            {
                "_id": "a2",
                "at": datetime(2026, 1, 6, 10, 0, tzinfo=UTC),
                "agent_id": ui.agent_id,
                "action": "conversation.labels",
                "target": conv,
                "address": "203.0.113.9",
                "labels": [XSS],
            },
        ]
    )
    page = await pages.open(viewport=(1360, 900))
    await log_in(page, admin)  # itself recorded: a login
    await page.click("#show-audit")
    await expect(page.locator("#audit-page")).to_be_visible()
    await expect(page.locator("main.panes")).to_be_hidden()
    entries = page.locator("#audit-list tbody tr")
    await expect(entries.first.locator(".audit-action")).to_have_text("login")
    await expect(entries.first.locator(".audit-agent")).to_have_text("Root")
    await expect(entries).to_have_count(3)
    # Customer text stays text.
    detail = page.locator("#audit-list .audit-detail").filter(has_text="<img src=x onerror=")
    await expect(detail).to_have_count(1)
    assert await page.evaluate("window.__x") is None

    await page.select_option("#audit-agent", str(ui.agent_id))
    await page.click("#audit-filters button[type=submit]")
    await expect(entries).to_have_count(2)
    await page.select_option("#audit-action", "conversation.assigned")
    await page.click("#audit-filters button[type=submit]")
    await expect(entries).to_have_count(1)
    await expect(entries.first.locator(".audit-address")).to_have_text("203.0.113.9")
    await expect(entries.first.locator(".audit-target")).to_have_text(conv)
    await page.select_option("#audit-action", "")
    await page.fill("#audit-from", "2026-01-06")
    await page.fill("#audit-to", "2026-01-06")
    await page.click("#audit-filters button[type=submit]")
    await expect(entries).to_have_count(1)
    await expect(entries.first.locator(".audit-action")).to_have_text("conversation.labels")
    await page.fill("#audit-from", "2026-02-01")
    await page.fill("#audit-to", "")
    await page.click("#audit-filters button[type=submit]")
    await expect(entries).to_have_count(0)
    await expect(page.locator("#audit-empty")).to_be_visible()
    assert str(root["_id"])


async def test_a_supervisor_has_no_audit_page(ui: UiHub, pages: Pages) -> None:
    page = await pages.open()
    await log_in(page, ui)  # the fixture's agent is a supervisor
    await expect(page.locator("#show-reports")).to_be_visible()
    await expect(page.locator("#show-audit")).to_be_hidden()
