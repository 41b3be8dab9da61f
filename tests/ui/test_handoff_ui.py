"""Bots and people in the inbox, in headless Chromium: the bot filter and badge,
the bot's and the system's messages in the thread, "Take over", the availability
switch, and capacity on the agents page."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from hub.services import handoff
from tests.api.conftest import PASSWORD
from tests.support.waiting import eventually
from tests.ui.conftest import Pages, UiHub, log_in

ANN = "+15551239001"
BOB = "+15551239002"
XSS = '<img src=x onerror="window.__x=1">'


def conv(page: Any, conversation_id: str) -> Any:
    return page.locator(f'#conversations li[data-id="{conversation_id}"]')


async def _bot_conversation(ui: UiHub, text: str, sender: str) -> tuple[str, str, str]:
    """A conversation the bot `shop` serves, with the customer's message, the
    bot's answer and a system line in it: (conversation, bot message, system line)."""
    store = ui.hub.store
    assert store is not None
    conversation_id = await ui.conversation_of(await ui.inbound(text, sender, name="Ann Lee"))
    await store.conversations.update_one(
        {"_id": conversation_id}, {"$set": {"bot": "shop", "status": "pending"}}
    )
    answer = await handoff.reply_as_bot(ui.hub, conversation_id, "shop", text=f"Menu {XSS}")
    assert answer is not None
    conversation = await store.conversations.find_one({"_id": conversation_id})
    line = handoff.system_message_doc(conversation, f"the bot could not help {XSS}")
    await store.messages.insert_one(line)
    return conversation_id, str(answer["_id"]), str(line["_id"])


async def test_a_bot_conversation_is_marked_filtered_and_taken_over(
    ui: UiHub, pages: Pages
) -> None:
    page = await pages.open()
    await log_in(page, ui)
    people = await ui.conversation_of(await ui.inbound("Hi, a person please", BOB))
    conversation_id, answer, line = await _bot_conversation(ui, "Hello bot", ANN)

    # A bot's conversation is pending: not in the open list; the bot filter shows it.
    await expect(conv(page, people)).to_be_visible()
    await expect(conv(page, conversation_id)).to_have_count(0)
    await page.select_option("#filter-bot", "true")
    item = conv(page, conversation_id)
    await expect(item.locator(".bot-badge")).to_have_text("Bot")
    await expect(conv(page, people)).to_have_count(0)
    await page.select_option("#filter-bot", "false")
    await expect(conv(page, people)).to_be_visible()
    await expect(conv(page, conversation_id)).to_have_count(0)
    await page.select_option("#filter-bot", "true")

    await conv(page, conversation_id).click()
    await expect(page.locator("#thread-bot")).to_have_text("Bot: shop")
    bot_message = page.locator(f'#messages li[data-id="{answer}"]')
    await expect(bot_message).to_have_class(re.compile(r"\bbot\b"))
    await expect(bot_message.locator(".sender")).to_have_text("Bot · shop")
    await expect(bot_message.locator(".text")).to_have_text(f"Menu {XSS}")
    system = page.locator(f'#messages li[data-id="{line}"]')
    await expect(system).to_have_class(re.compile(r"\bsystem\b"))
    await expect(system.locator(".who")).to_have_text("System")
    await expect(system.locator(".text")).to_have_text(f"the bot could not help {XSS}")

    take_over = page.locator("#take-over")
    await expect(take_over).to_be_visible()
    await expect(page.locator("#assign-me")).to_be_hidden()
    await expect(page.locator("#reply-text")).to_have_attribute(
        "placeholder", re.compile("your reply takes the conversation over")
    )
    await take_over.click()
    await expect(take_over).to_be_hidden()
    await expect(page.locator("#thread-bot")).to_be_hidden()
    await expect(page.locator("#thread-assignee")).to_have_text("· assigned to me")
    await expect(page.locator("#thread-status")).to_have_text("open")
    await expect(page.locator("#assign-me")).to_have_text("Unassign")
    store = ui.hub.store
    assert store is not None
    doc = await store.conversations.find_one({"_id": conversation_id})
    assert doc["bot"] is None and doc["assignee_id"] == ui.agent_id and doc["status"] == "open"

    assert await page.evaluate("typeof window.__x") == "undefined"
    assert await page.locator("#app img").count() == 0
    assert not pages.console_errors, pages.console_errors


async def test_a_handoff_elsewhere_updates_the_open_thread_live(ui: UiHub, pages: Pages) -> None:
    page = await pages.open()
    await log_in(page, ui)
    conversation_id, _, line = await _bot_conversation(ui, "Hello bot", ANN)
    await page.select_option("#filter-bot", "true")
    await conv(page, conversation_id).click()
    await expect(page.locator("#take-over")).to_be_visible()
    await expect(page.locator(f'#messages li[data-id="{line}"]')).to_be_visible()
    assert await handoff.hand_off(ui.hub, conversation_id, reason="the customer asked for a person")
    await expect(page.locator("#take-over")).to_be_hidden()
    await expect(page.locator("#thread-status")).to_have_text("open")
    await expect(page.locator("#messages li.system .text").last).to_have_text(
        "the customer asked for a person"
    )
    assert not pages.console_errors, pages.console_errors


async def test_the_availability_switch_sets_the_agents_availability(
    ui: UiHub, pages: Pages
) -> None:
    page = await pages.open()
    await log_in(page, ui)
    switch = page.locator("#availability")
    await expect(switch).to_have_value("online")
    await page.select_option("#availability", "busy")
    store = ui.hub.store
    assert store is not None

    async def availability() -> Any:
        doc = await store.agents.find_one({"_id": ui.agent_id})
        return doc.get("availability")

    await eventually(availability, lambda value: value == "busy")
    await page.reload()
    await expect(page.locator("#app")).to_be_visible()
    await expect(switch).to_have_value("busy")
    assert not pages.console_errors, pages.console_errors


async def test_agents_page_shows_availability_and_admins_set_capacity(
    ui: UiHub, pages: Pages
) -> None:
    # The supervisor sees the page, without capacity inputs.
    page = await pages.open()
    await log_in(page, ui)
    await page.click("#show-agents")
    me = page.locator(f'#agents-list tr[data-id="{ui.agent_id}"]')
    await expect(me).to_contain_text("online")
    await expect(me).to_contain_text("no limit")
    await expect(page.locator("#agents-list input.capacity")).to_have_count(0)

    # An admin sets Ada's capacity.
    admin = await ui.accounts.create_agent(
        email="root@example.com", name="Root", role="admin", password=PASSWORD
    )
    page = await pages.open()
    await page.goto(ui.url)
    await page.fill("#login-email", "root@example.com")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#show-agents")).to_be_visible()
    await page.click("#show-agents")
    row = page.locator(f'#agents-list tr[data-id="{ui.agent_id}"]')
    await row.locator("input.capacity").fill("3")
    await row.locator("button[type=submit]").click()
    await expect(page.locator("#toast")).to_contain_text("Capacity of Ada Agent: 3")
    doc = await ui.accounts.agent(ui.agent_id)
    assert doc is not None and doc["capacity"] == 3
    # Empty is no limit; a bad number is refused before it is sent.
    await row.locator("input.capacity").fill("0")
    await row.locator("button[type=submit]").click()
    await expect(page.locator("#toast")).to_contain_text("whole number")
    await row.locator("input.capacity").fill("")
    await row.locator("button[type=submit]").click()
    await expect(page.locator("#toast")).to_have_text("Capacity of Ada Agent: no limit")
    doc = await ui.accounts.agent(ui.agent_id)
    assert doc is not None and doc["capacity"] is None
    assert str(admin["_id"])
    assert not pages.console_errors, pages.console_errors
