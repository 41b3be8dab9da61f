"""`GET /api/media/{id}` and the fetch behind it: a customer's file arrives
`pending`, the hub downloads it after the webhook was answered, and serves it to
agents who may see the conversation, safely."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.conftest import PASSWORD, Client, conversation_of, hub, inbound, make_agent
from tests.support.filehost import FileHost

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
HTML = b"<!DOCTYPE html><html><body><script>document.title='ran'</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost()
    await host.start()
    yield host
    await host.stop()


async def settled(client: Client, message_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The message's attachments once none is pending (as the API shows them)."""
    store = hub(client).store
    assert store is not None
    async with asyncio.timeout(timeout):
        while True:
            doc = await store.messages.find_one({"_id": message_id})
            assert doc is not None
            if all(a["status"] != "pending" for a in doc["attachments"]):
                admin = await make_agent(client, "admin")
                conv = doc["conversation_id"]
                resp = await client.get(f"/api/conversations/{conv}/messages", headers=admin.auth)
                items = (await resp.json())["items"]
                return next(m for m in items if m["id"] == message_id)["attachments"]
            await asyncio.sleep(0.05)


async def photo(
    client: Client,
    files: FileHost,
    sid: str,
    data: bytes = PNG,
    declared: str = "image/png",
    inbox: str = "t1",
) -> str:
    url = files.put(sid, data, declared)
    return await inbound(
        client,
        inbox,
        sid,
        "+15551230001",
        "",
        NumMedia="1",
        MediaUrl0=url,
        MediaContentType0=declared,
    )


async def test_a_photo_is_pending_then_ready_and_served_to_an_agent_of_its_inbox(
    api: Client, files: FileHost
) -> None:
    message_id = await photo(api, files, "MMph1")
    store = hub(api).store
    assert store is not None
    stored = await store.messages.find_one({"_id": message_id})
    assert stored is not None
    (item,) = stored["attachments"]
    assert item["status"] in ("pending", "ready")
    (att,) = await settled(api, message_id)
    assert att["status"] == "ready"
    assert att["content_type"] == "image/png"
    assert att["size"] == len(PNG)
    assert att["url"] == f"/api/media/{att['id']}"
    assert set(att) == {"id", "name", "content_type", "size", "status", "url", "error"}
    agent = await make_agent(api, "agent", inboxes=["t1"])
    resp = await api.get(att["url"], headers=agent.auth)
    assert resp.status == 200
    assert await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"].startswith("inline")
    assert "sandbox" in resp.headers["Content-Security-Policy"]


async def test_the_media_route_needs_a_login_and_the_conversations_inbox(
    api: Client, files: FileHost
) -> None:
    message_id = await photo(api, files, "MMph2")
    (att,) = await settled(api, message_id)
    resp = await api.get(att["url"])
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthenticated"
    other = await make_agent(api, "agent", inboxes=["t2"])
    resp = await api.get(att["url"], headers=other.auth)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    supervisor = await make_agent(api, "supervisor")
    assert (await api.get(att["url"], headers=supervisor.auth)).status == 200
    mine = await make_agent(api, "agent", inboxes=["t1"])
    assert (await api.get("/api/media/nosuchfile", headers=mine.auth)).status == 404


async def test_the_session_cookie_opens_a_file_as_an_img_src_would(
    api: Client, files: FileHost
) -> None:
    message_id = await photo(api, files, "MMph3")
    (att,) = await settled(api, message_id)
    agent = await make_agent(api, "agent", inboxes=["t1"])
    resp = await api.post("/api/auth/login", json={"email": agent.email, "password": PASSWORD})
    assert resp.status == 200
    resp = await api.get(att["url"])  # the cookie only, as the browser sends it
    assert resp.status == 200
    assert await resp.read() == PNG
    api.session.cookie_jar.clear()


@pytest.mark.parametrize(
    ("data", "declared", "detected"),
    [
        (HTML, "text/html", "text/html"),
        (SVG, "image/svg+xml", "image/svg+xml"),
        (b'<?xml version="1.0"?><a/>', "application/xml", "application/xml"),
        (b"\x00\x01binary of some kind", "application/octet-stream", "application/octet-stream"),
    ],
)
async def test_a_file_a_browser_could_run_is_a_download_with_nosniff(
    api: Client, files: FileHost, data: bytes, declared: str, detected: str
) -> None:
    message_id = await photo(api, files, f"MMdoc{detected.replace('/', '')}", data, declared)
    (att,) = await settled(api, message_id)
    assert att["status"] == "ready"
    agent = await make_agent(api, "agent", inboxes=["t1"])
    resp = await api.get(att["url"], headers=agent.auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"].split(";")[0] == detected
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"].startswith("attachment")


async def test_a_page_declared_as_a_photo_fails_and_the_message_is_kept(
    api: Client, files: FileHost
) -> None:
    message_id = await photo(api, files, "MMfake", HTML, "image/jpeg")
    (att,) = await settled(api, message_id)
    assert att["status"] == "failed"
    assert "type does not match" in att["error"]
    agent = await make_agent(api, "agent", inboxes=["t1"])
    assert (await api.get(att["url"], headers=agent.auth)).status == 404
    conv = await conversation_of(api, message_id)
    resp = await api.get(f"/api/conversations/{conv}/messages", headers=agent.auth)
    assert message_id in [m["id"] for m in (await resp.json())["items"]]
