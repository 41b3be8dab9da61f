"""Demo conversations for the inbox: customers on every channel and every kind of
message (text, image, file, call with a recording, voicemail, e-mail with quoted
history, bot, system, private note, delivery states), for the rendering test and
the screenshots in docs/screenshots/."""

from __future__ import annotations

import base64
import struct
import zlib
from datetime import timedelta
from typing import Any

from hub.model import IdentityRef, utcnow
from hub.services.contacts import add_identity
from hub.store import Store, new_id
from tests.ui.conftest import UiHub

RECORDING = "http://127.0.0.1:9/recordings/CA100.mp3"  # preload=none: never fetched


def png_data_url(width: int = 160, height: int = 100) -> str:
    """A small gradient PNG as a data: URL (an image attachment with no network)."""
    rows = b"".join(
        b"\x00"
        + b"".join(
            bytes((40 + x * 180 // width, 120 + y * 100 // height, 220 - x * 60 // width))
            for x in range(width)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


async def _add(
    store: Store, conversation_id: str, minutes_ago: float, **fields: Any
) -> dict[str, Any]:
    """Store one message in a conversation and make it the conversation's last."""
    conversation = await store.conversations.find_one({"_id": conversation_id})
    assert conversation is not None
    at = utcnow() - timedelta(minutes=minutes_ago)
    doc: dict[str, Any] = {
        "_id": new_id(),
        "conversation_id": conversation_id,
        "inbox": conversation["inbox"],
        "channel": conversation["channel"],
        "direction": "in",
        "kind": "text",
        "text": None,
        "sender": {"type": "contact", "id": None},
        "status": "received",
        "error": None,
        "attachments": [],
        "provider_id": None,
        "created_at": at,
        **fields,
    }
    await store.messages.insert_one(doc)
    if doc["kind"] != "note":
        last = {"text": doc["text"], "direction": doc["direction"], "at": at}
        await store.conversations.update_one(
            {"_id": conversation_id}, {"$set": {"last_message": last, "last_activity_at": at}}
        )
    return doc


async def seed(ui: UiHub) -> dict[str, str]:
    """Five customers on five channels; returns their conversation ids by name."""
    store = ui.hub.store
    assert store is not None
    agent = {"type": "agent", "id": ui.agent_id}
    ids: dict[str, str] = {}

    ids["maria"] = await ui.conversation_of(
        await ui.inbound(
            "Hi! Is the blue jacket back in stock?", "+34612345678", inbox="wa", name="María García"
        )
    )
    ids["tom"] = await ui.conversation_of(
        await ui.inbound("Order 5521 never arrived", "+447700900123", inbox="t1", name="Tom Baker")
    )
    ids["yuki"] = await ui.conversation_of(
        await ui.inbound(
            "こんにちは, can I change my delivery slot?",
            "+819012345678",
            inbox="tg",
            name="Yuki Tanaka",
        )
    )
    ids["lena"] = await ui.conversation_of(
        await ui.inbound("(e-mail)", "+4915112345678", inbox="mail", name="Lena Schmidt")
    )
    ids["omar"] = await ui.conversation_of(
        await ui.inbound("(call)", "+12025550143", inbox="pbx", name="Omar Haddad")
    )
    await store.messages.delete_many({"text": {"$in": ["(e-mail)", "(call)"]}})
    # The webhook stamped the first messages now; the demo story starts earlier.
    for name, minutes in (("maria", 55), ("tom", 20), ("yuki", 80)):
        at = utcnow() - timedelta(minutes=minutes)
        await store.messages.update_many(
            {"conversation_id": ids[name]}, {"$set": {"created_at": at}}
        )
        await store.conversations.update_one(
            {"_id": ids[name]},
            {"$set": {"last_activity_at": at, "last_inbound_at": at, "last_message.at": at}},
        )

    maria = ids["maria"]
    await _add(
        store,
        maria,
        50,
        sender={"type": "bot", "id": "faq"},
        direction="out",
        status="read",
        text="Hi María! I'm the shop assistant. An agent will join shortly.",
    )
    await _add(
        store,
        maria,
        40,
        kind="media",
        text="This one, size M",
        attachments=[{"url": png_data_url(), "content_type": "image/png"}],
    )
    await _add(
        store,
        maria,
        35,
        kind="event",
        sender={"type": "system", "id": None},
        direction="in",
        status=None,
        text="Ada Agent joined the conversation",
    )
    await _add(
        store,
        maria,
        30,
        kind="note",
        direction="out",
        sender=agent,
        status=None,
        text="Stock arrives Thursday — offer the 10% code.",
    )
    await _add(
        store,
        maria,
        25,
        direction="out",
        sender=agent,
        status="read",
        text="Good news: size M is back on Thursday. Want me to reserve one?",
    )
    await _add(store, maria, 4, text="Yes please!")
    await _add(
        store,
        maria,
        3,
        kind="media",
        text="My receipt",
        attachments=[
            {
                "url": "https://example.com/receipt-8812.pdf",
                "content_type": "application/pdf",
                "filename": "receipt-8812.pdf",
            }
        ],
    )
    await _add(
        store,
        maria,
        2,
        direction="out",
        sender=agent,
        status="delivered",
        text="Reserved ✔ — you'll get a link on Thursday.",
    )

    await _add(
        store,
        ids["tom"],
        15,
        direction="out",
        sender=agent,
        status="failed",
        error="Carrier rejected the message (code 30007)",
        text="Sorry Tom, checking with the courier now.",
    )
    await _add(store, ids["tom"], 9, text="Any news??")

    await _add(
        store,
        ids["yuki"],
        70,
        direction="out",
        sender=agent,
        status="sent",
        text="Sure — which day suits you?",
    )

    await _add(
        store,
        ids["lena"],
        120,
        kind="email",
        text=(
            "Hello,\n\nI was charged twice for invoice 2024-118. Could you refund one?\n\n"
            "Best, Lena\n\nOn Mon, 3 Mar 2025 at 09:12, Support <support@example.com> wrote:\n"
            "> Thanks for your order!\n> Your invoice is attached."
        ),
        email={"subject": "Double charge on invoice 2024-118"},
    )

    omar = ids["omar"]
    await _add(
        store,
        omar,
        200,
        kind="call",
        text=None,
        call={
            "direction": "in",
            "status": "completed",
            "duration": 134,
            "recording_url": RECORDING,
        },
    )
    await _add(
        store,
        omar,
        190,
        kind="call",
        direction="out",
        sender=agent,
        status=None,
        text=None,
        call={"direction": "out", "status": "missed", "duration": 0},
    )
    await _add(
        store,
        omar,
        12,
        kind="voicemail",
        text="Hi, it's Omar, please call me back.",
        call={"direction": "in", "status": "completed", "duration": 21, "recording_url": RECORDING},
    )

    unread = {maria: 2, ids["tom"]: 1, ids["yuki"]: 0, ids["lena"]: 1, omar: 1}
    for conversation_id, count in unread.items():
        await store.conversations.update_one({"_id": conversation_id}, {"$set": {"unread": count}})
    await store.conversations.update_one(
        {"_id": maria}, {"$set": {"labels": ["vip", "pre-order"], "assignee_id": ui.agent_id}}
    )
    await store.conversations.update_one({"_id": ids["tom"]}, {"$set": {"labels": ["delivery"]}})
    contact = await store.conversations.find_one({"_id": maria}, {"contact_id": 1})
    assert contact is not None
    await store.contacts.update_one(
        {"_id": contact["contact_id"]},
        {
            "$set": {
                "birthday": {"month": 5, "day": 14, "year": 1991},
                "timezone": "Europe/Madrid",
                "locale": "es-ES",
                "labels": ["vip"],
                "attributes": {"plan": "Gold", "city": "Sevilla"},
                "opted_out": {"sms": True, "whatsapp": False},
            }
        },
    )
    await add_identity(
        store, contact["contact_id"], IdentityRef(kind="email", value="maria@example.com")
    )
    # An earlier conversation of hers, on SMS, resolved.
    earlier = await ui.conversation_of(
        await ui.inbound("Do you ship to Portugal?", "+34612345678", inbox="t1")
    )
    await store.conversations.update_one(
        {"_id": earlier},
        {"$set": {"status": "resolved", "last_activity_at": utcnow() - timedelta(days=20)}},
    )
    return ids
