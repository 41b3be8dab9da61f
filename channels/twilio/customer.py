"""The customer's side of the Twilio simulator: what Twilio posts to the hub when a
customer texts or calls one of its numbers, what a caller hears of the hub's TwiML,
and what a customer's phone shows of a message the hub sent. Pure functions of the
wire format; `simulator.FakeTwilio` signs and posts them.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from email.utils import formatdate

API_VERSION = "2010-04-01"


def message_params(
    account_sid: str,
    sid: str,
    *,
    sender: str,
    to: str,
    body: str,
    whatsapp: bool,
    profile_name: str = "",
) -> dict[str, str]:
    """The form of Twilio's incoming-message webhook (SMS, or WhatsApp through Twilio)."""
    params = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": f"whatsapp:{to}" if whatsapp else to,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": f"whatsapp:{sender}" if whatsapp else sender,
        "ApiVersion": API_VERSION,
    }
    if whatsapp:
        params["WaId"] = sender.lstrip("+")
        params["MessageType"] = "text"
        if profile_name:
            params["ProfileName"] = profile_name
    return params


def call_params(
    account_sid: str,
    call_sid: str,
    *,
    caller: str,
    called: str,
    caller_name: str = "",
    **extra: str,
) -> dict[str, str]:
    """The form of Twilio's voice webhooks for an incoming call, with `extra` fields
    (`CallStatus`, `CallDuration`, the recording's...)."""
    params = {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "Called": called,
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": called,
        "CallerCountry": "US",
    }
    if caller_name:
        params["CallerName"] = caller_name
    params.update(extra)
    return params


def recording_params(
    account_sid: str, call_sid: str, recording_url: str, duration: int
) -> dict[str, str]:
    """The form of a `<Record>` verb's recording status callback."""
    return {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "RecordingSid": "RE" + secrets.token_hex(16),
        "RecordingUrl": recording_url,
        "RecordingStatus": "completed",
        "RecordingDuration": str(duration),
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
        "RecordingStartTime": formatdate(usegmt=True),
        "ErrorCode": "0",
    }


def read_twiml(answer: str) -> tuple[list[str], dict[str, str] | None]:
    """What a caller hears from TwiML, and the <Record> verb's attributes."""
    heard: list[str] = []
    record: dict[str, str] | None = None
    try:
        root = ElementTree.fromstring(answer)  # noqa: S314  (the hub's own TwiML, 500 chars)
    except ElementTree.ParseError:
        return ["(the hub answered with something that is not TwiML)"], None
    for verb in root:
        if verb.tag == "Say" and verb.text:
            heard.append(verb.text.strip())
        elif verb.tag == "Dial":
            heard.append("(ringing the agents' phones)")
        elif verb.tag == "Record":
            heard.append("(beep: recording a voicemail)")
            record = dict(verb.attrib)
        elif verb.tag == "Hangup":
            heard.append("(the line hangs up)")
    return heard, record


def shown_text(form: Mapping[str, str], media: list[str]) -> str:
    """What the customer's phone shows of a message sent through the Messages API."""
    text = form.get("Body") or ""
    content_sid = form.get("ContentSid")
    if content_sid:
        text = text or f"[template {content_sid}]"
    for url in media:
        text += f"\n[media] {url}"
    return text.strip()
