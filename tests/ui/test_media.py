"""Customers' files in the inbox, in headless Chromium: a photo as a thumbnail that
opens full size, a voice note as a player, a document as a download, each with its
name and size; a placeholder while the hub fetches a file and the reason when it
could not; and an HTML or SVG file a customer sends never runs in the hub's
origin. Takes the README's screenshot (docs/screenshots/media-thread.png) when
HUB_SCREENSHOTS is set."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from hub.sandbox.core import tone_wav
from tests.support.filehost import FileHost
from tests.ui.conftest import Pages, UiHub, log_in

ANN = "+15551230001"
PWN = "localStorage.setItem('pwned', document.domain || 'x'); window.__x = 1;"
HTML = f"<!DOCTYPE html><html><body><h1>Invoice</h1><script>{PWN}</script></body></html>"
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
    f'onload="{PWN}"><script>{PWN}</script></svg>'
)


def png(width: int = 360, height: int = 240) -> bytes:
    """A real PNG: a warm gradient with a darker band, like a photo of a parcel."""
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            band = 60 if height // 3 < y < height // 3 + 40 else 0
            row += bytes(
                (min(255, 200 + x * 55 // width), max(0, 150 - band - y * 60 // height), 90)
            )
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n" + b" " * 20000


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost()
    await host.start()
    yield host
    await host.stop()


async def send(
    ui: UiHub,
    files: FileHost,
    name: str,
    data: bytes,
    declared: str,
    text: str = "",
    **options: Any,
) -> str:
    url = files.put(name, data, declared, **options)
    return await ui.inbound(
        text, ANN, name="Ann Lee", NumMedia="1", MediaUrl0=url, MediaContentType0=declared
    )


def item(page: Any, message_id: str) -> Any:
    return page.locator(f'#messages li[data-id="{message_id}"]')


async def open_thread(page: Any, ui: UiHub, message_id: str) -> None:
    conversation = await ui.conversation_of(message_id)
    await page.locator(f'#conversations li[data-id="{conversation}"]').click()


async def test_a_thread_shows_a_photo_a_voice_note_and_a_document(
    ui: UiHub, pages: Pages, files: FileHost
) -> None:
    first = await ui.inbound("Hi, the parcel arrived damaged", ANN, name="Ann Lee")
    photo = await send(ui, files, "parcel", png(), "image/jpeg", "This is how it looked")
    voice = await send(ui, files, "voice", tone_wav(2.0), "audio/ogg")
    document = await send(
        ui,
        files,
        "receipt",
        PDF,
        "application/pdf",
        "And the receipt",
        filename="receipt-0427.pdf",
    )
    page = await pages.open()
    await log_in(page, ui)
    await open_thread(page, ui, first)

    image = item(page, photo).locator("figure.media-image img")
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "(el) => el.complete && el.naturalWidth === 360", arg=await image.element_handle()
    )
    link = item(page, photo).locator("figure.media-image a")
    assert "/api/media/" in (await link.get_attribute("href") or "")
    assert await link.get_attribute("target") == "_blank"
    await expect(item(page, photo).locator("figcaption")).to_contain_text("KB")
    # Opens full size: the same file, served inline as an image.
    async with page.context.expect_page() as opened:
        await link.click()
    full = await opened.value
    await full.wait_for_load_state()
    assert await full.evaluate("document.contentType") == "image/png"
    await full.close()

    audio = item(page, voice).locator("figure.media-audio audio")
    await expect(audio).to_have_count(1)
    await page.wait_for_function(
        "(el) => el.readyState >= 1 && el.duration > 1.9", arg=await audio.element_handle()
    )
    await expect(item(page, voice).locator("figcaption")).to_contain_text("Voice note")

    download = item(page, document).locator("a.media-file")
    await expect(download).to_contain_text("receipt-0427.pdf")
    await expect(download).to_contain_text("KB")
    async with page.expect_download() as got:
        await download.click()
    assert (await got.value).suggested_filename == "receipt-0427.pdf"

    if shots := os.environ.get("HUB_SCREENSHOTS"):  # the README's picture, when asked for
        await page.locator("#messages").evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
        await page.screenshot(path=str(Path(shots) / "media-thread.png"))
    assert pages.console_errors == []


async def test_a_file_shows_a_placeholder_while_fetched_and_the_reason_when_it_failed(
    ui: UiHub, pages: Pages, files: FileHost
) -> None:
    first = await ui.inbound("two files coming", ANN)
    page = await pages.open()
    await log_in(page, ui)
    await open_thread(page, ui, first)
    slow = await send(ui, files, "slow", png(), "image/png", delay=2.0)
    pending = item(page, slow).locator(".media-pending")
    await expect(pending).to_be_visible()
    await expect(pending).to_contain_text("Photo on its way")
    await expect(item(page, slow).locator("figure.media-image img")).to_be_visible(timeout=10000)
    bad = await send(ui, files, "fake", HTML.encode(), "image/jpeg")
    failed = item(page, bad).locator(".media-failed")
    await expect(failed).to_be_visible(timeout=10000)
    await expect(failed).to_contain_text("type does not match the bytes")
    assert await page.evaluate("window.__x") is None


@pytest.mark.parametrize(
    ("name", "data", "declared"),
    [("invoice.html", HTML.encode(), "text/html"), ("logo.svg", SVG.encode(), "image/svg+xml")],
)
async def test_an_html_or_svg_file_from_a_customer_never_runs_in_the_hubs_origin(
    ui: UiHub, pages: Pages, files: FileHost, name: str, data: bytes, declared: str
) -> None:
    message = await send(ui, files, name.replace(".", "-"), data, declared, filename=name)
    page = await pages.open()
    await log_in(page, ui)
    await open_thread(page, ui, message)
    link = item(page, message).locator("a.media-file")
    await expect(link).to_contain_text(name)  # a download link, never an <img> or a frame
    await expect(item(page, message).locator("img, iframe, object, embed")).to_have_count(0)
    url = await link.get_attribute("href")
    assert url and url.startswith(ui.url.rstrip("/") + "/api/media/")
    async with page.expect_download() as got:
        await link.click()
    assert (await got.value).suggested_filename == name
    # Even opened directly, in a tab of the hub's origin, it downloads and runs nothing.
    tab = await page.context.new_page()
    async with tab.expect_download():
        try:
            await tab.goto(url)
        except Exception as error:  # Chromium aborts the navigation: it is a download
            assert "ERR_ABORTED" in str(error) or "Download" in str(error)
    # And as an image (what an <img src> would do), SVG scripts never run either.
    await page.evaluate(
        "(src) => new Promise((done) => { const i = new Image(); i.onload = i.onerror = done;"
        " i.src = src; document.body.append(i); })",
        url,
    )
    await page.wait_for_timeout(300)
    assert await page.evaluate("localStorage.getItem('pwned')") is None
    assert await page.evaluate("window.__x") is None
    assert tab.url in ("about:blank", "")  # the tab never showed the file
