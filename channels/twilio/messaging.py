"""SMS and WhatsApp webhooks: inbound messages on `/messages` (answered with empty
TwiML) and the status callbacks of what we send on `/status` (answered empty)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web
from multidict import MultiDict

from channels.base import IgnoredEvent, MalformedPayload
from channels.twilio.rest import ERROR_REASONS, OPT_OUT_CODE
from channels.twilio.webhook import (
    Acknowledge,
    Classifier,
    Handler,
    TwilioInbox,
    empty,
    empty_twiml,
    extra,
    first,
    phone,
    required,
)
from hub.model import (
    Attachment,
    ButtonReply,
    InboundButton,
    InboundLocation,
    InboundMedia,
    InboundText,
    Location,
    StatusUpdate,
)

MAX_MEDIA = 100

# Provider fields kept on inbound messages (`extra`) without being modelled.
MESSAGE_EXTRA = (
    "To",
    "WaId",
    "MessageType",
    "MessagingServiceSid",
    "NumSegments",
    "FromCountry",
    "FromState",
    "FromCity",
    "FromZip",
    "OriginalRepliedMessageSid",
    "Forwarded",
    "FrequentlyForwarded",
    "OptOutType",
    "ReferralSourceUrl",
    "ReferralSourceType",
    "ReferralSourceId",
    "ReferralHeadline",
    "ReferralBody",
    "ReferralCtwaClid",
)

# Message status callbacks that move an outbound message, and to what.
MESSAGE_STATUS: dict[str, Literal["sent", "delivered", "read", "failed"]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
}


# --- classification ----------------------------------------------------------------------


def classify_message(form: Mapping[str, str]) -> str:
    sender = form.get("From", "")
    if not sender:
        raise MalformedPayload("From is missing")
    if sender.lower().startswith("whatsapp:"):
        return "message.whatsapp"
    if ":" in sender:  # messenger:, and channels Twilio adds later
        return "message.other"
    return "message.sms"


def classify_status(form: Mapping[str, str]) -> str:
    status = first(form, "MessageStatus", "SmsStatus")
    if not status:
        raise MalformedPayload("MessageStatus is missing")
    return f"status.{status}"


# --- the form's parts ----------------------------------------------------------------------


def _attachments(form: Mapping[str, str]) -> tuple[Attachment, ...]:
    raw = form.get("NumMedia", "")
    if raw:
        try:
            count = int(raw)
        except ValueError:
            raise MalformedPayload(f"NumMedia is not a number: {raw!r}") from None
        if not 0 <= count <= MAX_MEDIA:
            raise MalformedPayload(f"NumMedia out of range: {count}")
    else:
        count = 0
        while count < MAX_MEDIA and form.get(f"MediaUrl{count}"):
            count += 1
    found = []
    for index in range(count):
        url = form.get(f"MediaUrl{index}")
        if not url:
            raise MalformedPayload(f"MediaUrl{index} is missing (NumMedia={count})")
        content_type = form.get(f"MediaContentType{index}") or None
        found.append(Attachment(url=url, content_type=content_type))
    return tuple(found)


def _location(form: Mapping[str, str]) -> Location | None:
    raw_lat, raw_lon = form.get("Latitude"), form.get("Longitude")
    if not raw_lat and not raw_lon:
        return None
    try:
        latitude, longitude = float(raw_lat or ""), float(raw_lon or "")
    except ValueError:
        raise MalformedPayload("Latitude and Longitude must be numbers") from None
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        raise MalformedPayload("Latitude and Longitude must be finite")
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise MalformedPayload("Latitude or Longitude out of range")
    return Location(
        latitude=latitude,
        longitude=longitude,
        name=form.get("Label") or None,
        address=form.get("Address") or None,
    )


# --- handlers ------------------------------------------------------------------------------


async def on_message(
    inbox: TwilioInbox, request: web.Request, form: MultiDict[str]
) -> web.Response:
    """An inbound SMS or WhatsApp message: stored, and STOP/START applied."""
    provider_id = required(form, "MessageSid", "SmsMessageSid", "SmsSid")
    raw_from = form["From"]
    medium: Literal["sms", "whatsapp"] = (
        "whatsapp" if raw_from.lower().startswith("whatsapp:") else "sms"
    )
    attachments = _attachments(form)
    location = _location(form)
    sender = phone(inbox, raw_from, form.get("ProfileName") or None)
    if sender is None:
        # A short code or alphanumeric sender: nothing we could answer.
        raise IgnoredEvent(f"message.{medium}", "the sender is not a phone number")
    common: dict[str, Any] = {
        "inbox": inbox.inbox_id,
        "medium": medium,
        "provider_id": provider_id,
        "sender": sender,
        "text": form.get("Body") or None,
        "extra": extra(form, MESSAGE_EXTRA),
    }
    event: InboundText | InboundMedia | InboundLocation | InboundButton
    if attachments:
        event = InboundMedia(**common, attachments=attachments)
    elif location is not None:
        event = InboundLocation(**common, location=location)
    elif form.get("ButtonPayload") or form.get("ButtonText"):
        button = ButtonReply(
            payload=first(form, "ButtonPayload", "ButtonText"),
            title=form.get("ButtonText") or None,
        )
        event = InboundButton(**common, button=button)
    else:
        event = InboundText(**common)
    await inbox.ctx.ingest([event])
    # Twilio's Advanced Opt-Out tells us about STOP and START itself.
    opt_out = form.get("OptOutType", "").upper()
    if opt_out in ("STOP", "START"):
        await inbox.ctx.opt_out(sender, medium, opt_out == "STOP")
    return empty_twiml()


async def on_status(inbox: TwilioInbox, request: web.Request, form: MultiDict[str]) -> web.Response:
    """A status callback of a message we sent: the message moves; a 21610 opts out."""
    provider_id = required(form, "MessageSid", "SmsSid")
    raw_status = first(form, "MessageStatus", "SmsStatus")
    status = MESSAGE_STATUS[raw_status]
    code = form.get("ErrorCode") or None
    if code == "0":
        code = None
    error = None
    if status == "failed":
        error = (
            form.get("ErrorMessage")
            or ERROR_REASONS.get(code or "")
            or (f"Twilio reported the message {raw_status}")
        )
    update = StatusUpdate(
        inbox=inbox.inbox_id,
        provider_id=provider_id,
        status=status,
        error_code=code if status == "failed" else None,
        error=error,
    )
    await inbox.ctx.record_status([update])
    if status == "failed" and code == OPT_OUT_CODE:
        recipient = form.get("To", "")
        ref = phone(inbox, recipient)
        if ref is not None:
            medium = "whatsapp" if recipient.lower().startswith("whatsapp:") else "sms"
            await inbox.ctx.opt_out(ref, medium, True)
    return empty()


# --- the room's tables -------------------------------------------------------------------------

ROUTES: dict[str, Classifier] = {
    "/messages": classify_message,
    "/status": classify_status,
}

# Every event type of these routes and its handler; None: known, acknowledged and
# logged as ignored.
EVENTS: dict[str, Handler | None] = {
    # /messages
    "message.sms": on_message,
    "message.whatsapp": on_message,
    "message.other": None,  # Messenger and other relayed channels
    # /status
    "status.sent": on_status,
    "status.delivered": on_status,
    "status.read": on_status,
    "status.undelivered": on_status,
    "status.failed": on_status,
    "status.accepted": None,
    "status.scheduled": None,
    "status.queued": None,
    "status.sending": None,
    "status.canceled": None,
    "status.receiving": None,
    "status.received": None,
    "status.partially_delivered": None,
}

# What an ignored event is answered, by its family (the event type before the dot).
ACKNOWLEDGE: dict[str, Acknowledge] = {
    "message": empty_twiml,
    "status": empty,
}
