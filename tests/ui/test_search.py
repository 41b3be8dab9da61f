"""Search in the inbox, in headless Chromium (issue 15, point 5): the words of
an older message find its conversation, shown with that message and the words
marked; the customer's text stays text."""

from __future__ import annotations

from playwright.async_api import expect

from tests.ui.conftest import Pages, UiHub, log_in


async def test_searching_shows_the_matching_message_with_its_words_marked(
    ui: UiHub, pages: Pages
) -> None:
    await ui.inbound(
        'My <b>parcel</b> never came <img src=x onerror="window.__x=1">', "+15551280001"
    )
    conv = await ui.conversation_of(await ui.inbound("any news?", "+15551280001"))
    await ui.inbound("something else", "+15551280002")
    page = await pages.open()
    await log_in(page, ui)
    await page.select_option("#filter-status", "")
    await page.fill("#search", "PARCEL")
    items = page.locator("#conversations li.conv")
    await expect(items).to_have_count(1)
    item = items.first
    assert await item.get_attribute("data-id") == conv
    await expect(item.locator(".conv-match")).to_contain_text("My <b>parcel</b> never came")
    await expect(item.locator(".conv-match mark")).to_have_text("parcel")
    assert await page.evaluate("window.__x") is None
