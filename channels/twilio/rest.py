"""Sending through Twilio's REST API, and what its error answers mean.

A send is a form POST to `{api_base}/2010-04-01/Accounts/{sid}/Messages.json`
through the hub's shared aiohttp session (never the blocking REST client), with
HTTP basic auth (account SID and auth token). `send_error` classifies Twilio's
error answer as transient or permanent; `ERROR_REASONS` words the common codes for
the agent (status callbacks carry the same codes).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from channels.base import PermanentSendError, SendError, TransientSendError
from channels.twilio.settings import TwilioSettings
from channels.twilio.webhook import TwilioInbox
from hub.model import OutboundMessage, SendResult

# Reasons shown to the agent for the error codes a send or a callback often
# carries (https://www.twilio.com/docs/api/errors); the code is shown beside them.
ERROR_REASONS: dict[str, str] = {
    "20003": "Twilio refused the credentials: check account_sid and auth_token",
    "21211": "invalid 'To' phone number",
    "21408": "sending to this region is not enabled on the Twilio account",
    "21610": (
        "the recipient has unsubscribed (replied STOP); they must text START "
        "before they can be messaged again"
    ),
    "21614": "the 'To' number is not a mobile number",
    "30003": "unreachable destination handset",
    "30004": "message blocked by the recipient or their carrier",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown delivery error",
    "63016": (
        "WhatsApp allows free-form messages only within 24 hours of the customer's "
        "last message; send an approved template instead"
    ),
}
OPT_OUT_CODE = "21610"
RATE_LIMIT_CODE = "20429"


# --- what Twilio's answers mean ----------------------------------------------------------


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (it may be a number or an HTTP date)."""
    if not header:
        return None
    text = header.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def send_error(status: int, payload: Mapping[str, Any], retry_after: str | None) -> SendError:
    """Classify Twilio's error answer (`{code, message, more_info, status}`)."""
    code = str(payload["code"]) if payload.get("code") is not None else str(status)
    message = str(payload.get("message") or f"HTTP {status}")
    wait = retry_after_seconds(retry_after)
    if status == 429 or code == RATE_LIMIT_CODE:
        # Twilio refused the request outright: certainly not sent.
        return TransientSendError(
            message, code=code, retry_after=1.0 if wait is None else wait, maybe_sent=False
        )
    if status >= 500:
        return TransientSendError(message, code=code, retry_after=wait, maybe_sent=True)
    if code == OPT_OUT_CODE:
        return PermanentSendError(ERROR_REASONS[code], code=code, opt_out=True)
    return PermanentSendError(ERROR_REASONS.get(code, message), code=code)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


# --- the request -----------------------------------------------------------------------


def authorization(settings: TwilioSettings) -> str:
    """The `Authorization` header: basic auth with the account SID and auth token."""
    credentials = f"{settings.account_sid}:{settings.auth_token}"
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _addresses(inbox: TwilioInbox, message: OutboundMessage) -> tuple[str, str]:
    """(From, To) for a message on its medium."""
    settings = inbox.settings
    if message.medium == "whatsapp":
        if not settings.whatsapp_number:
            raise PermanentSendError(f"inbox {inbox.inbox_id} has no whatsapp_number")
        return f"whatsapp:{settings.whatsapp_number}", f"whatsapp:{message.to}"
    if message.medium in ("sms", "voice"):  # voice: a text to the caller
        if not settings.number:
            raise PermanentSendError(f"inbox {inbox.inbox_id} has no SMS number")
        return settings.number, message.to
    raise PermanentSendError(f"Twilio cannot send on {message.medium}")


def message_fields(inbox: TwilioInbox, message: OutboundMessage) -> list[tuple[str, str]]:
    """The form fields of the Messages API call that sends `message`."""
    sender, to = _addresses(inbox, message)
    fields = [("To", to), ("From", sender)]
    template = message.template or {}
    # With a template the text is its filled body, kept for the thread: Twilio
    # sends the content itself.
    if message.text and not template.get("content_sid"):
        fields.append(("Body", message.text))
    fields += [("MediaUrl", attachment.url) for attachment in message.attachments]
    if template.get("content_sid"):
        # An approved WhatsApp template (Twilio Content API).
        fields.append(("ContentSid", str(template["content_sid"])))
        variables = template.get("variables")
        if variables:
            fields.append(("ContentVariables", json.dumps(variables)))
    if len(fields) == 2:
        raise PermanentSendError("nothing to send: no text, media or template")
    if inbox.settings.status_callback:
        fields.append(("StatusCallback", inbox.url("/status")))
    return fields


async def send(inbox: TwilioInbox, message: OutboundMessage, authorization: str) -> SendResult:
    """Create the message at Twilio; its sid, or the SendError its answer means."""
    settings = inbox.settings
    fields = message_fields(inbox, message)
    endpoint = f"{settings.api_base}/2010-04-01/Accounts/{settings.account_sid}"
    try:
        async with inbox.ctx.http().post(
            f"{endpoint}/Messages.json",
            data=urllib.parse.urlencode(fields),
            headers={
                "Authorization": authorization,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            timeout=aiohttp.ClientTimeout(total=settings.send_timeout),
        ) as response:
            status = response.status
            raw = await response.read()
            retry_after = response.headers.get("Retry-After")
    except aiohttp.ClientConnectorError as error:
        raise TransientSendError(
            f"cannot reach Twilio: {type(error).__name__}", maybe_sent=False
        ) from error
    except TimeoutError as error:
        raise TransientSendError("Twilio did not answer in time") from error
    except aiohttp.ClientError as error:
        raise TransientSendError(f"request to Twilio failed: {type(error).__name__}") from error
    payload = _json_object(raw)
    if 200 <= status < 300:
        sid = payload.get("sid")
        if not isinstance(sid, str) or not sid:
            raise TransientSendError(f"Twilio answered {status} without a message sid")
        return SendResult(provider_id=sid)
    raise send_error(status, payload, retry_after)
