"""The stored form of a message: the one place message documents are built,
inbound (from a channel's event), outbound (queued in the outbox) and private notes."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from hub.model import KIND_OF_INBOUND, Attachment, ButtonReply, InboundEvent
from hub.services.media import media_url
from hub.store import derived_id

_last_arrival = [0]


def arrival_seq() -> int:
    """The arrival order of a message this process stores: microseconds since
    the epoch on the hub's clock, strictly growing in the process. Messages whose
    provider times tie (Telegram and WhatsApp give whole seconds) are shown in
    this order (`created_at`, then `seq`, then `_id`)."""
    _last_arrival[0] = max(time.time_ns() // 1000, _last_arrival[0] + 1)
    return _last_arrival[0]


def inbound_message_doc(
    event: InboundEvent, message_id: str, conversation_id: str
) -> dict[str, Any]:
    """The stored form of an inbound event."""
    doc: dict[str, Any] = {
        "_id": message_id,
        "conversation_id": conversation_id,
        "inbox": event.inbox,
        "channel": event.medium,
        "direction": "in",
        "kind": KIND_OF_INBOUND[event.type],
        "text": event.text,
        "sender": {"type": "contact", "id": None},
        "status": "received",
        "error": None,
        "provider_id": event.provider_id,
        "created_at": event.received_at,
        "seq": arrival_seq(),
        "attachments": inbound_attachments(event, message_id),
    }
    if any(a["status"] == "pending" for a in doc["attachments"]):
        doc["media_pending"] = True  # the media fetcher's work (hub.services.media_fetch)
    for name in ("location", "contact", "button", "call", "email"):
        value = getattr(event, name, None)
        if value is not None:
            doc[name] = value.model_dump(mode="json")
    if event.extra:
        doc["extra"] = dict(event.extra)
    return doc


def inbound_attachments(event: InboundEvent, message_id: str) -> list[dict[str, Any]]:
    """An inbound event's files as stored: each `pending` with the provider's
    reference (`ref`, never shown) until the media fetcher has it; a call's
    recording is one more. A file the adapter could not take (no reference:
    an e-mail attachment over the limit) is `failed` at once."""
    found: list[tuple[str, str | None, str | None, int | None]] = [
        (a.url, a.name, a.content_type, a.size) for a in getattr(event, "attachments", ())
    ]
    call = getattr(event, "call", None)
    if call is not None and call.recording_url:
        found.append((call.recording_url, "Call recording", None, None))
    items = []
    for index, (ref, name, content_type, size) in enumerate(found):
        media_id = derived_id("media", message_id, str(index))
        items.append(
            {
                "id": media_id,
                "name": name,
                "content_type": content_type,
                "size": size,
                "status": "pending" if ref else "failed",
                "url": media_url(media_id),
                "error": None if ref else "too large: the file was not kept",
                "ref": ref,
            }
        )
    return items


def outbound_message_doc(
    message_id: str,
    conversation: dict[str, Any],
    *,
    text: str | None,
    sender: dict[str, Any],
    kind: str = "text",
    attachments: list[Attachment] | None = None,
    campaign_id: str | None = None,
    template: dict[str, Any] | None = None,
    buttons: list[ButtonReply] | None = None,
    subject: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    """The stored form of a message queued to be sent (status `queued`)."""
    doc: dict[str, Any] = {
        "_id": message_id,
        "conversation_id": conversation["_id"],
        "inbox": conversation["inbox"],
        "channel": conversation["channel"],
        "direction": "out",
        "kind": kind,
        "text": text,
        "sender": sender,
        "status": "queued",
        "error": None,
        "attachments": [a.model_dump() for a in attachments or []],
        "provider_id": None,
        "provider_key": None,
        "campaign_id": campaign_id,
        "created_at": now,
        "seq": arrival_seq(),
    }
    if template:
        doc["template"] = template
    if buttons:
        doc["buttons"] = [b.model_dump() for b in buttons]
    if subject:
        doc["email"] = {"subject": subject}
    return doc


def note_doc(
    message_id: str,
    conversation: dict[str, Any],
    *,
    text: str,
    sender: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """A private note in a thread: shown to agents, never sent (no status)."""
    return {
        "_id": message_id,
        "conversation_id": conversation["_id"],
        "inbox": conversation.get("inbox"),
        "channel": conversation.get("channel"),
        "direction": "out",
        "kind": "note",
        "text": text,
        "sender": sender,
        "status": None,
        "error": None,
        "attachments": [],
        "provider_id": None,
        "provider_key": None,
        "created_at": now,
        "seq": arrival_seq(),
    }
