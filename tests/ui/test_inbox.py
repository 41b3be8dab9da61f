"""The agents' web inbox in headless Chromium (issue 4, points 3 and 4): logging in,
messages arriving live, replies and their delivery ticks, the screen-pop on a
call, customer text that tries to be markup, WhatsApp's window on the reply box,
and a phone-sized screen."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from hub.api.ui import STATIC_FILES, UI_DIR
from hub.model import IdentityRef
from hub.services.runtime import ChannelServices
from tests.api.conftest import WINDOW_REASON
from tests.support.waiting import eventually
from tests.ui.conftest import Pages, UiHub, log_in

ANN = "+15551230001"
BOB = "+15551230002"
XSS_SCRIPT = "<script>window.__x=1</script>"
XSS_IMG = '<img src=x onerror="window.__x=1">'
MODULE_IMPORT = re.compile(r"^(?:import|export) .* from '\./([\w-]+\.js)';$", re.M)
SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Cache-Control",
)


def conv(page: Any, conversation_id: str) -> Any:
    return page.locator(f'#conversations li[data-id="{conversation_id}"]')


async def test_index_is_served_with_a_strict_content_security_policy(ui: UiHub) -> None:
    async with ui.http.get(ui.server.make_url("/")) as resp:
        assert resp.status == 200
        policy = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert '<script type="module" src="/ui/app.js">' in page
    assert "<script>" not in page  # no inline script at all
    async with ui.http.get(ui.server.make_url("/ui/app.js")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
    async with ui.http.get(ui.server.make_url("/ui/..%2Fapi%2Fui.py")) as resp:
        assert resp.status == 404


async def test_every_script_module_is_served_like_the_entry(ui: UiHub) -> None:
    """app.js imports the other modules by relative path: each must exist, be one
    of the served files, and come with the entry's type and security headers."""
    modules = sorted(path.name for path in UI_DIR.glob("*.js"))
    assert "app.js" in modules and len(modules) > 1
    for path in UI_DIR.glob("*.js"):
        for name in MODULE_IMPORT.findall(path.read_text()):
            assert name in modules, f"{path.name} imports {name}, which is absent"
    async with ui.http.get(ui.server.make_url("/ui/app.js")) as resp:
        entry = {header: resp.headers[header] for header in SECURITY_HEADERS}
    for name in modules:
        assert STATIC_FILES.get(name) == "text/javascript", f"{name} is not served"
        async with ui.http.get(ui.server.make_url(f"/ui/{name}")) as resp:
            assert resp.status == 200, name
            assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8", name
            assert {header: resp.headers[header] for header in SECURITY_HEADERS} == entry, name


async def test_wrong_password_is_refused_on_the_login_form(ui: UiHub, pages: Pages) -> None:
    page = await pages.open()
    await page.goto(ui.url)
    await page.fill("#login-email", ui.email)
    await page.fill("#login-password", "not the password")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("wrong e-mail or password")
    await expect(page.locator("#app")).to_be_hidden()


async def test_inbound_message_appears_live_in_the_list_and_the_open_thread(
    ui: UiHub, pages: Pages
) -> None:
    page = await pages.open()
    await log_in(page, ui)
    await expect(page.locator("#list-empty")).to_be_visible()

    first = await ui.inbound("Hello, is my order shipped?", ANN, name="Ann Lee")
    conversation_id = await ui.conversation_of(first)
    item = conv(page, conversation_id)
    await expect(item).to_contain_text("Ann Lee")
    await expect(item).to_contain_text("Hello, is my order shipped?")
    await expect(item.locator(".unread")).to_have_text("1")

    await item.click()
    await expect(page.locator(f'#messages li[data-id="{first}"]')).to_contain_text(
        "Hello, is my order shipped?"
    )
    # Opening it marks it read, in the list and in the store.
    await expect(item.locator(".unread")).to_have_count(0)
    await expect(page.locator("#contact-display-name")).to_have_text("Ann Lee")

    second = await ui.inbound("Order #1234, by the way", ANN)
    await expect(page.locator(f'#messages li[data-id="{second}"]')).to_contain_text("#1234")
    await expect(item).to_contain_text("Order #1234, by the way")
    await expect(item.locator(".unread")).to_have_count(0)

    # Another customer's first message adds a conversation to the list, unread.
    other = await ui.conversation_of(await ui.inbound("Hi there", BOB, inbox="tg"))
    await expect(conv(page, other).locator(".unread")).to_have_text("1")
    await expect(page.locator("#conversations li").first).to_have_attribute("data-id", other)
    assert not pages.console_errors, pages.console_errors


async def test_reply_shows_sent_then_delivered_then_read_ticks(ui: UiHub, pages: Pages) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Can you help?", ANN, name="Ann"))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    await page.fill("#reply-text", "Of course, one moment")
    await page.press("#reply-text", "Enter")
    await expect(page.locator("#reply-text")).to_have_value("")

    reply = page.locator("#messages li.out").filter(has_text="Of course, one moment")
    ticks = reply.locator(".ticks")
    await expect(ticks).to_have_attribute("data-status", "sent")
    await expect(ticks).to_have_text("✓")
    assert ui.provider.sent[-1]["text"] == "Of course, one moment"
    provider_id = ui.provider.sent[-1]["id"]

    await ui.status(provider_id, "delivered")
    await expect(ticks).to_have_attribute("data-status", "delivered")
    await expect(ticks).to_have_text("✓✓")
    await ui.status(provider_id, "read")
    await expect(ticks).to_have_attribute("data-status", "read")
    await expect(ticks).to_have_css("color", "rgb(29, 155, 240)")

    # A failure shows its reason as text, and on hover.
    ui.provider.fail_next(400, "21610", "The recipient blocked this number")
    await page.fill("#reply-text", "Are you there?")
    await page.press("#reply-text", "Enter")
    failed = page.locator("#messages li.out").filter(has_text="Are you there?").locator(".ticks")
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed).to_contain_text("The recipient blocked this number")
    await expect(failed).to_have_attribute("title", re.compile("recipient blocked this number"))
    assert not pages.console_errors, pages.console_errors


async def test_a_late_reply_answer_does_not_undo_a_status_the_feed_brought_first(
    ui: UiHub, pages: Pages
) -> None:
    """The realtime feed can bring a reply and its failure before the POST that made
    it answers (the provider refused at once); that older answer changes nothing."""
    conversation_id = await ui.conversation_of(await ui.inbound("Still there?", ANN))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()

    held: list[Any] = []

    async def hold(route: Any) -> None:
        held.append(route)

    await page.route(re.compile(r"/api/conversations/[^/]+/messages$"), hold)
    ui.provider.fail_next(400, "21610", "The recipient blocked this number")
    await page.fill("#reply-text", "Hello again")
    await page.press("#reply-text", "Enter")

    async def requested() -> list[Any]:
        return held

    await eventually(requested)
    # The browser's request waits while the hub serves it for real and the feed
    # brings the message, then its failure.
    response = await held[0].fetch()
    failed = page.locator("#messages li.out").filter(has_text="Hello again").locator(".ticks")
    await expect(failed).to_have_attribute("data-status", "failed")
    await held[0].fulfill(response=response)
    await expect(page.locator("#reply-text")).to_have_value("")  # the answer was read
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed).to_contain_text("The recipient blocked this number")
    assert not pages.console_errors, pages.console_errors


async def test_private_note_is_stored_apart_and_never_sent(ui: UiHub, pages: Pages) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Refund please", ANN))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    await page.check("#reply-private")
    await page.fill("#reply-text", "Check the order first")
    await page.press("#reply-text", "Enter")
    note = page.locator("#messages li.note")
    await expect(note).to_contain_text("Check the order first")
    await expect(note.locator(".sender")).to_have_text("Private note")
    await expect(note.locator(".ticks")).to_have_count(0)
    assert ui.provider.requests == []


async def test_call_incoming_pops_the_callers_contact_card(ui: UiHub, pages: Pages) -> None:
    await ui.inbound("I'll call you", ANN, name="Ann Caller")
    page = await pages.open()
    await log_in(page, ui)
    await expect(page.locator("#callpop")).to_be_hidden()
    await ChannelServices(ui.hub).call_incoming(
        "pbx", IdentityRef(kind="phone", value=ANN), "CA100"
    )
    popup = page.locator("#callpop")
    await expect(popup).to_be_visible(timeout=2000)
    await expect(popup.locator("#callpop-name")).to_have_text("Ann Caller")
    await expect(popup).to_contain_text(ANN)
    await page.click("#callpop-open")
    await expect(popup).to_be_hidden()
    await expect(page.locator("#contact-display-name")).to_have_text("Ann Caller")
    await expect(page.locator("#thread-channel")).to_have_text("Voice")


async def test_xss_payloads_in_customer_text_and_contact_name_stay_text(
    ui: UiHub, pages: Pages
) -> None:
    page = await pages.open()
    await log_in(page, ui)
    message_id = await ui.inbound(XSS_SCRIPT, ANN, name=XSS_IMG)
    second = await ui.inbound(XSS_IMG, ANN)
    conversation_id = await ui.conversation_of(message_id)
    item = conv(page, conversation_id)
    await expect(item.locator(".conv-name")).to_have_text(XSS_IMG)
    await expect(item.locator(".conv-preview")).to_have_text(XSS_IMG)
    await item.click()
    await expect(page.locator(f'#messages li[data-id="{message_id}"] .text')).to_have_text(
        XSS_SCRIPT
    )
    await expect(page.locator(f'#messages li[data-id="{second}"] .text')).to_have_text(XSS_IMG)
    await expect(page.locator("#thread-name")).to_have_text(XSS_IMG)
    await expect(page.locator("#contact-display-name")).to_have_text(XSS_IMG)

    # An agent typing the payload as the contact's name: saved, shown as text.
    await page.fill("#contact-name", XSS_SCRIPT)
    await page.click(".name-form button[type=submit]")
    await expect(page.locator("#contact-display-name")).to_have_text(XSS_SCRIPT)
    await expect(item.locator(".conv-name")).to_have_text(XSS_SCRIPT)

    # And in the screen-pop.
    await ChannelServices(ui.hub).call_incoming(
        "pbx", IdentityRef(kind="phone", value=ANN), "CA200"
    )
    await expect(page.locator("#callpop-name")).to_have_text(XSS_SCRIPT)

    assert await page.evaluate("typeof window.__x") == "undefined"
    assert await page.locator("#app img").count() == 0
    assert await page.locator("#app script").count() == 0


async def test_whatsapp_reply_box_shows_the_window_and_the_apis_refusal(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Hola", ANN, inbox="w"))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    window = page.locator("#window-state")
    await expect(window).to_have_attribute("data-state", "open")
    await expect(window).to_contain_text("24-hour window open")
    await page.fill("#reply-text", "Hello!")
    await page.press("#reply-text", "Enter")
    await expect(window).to_have_attribute("data-state", "refused")
    await expect(window).to_contain_text(WINDOW_REASON)
    await expect(page.locator("#reply-text")).to_have_value("Hello!")  # kept, not lost
    assert ui.provider.requests == []


async def test_assign_resolve_snooze_and_labels_change_the_conversation(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("Hi", ANN, name="Ann"))
    page = await pages.open()
    await log_in(page, ui)
    await conv(page, conversation_id).click()
    store = ui.hub.store
    assert store is not None

    async def stored() -> dict[str, Any]:
        doc = await store.conversations.find_one({"_id": conversation_id})
        assert doc is not None
        return doc

    await page.click("#assign-me")
    await expect(page.locator("#thread-assignee")).to_contain_text("assigned to me")
    assert (await stored())["assignee_id"] == ui.agent_id

    await page.fill("#thread-labels .label-input", "vip")
    await page.press("#thread-labels .label-input", "Enter")
    await expect(page.locator("#thread-labels .chip")).to_contain_text(["vip"])
    await eventually(stored, lambda d: d.get("labels") == ["vip"])
    await page.select_option("#filter-label", "vip")
    await expect(conv(page, conversation_id)).to_be_visible()

    await page.click("#snooze summary")
    await page.fill("#snooze-until", "2099-01-02T09:30")
    await page.click("#snooze-go")
    await expect(page.locator("#thread-status")).to_contain_text("snoozed until")
    assert (await stored())["status"] == "snoozed"

    await page.click("#resolve")
    await expect(page.locator("#thread-status")).to_have_text("resolved")
    assert (await stored())["status"] == "resolved"
    # The list shows open conversations: the resolved one left it.
    await expect(conv(page, conversation_id)).to_have_count(0)
    await page.select_option("#filter-status", "resolved")
    await expect(conv(page, conversation_id)).to_be_visible()


async def test_phone_sized_screen_shows_a_usable_list_then_the_thread(
    ui: UiHub, pages: Pages
) -> None:
    conversation_id = await ui.conversation_of(await ui.inbound("From my phone", ANN, name="Ann"))
    await ui.inbound("Another one", BOB, name="Bob", inbox="tg")
    page = await pages.open(viewport=(390, 844), is_mobile=True, has_touch=True)
    await log_in(page, ui)
    item = conv(page, conversation_id)
    await expect(item).to_be_visible()
    await expect(page.locator("#conversations li")).to_have_count(2)
    await expect(page.locator("#thread-pane")).to_be_hidden()
    box = await item.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390

    await item.tap()
    await expect(page.locator("#thread-pane")).to_be_visible()
    await expect(page.locator("#list-pane")).to_be_hidden()
    await expect(page.locator("#messages")).to_contain_text("From my phone")
    reply = await page.locator("#reply-send").bounding_box()
    assert reply is not None and reply["x"] + reply["width"] <= 390
    assert reply["y"] + reply["height"] <= 844
    await page.tap("#back")
    await expect(page.locator("#list-pane")).to_be_visible()
