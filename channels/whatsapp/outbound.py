"""WhatsApp messages out: `POST {api_base}/{phone_number_id}/messages` with the
access token as a Bearer token.

Text, media (`link`, or `id` for `whatsapp-media:` URLs), approved templates
(`OutboundMessage.template`) and reply buttons or a list (`OutboundMessage.buttons`).
Outside the 24-hour customer-service window only a template may be sent:
`reply_refusal` says so before the reply is queued and `send` refuses such a
message before calling the API. Graph errors are classified in
`classify_graph_error`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import ValidationError

from channels.base import PermanentSendError, TransientSendError
from channels.whatsapp.settings import WhatsAppSettings
from channels.whatsapp.wire import (
    MEDIA_URL_PREFIX,
    GraphErrorBody,
    GraphErrorDetails,
    SendResponse,
    TemplateSpec,
    error_message,
)
from hub.model import Attachment, ButtonReply, OutboundMessage, SendResult, utcnow

WINDOW = timedelta(hours=24)
WINDOW_REASON = "outside WhatsApp's 24-hour customer-service window: send an approved template"

# Graph's limits on what one message may carry (Cloud API "send messages" reference).
TEXT_MAX = 4096
CAPTION_MAX = 1024
BUTTONS_BODY_MAX = 1024
LIST_BODY_MAX = 4096
REPLY_BUTTONS_MAX = 3
LIST_ROWS_MAX = 10
BUTTON_TITLE_MAX = 20
ROW_TITLE_MAX = 24
BUTTON_ID_MAX = 256
LIST_BUTTON_LABEL = "Options"


def reply_refusal(last_inbound_at: datetime | None, template: bool) -> str | None:
    """Why a reply cannot be sent now: free text needs the customer's last
    message to be less than 24 hours old; a template goes any time."""
    if template:
        return None
    if last_inbound_at is None or utcnow() - _aware(last_inbound_at) >= WINDOW:
        return WINDOW_REASON
    return None


def _aware(moment: datetime) -> datetime:
    # The store hands back naive UTC datetimes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def send(
    message: OutboundMessage, settings: WhatsAppSettings, http: aiohttp.ClientSession
) -> SendResult:
    """Send `message` through the Graph API; a SendError when it did not go."""
    refusal = reply_refusal(message.last_inbound_at, message.template is not None)
    if refusal:
        raise PermanentSendError(refusal, code="outside_window")
    to = message.to.strip().lstrip("+")
    if not to.isdigit():
        raise PermanentSendError(f"not a phone number: {message.to!r}", code="bad_recipient")
    provider_id = ""
    # Several payloads (text then media, several media) go out in order; the
    # last one's id stands for the message.
    for payload in build_payloads(message):
        provider_id = await _post(
            settings,
            http,
            {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to} | payload,
        )
    return SendResult(provider_id=provider_id)


async def _post(
    settings: WhatsAppSettings, http: aiohttp.ClientSession, payload: dict[str, Any]
) -> str:
    url = f"{settings.api_base}/{settings.phone_number_id}/messages"
    headers = {"Authorization": f"Bearer {settings.access_token}"}
    try:
        async with http.post(url, json=payload, headers=headers) as response:
            status = response.status
            retry_after = response.headers.get("Retry-After")
            raw = await response.read()
    except aiohttp.ClientConnectorError as error:
        raise TransientSendError(
            f"cannot connect to the Graph API: {type(error).__name__}", maybe_sent=False
        ) from error
    except (aiohttp.ClientError, TimeoutError) as error:
        raise TransientSendError(f"Graph API request failed: {type(error).__name__}") from error
    try:
        body = json.loads(raw) if raw else None
    except (UnicodeDecodeError, ValueError):
        body = None
    if 200 <= status < 300:
        try:
            return SendResponse.model_validate(body).messages[0].id
        except ValidationError:
            # Graph said yes but named no message: it may well be on its way.
            raise TransientSendError(
                f"HTTP {status} from the Graph API without a message id"
            ) from None
    graph_error: GraphErrorDetails | None
    try:
        graph_error = GraphErrorBody.model_validate(body).error
    except ValidationError:
        graph_error = None
    raise classify_graph_error(status, graph_error, retry_after)


# -- Graph's errors ---------------------------------------------------------------------


# the message was refused, retry after a pause. Seconds to wait when Graph says none.
RATE_LIMIT_CODES: dict[int, float] = {130429: 1.0, 131056: 6.0, 4: 60.0, 80007: 60.0}
# Graph's own "try again": 1 unknown/possible server error, 2 downtime,
# 131000 unknown send failure, 131016 service unavailable.
TRANSIENT_CODES: frozenset[int] = frozenset({1, 2, 131000, 131016})
RE_ENGAGEMENT = 131047  # more than 24 h since the customer's last message
OPTED_OUT = 131050  # the user stopped marketing messages from this business


def classify_graph_error(
    status: int, error: GraphErrorDetails | None, retry_after: str | None = None
) -> TransientSendError | PermanentSendError:
    """The send error for Graph's answer `status` with error body `error`."""
    if error is None:
        reason = f"HTTP {status} from the Graph API"
        code = str(status)
    else:
        details = error.error_data.details if error.error_data else None
        reason = error.message or f"Graph API error {error.code}"
        if details and details not in reason:
            reason = f"{reason}: {details}"
        code = str(error.code)
    number = error.code if error is not None else None
    wait = _seconds(retry_after)
    if number in RATE_LIMIT_CODES or status == 429:
        default = RATE_LIMIT_CODES.get(number or 0, 1.0)
        return TransientSendError(reason, code=code, retry_after=wait or default, maybe_sent=False)
    if number in TRANSIENT_CODES or status >= 500:
        # With an error body Graph says the message was refused; without one
        # (a proxy's 502, a cut connection) it may have been taken.
        return TransientSendError(reason, code=code, retry_after=wait, maybe_sent=error is None)
    if number == RE_ENGAGEMENT:
        return PermanentSendError(f"{WINDOW_REASON} (Meta: {reason})", code=code, opt_out=False)
    if number == OPTED_OUT:
        return PermanentSendError(
            f"the customer stopped marketing messages from this business (Meta: {reason})",
            code=code,
            opt_out=True,
        )
    return PermanentSendError(reason, code=code)


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 3600 else None


# -- building Graph payloads ------------------------------------------------------------


def build_payloads(message: OutboundMessage) -> list[dict[str, Any]]:
    """The type-specific parts of the Graph requests that send `message`, in order.

    A template is sent alone (its text lives at Meta). Buttons go in one
    interactive message with the text as its body (attachments are not sent with
    them). Otherwise the text becomes the caption of the first image, video or
    document, or a text message of its own before the media (audio and stickers
    take no caption); each attachment is one media message.
    """
    if message.template is not None:
        try:
            template = TemplateSpec.model_validate(message.template)
        except ValidationError as error:
            raise PermanentSendError(
                f"template: {error_message(error)}", code="bad_template"
            ) from None
        return [{"type": "template", "template": template.payload()}]
    text = (message.text or "").strip() or None
    if message.buttons:
        return [_interactive_payload(text, message.buttons)]
    payloads: list[dict[str, Any]] = []
    media = [_media_payload(a) for a in message.attachments]
    captioned = next((p for p in media if p["type"] in CAPTIONED), None)
    if text and captioned is not None and len(text) <= CAPTION_MAX:
        captioned[captioned["type"]]["caption"] = text
        text = None
    if text:
        if len(text) > TEXT_MAX:
            raise PermanentSendError(
                f"the text is longer than WhatsApp's {TEXT_MAX} characters", code="too_long"
            )
        payloads.append({"type": "text", "text": {"preview_url": False, "body": text}})
    payloads.extend(media)
    if not payloads:
        raise PermanentSendError("nothing to send: no text, attachment or template", code="empty")
    return payloads


CAPTIONED = frozenset({"image", "video", "document"})


def _media_payload(attachment: Attachment) -> dict[str, Any]:
    content_type = (attachment.content_type or "").split(";", 1)[0].strip().lower()
    if content_type == "image/webp":
        kind = "sticker"
    elif content_type.startswith(("image/", "audio/", "video/")):
        kind = content_type.split("/", 1)[0]
    else:
        kind = "document"
    if attachment.url.startswith(MEDIA_URL_PREFIX):
        media: dict[str, Any] = {"id": attachment.url[len(MEDIA_URL_PREFIX) :]}
    else:
        media = {"link": attachment.url}
    if kind == "document":
        filename = attachment.name or attachment.url.rsplit("/", 1)[-1].split("?", 1)[0]
        if filename:
            media["filename"] = filename[:240]
    return {"type": kind, kind: media}


def _interactive_payload(text: str | None, buttons: Sequence[ButtonReply]) -> dict[str, Any]:
    if not text:
        raise PermanentSendError("buttons need a text to go with them", code="no_text")
    if len(buttons) > LIST_ROWS_MAX:
        raise PermanentSendError(
            f"WhatsApp offers at most {LIST_ROWS_MAX} choices in one message", code="too_many"
        )
    if len(buttons) <= REPLY_BUTTONS_MAX:
        if len(text) > BUTTONS_BODY_MAX:
            raise PermanentSendError(
                f"the text of a button message is longer than {BUTTONS_BODY_MAX} characters",
                code="too_long",
            )
        return {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": text},
                "action": {
                    "buttons": [
                        {
                            "type": "reply",
                            "reply": {
                                "id": b.payload[:BUTTON_ID_MAX],
                                "title": (b.title or b.payload)[:BUTTON_TITLE_MAX],
                            },
                        }
                        for b in buttons
                    ]
                },
            },
        }
    if len(text) > LIST_BODY_MAX:
        raise PermanentSendError(
            f"the text of a list message is longer than {LIST_BODY_MAX} characters",
            code="too_long",
        )
    rows = [
        {"id": b.payload[:BUTTON_ID_MAX], "title": (b.title or b.payload)[:ROW_TITLE_MAX]}
        for b in buttons
    ]
    return {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": text},
            "action": {"button": LIST_BUTTON_LABEL, "sections": [{"rows": rows}]},
        },
    }
