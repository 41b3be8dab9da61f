"""The public JSON shape of stored documents (CONTRACT.md), for events and the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(value: Any) -> str | None:
    """ISO 8601 in UTC to the millisecond: what the store keeps (BSON dates are
    milliseconds), so an event built from a fresh document and the API reading
    it back give the same text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        text = value.isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return None if value is None else str(value)


# The fields of a message's attachment the API shows (CONTRACT.md "Media and
# search"), plus `error`, the reason of a `failed` one.
ATTACHMENT_FIELDS = ("id", "name", "content_type", "size", "status", "url", "error")


def attachment_view(item: Any) -> dict[str, Any]:
    """The public shape of a stored attachment: the hub's own fields (the
    provider's reference of a pending download) are left out. An attachment
    given by URL (an outbound file the hub does not keep) shows its URL."""
    if not isinstance(item, dict):
        return {key: None for key in ATTACHMENT_FIELDS}
    view = {key: item.get(key) for key in ATTACHMENT_FIELDS}
    if view["name"] is None and isinstance(item.get("filename"), str):
        view["name"] = item["filename"]  # an attachment stored in an older shape
    if view["id"] is not None:
        view["url"] = view["url"] or f"/api/media/{view['id']}"
    if view["status"] is None:
        view["status"] = "ready"
    return view


def message_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "conversation_id": doc.get("conversation_id"),
        "inbox": doc.get("inbox"),
        "direction": doc.get("direction"),
        "kind": doc.get("kind"),
        "text": doc.get("text"),
        "subject": (doc.get("email") or {}).get("subject"),
        "sender": doc.get("sender") or {"type": "system", "id": None},
        "status": doc.get("status"),
        "error": doc.get("error"),
        "attachments": [attachment_view(a) for a in doc.get("attachments") or []],
        "call": doc.get("call"),
        "location": doc.get("location"),
        "contact": doc.get("contact"),
        "button": doc.get("button"),
        "created_at": iso(doc.get("created_at")),
        "send_at": iso(doc.get("send_at")),  # a scheduled reply's time (send later)
    }


def conversation_view(doc: dict[str, Any], contact: dict[str, Any] | None = None) -> dict[str, Any]:
    last = doc.get("last_message")
    return {
        "id": str(doc["_id"]),
        "status": doc.get("status"),
        "inbox": doc.get("inbox"),
        "channel": doc.get("channel"),
        "contact": {
            "id": doc.get("contact_id"),
            "name": (contact or {}).get("name"),
        },
        "assignee": doc.get("assignee_id"),
        "bot": doc.get("bot"),  # the bot serving it (status pending), else null
        "labels": doc.get("labels") or [],
        "last_message": None
        if not last
        else {
            "text": last.get("text"),
            "direction": last.get("direction"),
            "at": iso(last.get("at")),
        },
        "unread": int(doc.get("unread") or 0),
        "last_activity_at": iso(doc.get("last_activity_at")),
        # The customer's last message: WhatsApp's 24-hour window runs from it.
        "last_inbound_at": iso(doc.get("last_inbound_at")),
        "created_at": iso(doc.get("created_at")),
    }
