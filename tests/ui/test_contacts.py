"""The contacts page of the agents' web inbox in headless Chromium (issue 4, point 6):
search with cursor paging, editing, merging two contacts, CSV import and export,
what an agent (not a supervisor) is shown, customer text that tries to be markup,
and a phone-sized screen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from hub.model import IdentityRef
from hub.services.contacts import add_identity, new_contact_doc
from hub.store import Store, new_id
from tests.api.conftest import PASSWORD
from tests.ui.conftest import Pages, UiHub, log_in

ANN = "+15551230001"
BOB = "+15551230002"
XSS_IMG = '<img src=x onerror="window.__x=1">'


def store_of(ui: UiHub) -> Store:
    store = ui.hub.store
    assert store is not None
    return store


async def make_contact(
    ui: UiHub,
    name: str | None,
    phones: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
    **fields: Any,
) -> str:
    store = store_of(ui)
    contact_id = new_id()
    await store.contacts.insert_one(
        new_contact_doc(contact_id, name=name, labels=list(labels), **fields)
    )
    for phone in phones:
        assert await add_identity(store, contact_id, IdentityRef(kind="phone", value=phone))
    for email in emails:
        assert await add_identity(store, contact_id, IdentityRef(kind="email", value=email))
    return contact_id


async def stored(ui: UiHub, contact_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await store_of(ui).contacts.find_one({"_id": contact_id})
    return found


def item(page: Any, contact_id: str) -> Any:
    return page.locator(f'#contacts-list li[data-id="{contact_id}"]')


async def open_contacts(page: Any, ui: UiHub, q: str | None = None) -> None:
    await log_in(page, ui)
    await page.click("#show-contacts")
    await expect(page.locator("#contacts-page")).to_be_visible()
    await expect(page.locator("#list-pane")).to_be_hidden()
    if q is not None:
        await page.fill("#contacts-search", q)


async def test_search_by_name_phone_and_email_with_load_more(ui: UiHub, pages: Pages) -> None:
    ann = await make_contact(ui, "Ann Lee", phones=(ANN,), emails=("ann@example.com",))
    bob = await make_contact(ui, "Bob Stone", phones=(BOB,))
    for n in range(26):
        await make_contact(ui, f"Pat {n:02d}", phones=(f"+1555999{n:04d}",))
    page = await pages.open()
    await open_contacts(page, ui)
    # Newest first, 25 a page: "Load more" brings the rest.
    await expect(page.locator("#contacts-list li")).to_have_count(25)
    await page.click("#more-contacts")
    await expect(page.locator("#contacts-list li")).to_have_count(28)
    await expect(page.locator("#more-contacts")).to_be_hidden()

    await page.fill("#contacts-search", "ann l")
    await expect(page.locator("#contacts-list li")).to_have_count(1)
    await expect(item(page, ann)).to_contain_text("Ann Lee")
    await expect(item(page, ann)).to_contain_text("ann@example.com")
    await page.fill("#contacts-search", "+1 555-123-0002")
    await expect(item(page, bob)).to_contain_text("Bob Stone")
    await expect(page.locator("#contacts-list li")).to_have_count(1)
    await page.fill("#contacts-search", "ANN@example.com")
    await expect(page.locator("#contacts-list li")).to_have_count(1)
    await expect(item(page, ann)).to_be_visible()
    await page.fill("#contacts-search", "nobody like this")
    await expect(page.locator("#contacts-empty")).to_be_visible()
    await expect(page.locator("#contacts-list li")).to_have_count(0)
    assert not pages.console_errors, pages.console_errors


async def test_edit_contact_fields_persist_in_the_store(ui: UiHub, pages: Pages) -> None:
    ann = await make_contact(ui, "Ann", phones=(ANN,), labels=("old",))
    page = await pages.open()
    await open_contacts(page, ui, "Ann")
    await item(page, ann).click()
    await expect(page.locator("#ce-display-name")).to_have_text("Ann")
    await expect(page.locator("#ce-identities")).to_contain_text(ANN)
    await expect(page.locator("#ce-optouts")).to_contain_text("subscribed everywhere")

    await page.fill("#ce-name", "Ann Lee-Smith")
    await page.fill("#ce-labels", "vip, gold")
    await page.fill("#ce-emails", "Ann@Example.com")
    await page.fill("#ce-birthday", "1990-05-17")
    await page.fill("#ce-timezone", "Europe/Paris")
    await page.fill("#ce-locale", "fr-FR")
    await page.click(".add-attr")
    await page.locator("#ce-attributes .attr-key").last.fill("plan")
    await page.locator("#ce-attributes .attr-value").last.fill("gold")
    await page.click("#ce-save")
    await expect(page.locator("#ce-display-name")).to_have_text("Ann Lee-Smith")
    await expect(item(page, ann)).to_contain_text("Ann Lee-Smith")
    await expect(page.locator("#ce-identities")).to_contain_text("ann@example.com")

    doc = await stored(ui, ann)
    assert doc is not None
    assert doc["name"] == "Ann Lee-Smith"
    assert doc["labels"] == ["vip", "gold"]
    assert doc["emails"] == ["ann@example.com"] and doc["phones"] == [ANN]
    assert doc["birthday"] == {"month": 5, "day": 17, "year": 1990}
    assert (doc["timezone"], doc["locale"]) == ("Europe/Paris", "fr-FR")
    assert doc["attributes"] == {"plan": "gold"}

    # A bad value is refused with the API's reason, and nothing changes.
    await page.fill("#ce-timezone", "Mars/Olympus")
    await page.click("#ce-save")
    await expect(page.locator("#ce-error")).to_contain_text("Mars/Olympus")
    doc = await stored(ui, ann)
    assert doc is not None and doc["timezone"] == "Europe/Paris"

    # Opt-out state shows as the store has it.
    await store_of(ui).contacts.update_one({"_id": ann}, {"$set": {"opted_out.sms": True}})
    await item(page, ann).click()
    await expect(page.locator("#ce-optouts .opted-out")).to_have_text("SMS: opted out")
    unexpected = [e for e in pages.console_errors if "status of 400" not in e]
    assert not unexpected, unexpected


async def test_merge_two_contacts_leaves_one_with_both_identities(ui: UiHub, pages: Pages) -> None:
    ann = await make_contact(ui, "Ann Lee", phones=(ANN,))
    dupe = await make_contact(ui, "A. Lee", emails=("ann@example.com",), labels=("web",))
    page = await pages.open()
    await open_contacts(page, ui, "Ann Lee")
    await item(page, ann).click()
    await page.click("#merge-box summary")
    await page.fill("#merge-search", "ann@example.com")
    candidate = page.locator(f'#merge-results li[data-id="{dupe}"] button')
    await expect(candidate).to_contain_text("A. Lee")
    await candidate.click()
    await expect(page.locator("#merge-question")).to_contain_text("A. Lee")
    await expect(page.locator("#merge-question")).to_contain_text("Ann Lee")
    assert await stored(ui, dupe) is not None  # nothing happens before the confirmation
    await page.click("#merge-confirm")

    identities = page.locator("#ce-identities")
    await expect(identities).to_contain_text(ANN)
    await expect(identities).to_contain_text("ann@example.com")
    await expect(page.locator("#ce-display-name")).to_have_text("Ann Lee")
    await expect(page.locator("#merge-confirm-box")).to_be_hidden()
    assert await stored(ui, dupe) is None
    doc = await stored(ui, ann)
    assert doc is not None
    assert doc["phones"] == [ANN] and doc["emails"] == ["ann@example.com"]
    await page.fill("#contacts-search", "Lee")
    await expect(page.locator("#contacts-list li")).to_have_count(1)
    await expect(item(page, ann)).to_be_visible()
    assert not pages.console_errors, pages.console_errors


async def test_csv_import_shows_counts_and_reasons(ui: UiHub, pages: Pages) -> None:
    ann = await make_contact(ui, "Ann", phones=(ANN,))
    text = (
        "name,phone,email,labels\n"
        f"Ann Lee,{ANN},,vip\n"  # line 2: merged into Ann
        "Cy,,cy@example.com,\n"  # line 3: created
        "Bad Phone,12,,\n"  # line 4: rejected
    )
    page = await pages.open()
    await open_contacts(page, ui)
    await page.set_input_files(
        "#contacts-import",
        files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": text.encode()}],
    )
    result = page.locator("#import-result")
    await expect(result.locator("#import-rows")).to_have_text("3 rows")
    await expect(result.locator("#import-created")).to_have_text("1 created")
    await expect(result.locator("#import-merged")).to_have_text("1 merged")
    await expect(result.locator("#import-rejected")).to_have_text("1 rejected")
    reason = result.locator("#import-reasons li")
    await expect(reason).to_have_count(1)
    await expect(reason).to_contain_text("Line 4:")
    await expect(reason).to_contain_text("'12'")
    await expect(result).not_to_contain_text("null")
    # The list is read again: the new contact is in it.
    await expect(page.locator("#contacts-list")).to_contain_text("Cy")
    doc = await stored(ui, ann)
    assert doc is not None and doc["name"] == "Ann Lee" and doc["labels"] == ["vip"]
    assert await store_of(ui).contacts.count_documents({}) == 2
    assert not pages.console_errors, pages.console_errors
    if shots := os.environ.get("HUB_SCREENSHOTS"):
        await item(page, ann).click()
        await expect(page.locator("#ce-display-name")).to_have_text("Ann Lee")
        await page.screenshot(path=str(Path(shots) / "contacts.png"))


async def test_export_downloads_a_csv_with_the_contact(
    ui: UiHub, pages: Pages, tmp_path: Path
) -> None:
    await make_contact(ui, "Ann Export", phones=(ANN,), emails=("ann@example.com",))
    page = await pages.open(accept_downloads=True)
    await open_contacts(page, ui)
    async with page.expect_download() as info:
        await page.click("#contacts-export")
    download = await info.value
    assert download.suggested_filename.startswith("contacts-")
    assert download.suggested_filename.endswith(".csv")
    target = tmp_path / "export.csv"
    await download.save_as(target)
    lines = target.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].lower().startswith("name,phone,email")
    assert any("Ann Export" in line and ANN in line and "ann@example.com" in line for line in lines)


async def test_agent_sees_no_merge_import_or_export(ui: UiHub, pages: Pages) -> None:
    bo = await ui.accounts.create_agent(
        email="bo@example.com", name="Bo Agent", role="agent", password=PASSWORD
    )
    # An agent sees the contacts it created (and those with a conversation in an
    # inbox it sees): Bo created Ann.
    ann = await make_contact(ui, "Ann", phones=(ANN,), created_by=bo["_id"])
    page = await pages.open()
    await log_in(page, UiHub(ui.server, ui.provider, "bo@example.com", "", ui.http))
    await expect(page.locator("#show-reports")).to_be_hidden()
    await page.click("#show-contacts")
    await expect(page.locator("#contacts-io")).to_be_hidden()
    await item(page, ann).click()
    await expect(page.locator("#ce-display-name")).to_have_text("Ann")
    await expect(page.locator("#contact-edit-form")).to_be_visible()
    await expect(page.locator("#merge-box")).to_have_count(0)
    await expect(page.locator("#contact-editor")).not_to_contain_text("null")
    assert not pages.console_errors, pages.console_errors


async def test_xss_name_shows_as_text(ui: UiHub, pages: Pages) -> None:
    evil = await make_contact(ui, XSS_IMG, phones=(ANN,), labels=(XSS_IMG,))
    plain = await make_contact(ui, "Plain", phones=(BOB,))
    page = await pages.open()
    await open_contacts(page, ui)
    await expect(item(page, evil).locator(".contact-item-name")).to_have_text(XSS_IMG)
    await expect(item(page, evil).locator(".chip")).to_have_text(XSS_IMG)
    await page.fill("#contacts-search", "onerror")
    await expect(page.locator("#contacts-list li")).to_have_count(1)
    await item(page, evil).click()
    await expect(page.locator("#ce-display-name")).to_have_text(XSS_IMG)
    await expect(page.locator("#ce-name")).to_have_value(XSS_IMG)
    # As a merge candidate and in the confirmation too.
    await page.fill("#contacts-search", "Plain")
    await item(page, plain).click()
    await expect(page.locator("#ce-display-name")).to_have_text("Plain")
    await page.click("#merge-box summary")
    await page.fill("#merge-search", "onerror")
    await page.locator(f'#merge-results li[data-id="{evil}"] button').click()
    await expect(page.locator("#merge-question")).to_contain_text(XSS_IMG)

    assert await page.evaluate("typeof window.__x") == "undefined"
    assert await page.locator("#app img").count() == 0


async def test_phone_sized_screen_shows_the_list_then_the_contact(ui: UiHub, pages: Pages) -> None:
    ann = await make_contact(ui, "Ann Lee", phones=(ANN,), emails=("ann@example.com",))
    page = await pages.open(viewport=(390, 844), is_mobile=True, has_touch=True)
    await open_contacts(page, ui)
    await expect(item(page, ann)).to_be_visible()
    await expect(page.locator("#contact-editor")).to_be_hidden()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await item(page, ann).tap()
    await expect(page.locator("#ce-display-name")).to_have_text("Ann Lee")
    await expect(page.locator("#contacts-list")).to_be_hidden()
    save = await page.locator("#ce-save").bounding_box()
    assert save is not None and save["x"] + save["width"] <= 390
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    if shots := os.environ.get("HUB_SCREENSHOTS"):
        await page.screenshot(path=str(Path(shots) / "contacts-phone.png"), full_page=True)
    await page.tap("#cp-back")
    await expect(page.locator("#contacts-list")).to_be_visible()
