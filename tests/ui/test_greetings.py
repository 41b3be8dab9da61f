"""The greetings settings page and the contact panel's birthday, time zone and
locale, in headless Chromium: an admin edits templates per locale, the local hour,
quiet hours and holidays and they are stored; a bad value shows the API's reason
and changes nothing; a supervisor only reads; the panel saves the contact's
greeting fields, and customer text stays text. It also takes the README's
screenshot (docs/screenshots/greetings.png) when HUB_SCREENSHOTS names a folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.api.conftest import PASSWORD
from tests.ui.conftest import Pages, UiHub, log_in

XSS = '<img src=x onerror="window.__x=1">'


async def as_admin(ui: UiHub) -> UiHub:
    email = "root@example.com"
    await ui.accounts.create_agent(email=email, name="Root", role="admin", password=PASSWORD)
    return dataclasses.replace(ui, email=email)


async def stored(ui: UiHub) -> dict[str, Any] | None:
    assert ui.hub.store is not None
    return await ui.hub.store.settings.find_one({"_id": "greetings"})


async def test_an_admin_edits_greetings_templates_hours_and_holidays(
    ui: UiHub, pages: Pages
) -> None:
    admin = await as_admin(ui)
    page = await pages.open(viewport=(1360, 900))
    await log_in(page, admin)
    await page.click("#show-greetings")
    await expect(page.locator("#greetings-page")).to_be_visible()
    await expect(page.locator("main.panes")).to_be_hidden()
    # The defaults: New Year and 8 March.
    await expect(page.locator("#gr-holidays .gr-holiday")).to_have_count(2)
    await expect(page.locator("#gr-holidays .gr-date").first).to_have_value("01-01")

    await page.check("#gr-enabled")
    await page.fill("#gr-hour", "9")
    await page.fill("#gr-quiet-start", "21:30")
    await page.fill("#gr-quiet-end", "08:15")
    await page.fill("#gr-zone", "Europe/Riga")
    # A Latvian birthday text beside the others.
    await page.click("#gr-birthday .gr-add-locale")
    await page.locator("#gr-birthday .gr-template .gr-locale").last.fill("lv")
    await page.locator("#gr-birthday .gr-template .gr-text").last.fill(
        "Daudz laimes, {first_name}!"
    )
    # A custom holiday.
    await page.click("#gr-add-holiday")
    holiday = page.locator("#gr-holidays .gr-holiday").last
    await holiday.locator(".gr-date").fill("06-24")
    await holiday.locator(".gr-name").fill("Jāņi")
    await holiday.locator(".gr-locale").fill("lv")
    await holiday.locator(".gr-text").fill("Līgo, {name}!")
    await page.click("#gr-save")
    await expect(page.locator("#toast")).to_have_text("Greetings saved")
    await page.locator("#greetings-page").evaluate("el => { el.scrollTop = 0; }")
    if shots := os.environ.get("HUB_SCREENSHOTS"):  # the README's picture
        await page.screenshot(path=str(Path(shots) / "greetings.png"))

    saved = await stored(ui)
    assert saved is not None
    assert saved["enabled"] is True and saved["local_hour"] == 9
    assert saved["quiet_hours"] == {"start": "21:30", "end": "08:15"}
    assert saved["default_timezone"] == "Europe/Riga"
    assert saved["birthday"]["templates"]["lv"] == "Daudz laimes, {first_name}!"
    assert saved["holidays"][-1] == {
        "date": "06-24",
        "name": "Jāņi",
        "templates": {"lv": "Līgo, {name}!"},
    }

    # A bad date: the API's reason is shown, nothing stored changes.
    await holiday.locator(".gr-date").fill("02-30")
    await page.click("#gr-save")
    await expect(page.locator("#gr-error")).to_contain_text("holidays[2].date")
    assert (await stored(ui))["holidays"][-1]["date"] == "06-24"  # type: ignore[index]


async def test_a_supervisor_sees_the_greetings_but_cannot_change_them(
    ui: UiHub, pages: Pages
) -> None:
    page = await pages.open()
    await log_in(page, ui)
    await page.click("#show-greetings")
    await expect(page.locator("#gr-hour")).to_be_disabled()
    await expect(page.locator("#gr-save")).to_have_count(0)
    await expect(page.locator("#greetings-page")).to_contain_text("Only admins change")


async def test_the_contact_panel_saves_birthday_time_zone_and_locale(
    ui: UiHub, pages: Pages
) -> None:
    first = await ui.inbound("Hello", "+15557771001", name=XSS)
    conversation_id = await ui.conversation_of(first)
    page = await pages.open(viewport=(1360, 900))
    await log_in(page, ui)
    await page.locator(f'#conversations li[data-id="{conversation_id}"]').click()
    await expect(page.locator("#contact-display-name")).to_have_text(XSS)

    await page.fill("#contact-birthday", "02-30")
    await page.click("#contact-greeting-save")
    await expect(page.locator("#contact-greeting-error")).to_contain_text("Birthday")

    await page.fill("#contact-birthday", "1992-02-29")
    await page.fill("#contact-timezone", "Mars/Olympus")
    await page.click("#contact-greeting-save")
    await expect(page.locator("#toast")).to_contain_text("unknown time zone")

    await page.fill("#contact-timezone", "Asia/Tokyo")
    await page.fill("#contact-locale", "ja")
    await page.click("#contact-greeting-save")
    await expect(page.locator("#toast")).to_have_text("Contact saved")
    await expect(page.locator("#contact-timezone")).to_have_value("Asia/Tokyo")
    assert ui.hub.store is not None
    conversation = await ui.hub.store.conversations.find_one({"_id": conversation_id})
    assert conversation is not None
    contact = await ui.hub.store.contacts.find_one({"_id": conversation["contact_id"]})
    assert contact is not None
    assert contact["birthday"] == {"month": 2, "day": 29, "year": 1992}
    assert (contact["timezone"], contact["locale"]) == ("Asia/Tokyo", "ja")
    assert await page.evaluate("window.__x") is None
