"""Twilio: SMS, WhatsApp and Voice through one Twilio account.

Webhook routes, relative to `/webhooks/twilio/{inbox}`:

- `POST /messages`: inbound SMS and WhatsApp, answered with empty TwiML;
- `POST /status`: status callbacks of the messages we send (our `StatusCallback`);
- `POST /voice`: an incoming call, answered with TwiML: the greeting, the agents'
  phones ringing together, then voicemail;
- `POST /voice/status`: the `<Dial>` and `<Record>` actions of that TwiML, and the
  number's own call status callback when the console points it here;
- `POST /voice/recording`: the recording status callback, which becomes a voicemail.

Every request is verified with the twilio library's `RequestValidator` over the URL
Twilio called (`public_url` + path and query) and the form parameters; a missing or
wrong `X-Twilio-Signature` is 403 before anything is parsed or written. Each request
is classified into one event type, and `EVENTS` says which method handles it (or
that it is known and ignored); an event absent from `EVENTS` is a 400.

Sending is a form POST to `{api_base}/2010-04-01/Accounts/{sid}/Messages.json`
through the hub's shared aiohttp session (never the blocking REST client).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

import aiohttp
from aiohttp import web
from multidict import MultiDict
from pydantic import Field, field_validator, model_validator
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Dial, VoiceResponse

from channels.base import (
    ChannelAdapter,
    ChannelContext,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    SendError,
    StoreUnavailable,
    TransientSendError,
)
from channels.signing import read_limited
from hub.addresses import InvalidIdentity, phone_ref
from hub.model import (
    Attachment,
    ButtonReply,
    CallInfo,
    IdentityRef,
    InboundButton,
    InboundCall,
    InboundLocation,
    InboundMedia,
    InboundText,
    InboundVoicemail,
    Location,
    OutboundMessage,
    SendResult,
    StatusUpdate,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY = 256 * 1024  # Twilio's webhooks are a few KB; this is generous
MAX_MEDIA = 100
E164 = re.compile(r"^\+[1-9]\d{6,14}$")

# What Twilio puts in `From` when the caller withholds their number: keypad
# spellings of ANONYMOUS, RESTRICTED, UNAVAILABLE, UNKNOWN and BLOCKED. They look
# like phone numbers but are no one's, so they must never become a contact.
WITHHELD_CALLERS = frozenset({"+266696687", "+7378742833", "+86282452253", "+8656696", "+2562533"})

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
CALL_EXTRA = ("To", "CallerCountry", "CallerState", "CallerCity", "DialCallSid", "CallStatus")

# Message status callbacks that move an outbound message, and to what.
MESSAGE_STATUS: dict[str, Literal["sent", "delivered", "read", "failed"]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
}

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


class MalformedPayload(ValueError):
    """A request that does not look like Twilio's (answered 400)."""


def _e164(value: str) -> str:
    text = value.strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    if not E164.match(text):
        raise ValueError(f"{value!r} is not an E.164 number such as +15005550006")
    return text


class TwilioSettings(ChannelSettings):
    """The keys of a `channel = "twilio"` inbox."""

    # "AC" and 32 hex digits at Twilio; only the prefix is checked, so a
    # placeholder or a test double's own id is accepted.
    account_sid: str = Field(pattern=r"^AC\w*$")
    auth_token: str = Field(min_length=8, json_schema_extra={"secret": True})
    number: str | None = None  # the SMS (and voice) number, E.164
    whatsapp_number: str | None = None  # the WhatsApp sender, E.164
    api_base: str = "https://api.twilio.com"
    # Ask Twilio to report delivery of what we send to this inbox's /status route.
    status_callback: bool = True
    # Messages per second this inbox sends. Default: 1 when `number` is set (a US
    # long code), else 10 (a WhatsApp sender). Toll-free 3, short code 100.
    rate: float | None = Field(default=None, gt=0)
    burst: int = Field(default=1, ge=1)
    send_timeout: float = Field(default=15.0, gt=0)
    # Voice.
    greeting: str = ""
    voice_language: str | None = None  # <Say language="..."> (e.g. "en-US")
    agent_numbers: tuple[str, ...] = ()
    ring_seconds: int = Field(default=20, ge=5, le=600)
    voicemail: bool = True
    voicemail_prompt: str = "Please leave a message after the tone."
    voicemail_max_seconds: int = Field(default=120, ge=5, le=3600)
    missed_call_sms: str = ""  # empty: no text after a missed call

    @field_validator("number", "whatsapp_number")
    @classmethod
    def _sender_number(cls, value: str | None) -> str | None:
        return _e164(value) if value else None

    @field_validator("agent_numbers")
    @classmethod
    def _agent_numbers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_e164(number) for number in value)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _sms_needs_a_number(self) -> TwilioSettings:
        if self.missed_call_sms and not self.number:
            raise ValueError("missed_call_sms needs `number` (the SMS sender)")
        return self


# --- classification: one event type per request -----------------------------------


def _first(form: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = form.get(name)
        if value:
            return value
    return ""


def classify(route: str, form: Mapping[str, str]) -> str:
    """The event type of a request to `route` (the path after the inbox prefix)."""
    if route == "/messages":
        sender = form.get("From", "")
        if not sender:
            raise MalformedPayload("From is missing")
        if sender.lower().startswith("whatsapp:"):
            return "message.whatsapp"
        if ":" in sender:  # messenger:, and channels Twilio adds later
            return "message.other"
        return "message.sms"
    if route == "/status":
        status = _first(form, "MessageStatus", "SmsStatus")
        if not status:
            raise MalformedPayload("MessageStatus is missing")
        return f"status.{status}"
    if route == "/voice":
        return "voice.incoming"
    if route == "/voice/status":
        if form.get("DialCallStatus"):
            return f"dial.{form['DialCallStatus']}"
        if form.get("RecordingUrl") and not form.get("RecordingStatus"):
            return "record.done"  # the <Record> action: the caller left a message
        call_status = form.get("CallStatus")
        if not call_status:
            raise MalformedPayload("none of DialCallStatus, RecordingUrl, CallStatus")
        return f"call.{call_status}"
    if route == "/voice/recording":
        recording_status = form.get("RecordingStatus")
        if not recording_status:
            raise MalformedPayload("RecordingStatus is missing")
        return f"recording.{recording_status}"
    raise MalformedPayload(f"no Twilio route {route}")


def _required(form: Mapping[str, str], *names: str) -> str:
    value = _first(form, *names)
    if not value:
        raise MalformedPayload(f"{names[0]} is missing")
    return value


def _duration(value: str | None) -> int | None:
    try:
        seconds = int(value or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _extra(form: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: form[name] for name in names if form.get(name)}


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


# --- sending: what Twilio's answers mean --------------------------------------------


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


# --- the adapter -----------------------------------------------------------------------

# An event's handler gets the request and its verified form.
Handler = Callable[[web.Request, MultiDict[str]], Awaitable[web.StreamResponse]]
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _twiml(response: VoiceResponse | MessagingResponse) -> web.Response:
    return web.Response(text=str(response), content_type="text/xml")


def _empty_twiml() -> web.Response:
    return _twiml(MessagingResponse())


def _empty() -> web.Response:
    return web.Response(status=200, text="")


# What each route answers when it acknowledges without doing anything.
ACKNOWLEDGE: dict[str, Callable[[], web.Response]] = {
    "/messages": _empty_twiml,
    "/status": _empty,
    "/voice": _empty_twiml,
    "/voice/status": _empty_twiml,
    "/voice/recording": _empty,
}


class TwilioChannel(ChannelAdapter):
    """SMS, WhatsApp and Voice through Twilio."""

    name = "twilio"
    Settings = TwilioSettings
    settings: TwilioSettings

    # Every event type a request can be, and the method that handles it; None:
    # known, acknowledged and logged as ignored. A type missing here is a 400.
    EVENTS: ClassVar[dict[str, str | None]] = {
        # /messages
        "message.sms": "_on_message",
        "message.whatsapp": "_on_message",
        "message.other": None,  # Messenger and other relayed channels
        # /status
        "status.sent": "_on_message_status",
        "status.delivered": "_on_message_status",
        "status.read": "_on_message_status",
        "status.undelivered": "_on_message_status",
        "status.failed": "_on_message_status",
        "status.accepted": None,
        "status.scheduled": None,
        "status.queued": None,
        "status.sending": None,
        "status.canceled": None,
        "status.receiving": None,
        "status.received": None,
        "status.partially_delivered": None,
        # /voice
        "voice.incoming": "_on_incoming_call",
        # /voice/status: the <Dial> action
        "dial.completed": "_on_dial",
        "dial.answered": "_on_dial",
        "dial.busy": "_on_dial",
        "dial.no-answer": "_on_dial",
        "dial.failed": "_on_dial",
        "dial.canceled": "_on_dial",
        # /voice/status: the <Record> action
        "record.done": "_on_record_done",
        # /voice/status: the number's call status callback
        "call.queued": None,
        "call.initiated": None,
        "call.ringing": None,
        "call.in-progress": None,
        "call.completed": "_on_call_status",
        "call.busy": "_on_call_status",
        "call.no-answer": "_on_call_status",
        "call.failed": "_on_call_status",
        "call.canceled": "_on_call_status",
        # /voice/recording
        "recording.completed": "_on_recording",
        "recording.in-progress": None,
        "recording.absent": None,  # nothing was said
        "recording.failed": None,
    }

    @classmethod
    def supported_events(cls) -> list[str]:
        """The event types this adapter acts on (the others are acknowledged)."""
        return sorted(event for event, handler in cls.EVENTS.items() if handler)

    def __init__(self, inbox_id: str, settings: ChannelSettings, ctx: ChannelContext) -> None:
        super().__init__(inbox_id, settings, ctx)
        self._validator = RequestValidator(self.settings.auth_token)
        credentials = f"{self.settings.account_sid}:{self.settings.auth_token}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()

    # -- lifecycle and pace ---------------------------------------------------------

    async def start(self) -> None:
        if not self.settings.auth_token:
            raise ValueError(f"{self.inbox_id}: auth_token is required to verify Twilio")
        if not self.settings.account_sid:
            raise ValueError(f"{self.inbox_id}: account_sid is required")

    def rate_limit(self) -> RateLimit:
        per_second = self.settings.rate or (1.0 if self.settings.number else 10.0)
        return RateLimit(per_second=per_second, burst=self.settings.burst)

    # -- webhooks --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(route, self._endpoint(route)) for route in ACKNOWLEDGE]

    def url(self, path: str) -> str:
        """The public URL of one of this inbox's routes (what Twilio calls)."""
        return f"{self.ctx.public_url}{self.webhook_prefix}{path}"

    def _endpoint(self, route: str) -> Endpoint:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            form = await self._verified_form(request)
            try:
                event = classify(route, form)
                method = self.EVENTS.get(event, "?")
                if method == "?":
                    raise MalformedPayload(f"unknown Twilio event {event!r}")
                if method is None:
                    self.ctx.logger.info(
                        "twilio event ignored", extra={"inbox": self.inbox_id, "event": event}
                    )
                    return ACKNOWLEDGE[route]()
                handler: Handler = getattr(self, method)
                return await handler(request, form)
            except MalformedPayload as error:
                raise web.HTTPBadRequest(text=f"malformed Twilio request: {error}") from None

        return endpoint

    async def _verified_form(self, request: web.Request) -> MultiDict[str]:
        """The form parameters of a request Twilio signed; 403 otherwise."""
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise web.HTTPForbidden(text=f"missing {SIGNATURE_HEADER}")
        body = await read_limited(request, MAX_BODY)
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                max_num_fields=1000,
            )
        except (UnicodeDecodeError, ValueError):
            raise web.HTTPBadRequest(text="the body is not a form") from None
        form: MultiDict[str] = MultiDict(pairs)
        # Twilio signs the URL it called: our public URL, never the Host we see.
        called = self.ctx.public_url + request.raw_path
        if not self._validator.validate(called, form, signature):
            raise web.HTTPForbidden(text=f"bad {SIGNATURE_HEADER}")
        return form

    def _phone(self, raw: str, name: str | None = None) -> IdentityRef | None:
        """The phone identity of `raw`, or None for a withheld or non-phone sender."""
        if not raw or raw.strip() in WITHHELD_CALLERS:
            return None
        try:
            ref = phone_ref(raw, self.ctx.default_region, name=name)
        except InvalidIdentity:
            return None
        return None if ref.value in WITHHELD_CALLERS else ref

    def _ignored(self, event: str, why: str) -> None:
        self.ctx.logger.info(
            "twilio event ignored", extra={"inbox": self.inbox_id, "event": event, "why": why}
        )

    # -- messages --------------------------------------------------------------------

    async def _on_message(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        provider_id = _required(form, "MessageSid", "SmsMessageSid", "SmsSid")
        raw_from = form["From"]
        medium: Literal["sms", "whatsapp"] = (
            "whatsapp" if raw_from.lower().startswith("whatsapp:") else "sms"
        )
        attachments = _attachments(form)
        location = _location(form)
        sender = self._phone(raw_from, form.get("ProfileName") or None)
        if sender is None:
            # A short code or alphanumeric sender: nothing we could answer.
            self._ignored(f"message.{medium}", "the sender is not a phone number")
            return _empty_twiml()
        common: dict[str, Any] = {
            "inbox": self.inbox_id,
            "medium": medium,
            "provider_id": provider_id,
            "sender": sender,
            "text": form.get("Body") or None,
            "extra": _extra(form, MESSAGE_EXTRA),
        }
        event: InboundText | InboundMedia | InboundLocation | InboundButton
        if attachments:
            event = InboundMedia(**common, attachments=attachments)
        elif location is not None:
            event = InboundLocation(**common, location=location)
        elif form.get("ButtonPayload") or form.get("ButtonText"):
            button = ButtonReply(
                payload=_first(form, "ButtonPayload", "ButtonText"),
                title=form.get("ButtonText") or None,
            )
            event = InboundButton(**common, button=button)
        else:
            event = InboundText(**common)
        await self.ctx.ingest([event])
        # Twilio's Advanced Opt-Out tells us about STOP and START itself.
        opt_out = form.get("OptOutType", "").upper()
        if opt_out in ("STOP", "START"):
            await self.ctx.opt_out(sender, medium, opt_out == "STOP")
        return _empty_twiml()

    async def _on_message_status(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        provider_id = _required(form, "MessageSid", "SmsSid")
        raw_status = _first(form, "MessageStatus", "SmsStatus")
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
            inbox=self.inbox_id,
            provider_id=provider_id,
            status=status,
            error_code=code if status == "failed" else None,
            error=error,
        )
        await self.ctx.record_status([update])
        if status == "failed" and code == OPT_OUT_CODE:
            recipient = form.get("To", "")
            ref = self._phone(recipient)
            if ref is not None:
                medium = "whatsapp" if recipient.lower().startswith("whatsapp:") else "sms"
                await self.ctx.opt_out(ref, medium, True)
        return _empty()

    # -- voice -----------------------------------------------------------------------

    async def _on_incoming_call(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        call_sid = _required(form, "CallSid")
        caller = self._phone(_required(form, "From", "Caller"))
        if caller is not None:
            # The screen-pop is best effort: the caller is answered even when it fails.
            try:
                await self.ctx.call_incoming(self.inbox_id, caller, call_sid)
            except Exception:
                self.ctx.logger.warning(
                    "call screen-pop failed", exc_info=True, extra={"inbox": self.inbox_id}
                )
        response = VoiceResponse()
        if self.settings.greeting:
            response.say(self.settings.greeting, language=self.settings.voice_language)
        if self.settings.agent_numbers:
            dial = Dial(
                timeout=self.settings.ring_seconds,
                action=self.url("/voice/status"),
                method="POST",
                caller_id=caller.value if caller else None,
            )
            for number in self.settings.agent_numbers:
                dial.number(number)
            response.append(dial)
        elif self.settings.voicemail and caller is not None:
            self._voicemail(response, caller)
        else:
            response.hangup()
            await self._log_call_in_flight(form, call_sid, caller, "missed", None)
        return _twiml(response)

    def _voicemail(self, response: VoiceResponse, caller: IdentityRef) -> None:
        """Append the voicemail prompt and recording to `response`."""
        if self.settings.voicemail_prompt:
            response.say(self.settings.voicemail_prompt, language=self.settings.voice_language)
        # The recording callback carries no caller, so its URL names them (Twilio
        # signs the full URL, query included, so it cannot be altered).
        recording_url = (
            self.url("/voice/recording") + "?" + urllib.parse.urlencode({"caller": caller.value})
        )
        response.record(
            action=self.url("/voice/status"),
            method="POST",
            max_length=self.settings.voicemail_max_seconds,
            play_beep=True,
            recording_status_callback=recording_url,
            recording_status_callback_method="POST",
            recording_status_callback_event="completed",
        )
        response.hangup()  # reached when the caller said nothing

    async def _on_dial(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        call_sid = _required(form, "CallSid")
        caller = self._phone(_first(form, "From", "Caller"))
        answered = form["DialCallStatus"] in ("completed", "answered")
        response = VoiceResponse()
        if answered:
            duration = _duration(form.get("DialCallDuration"))
            await self._log_call_in_flight(form, call_sid, caller, "completed", duration)
            response.hangup()
        else:
            await self._log_call_in_flight(form, call_sid, caller, "missed", None)
            if self.settings.voicemail and caller is not None:
                self._voicemail(response, caller)
            else:
                response.hangup()
        return _twiml(response)

    async def _on_record_done(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        # Voicemail is only offered when nobody answered: the call was missed. The
        # recording itself arrives on /voice/recording.
        call_sid = _required(form, "CallSid")
        caller = self._phone(_first(form, "From", "Caller"))
        await self._log_call_in_flight(form, call_sid, caller, "missed", None)
        response = VoiceResponse()
        response.hangup()
        return _twiml(response)

    async def _on_call_status(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        call_sid = _required(form, "CallSid")
        caller = self._phone(_first(form, "From", "Caller"))
        if form["CallStatus"] == "completed" and self.settings.agent_numbers:
            outcome: Literal["completed", "missed"] = "completed"
            duration = _duration(form.get("CallDuration"))
        else:
            # busy, no-answer, failed, canceled; or completed with no agent to answer.
            outcome, duration = "missed", None
        await self._log_call(form, call_sid, caller, outcome, duration)
        return _empty()

    async def _on_recording(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        recording_sid = _required(form, "RecordingSid")
        call_sid = _required(form, "CallSid")
        recording_url = _required(form, "RecordingUrl")
        caller = self._phone(request.query.get("caller", ""))
        if caller is None:
            raise MalformedPayload("the recording callback URL names no caller")
        voicemail = InboundVoicemail(
            inbox=self.inbox_id,
            medium="voice",
            provider_id=recording_sid,
            sender=caller,
            call=CallInfo(
                direction="in",
                status="missed",
                duration=_duration(form.get("RecordingDuration")),
                recording_url=recording_url,
                call_id=call_sid,
            ),
        )
        await self.ctx.ingest([voicemail])
        return _empty()

    async def _log_call(
        self,
        form: Mapping[str, str],
        call_sid: str,
        caller: IdentityRef | None,
        outcome: Literal["completed", "missed"],
        duration: int | None,
    ) -> None:
        """Store the call (once per CallSid, whichever callback comes first) and text
        a missed caller when this is the first word of that call."""
        if caller is None:
            self._ignored("call", "the caller withheld their number")
            return
        call = InboundCall(
            inbox=self.inbox_id,
            medium="voice",
            provider_id=call_sid,
            sender=caller,
            call=CallInfo(direction="in", status=outcome, duration=duration, call_id=call_sid),
            extra=_extra(form, CALL_EXTRA),
        )
        (result,) = await self.ctx.ingest([call])
        if outcome == "missed" and not getattr(result, "duplicate", True):
            await self._text_missed_caller(caller, call_sid)

    async def _log_call_in_flight(
        self,
        form: Mapping[str, str],
        call_sid: str,
        caller: IdentityRef | None,
        outcome: Literal["completed", "missed"],
        duration: int | None,
    ) -> None:
        """`_log_call` during a live call, whose TwiML answer must not fail.

        Twilio does not retry a verb's action URL: a 5xx would play an error to the
        caller and lose the voicemail too. So a store outage is logged and the call
        goes on; the number's status callback, when set, records the call later.
        """
        try:
            await self._log_call(form, call_sid, caller, outcome, duration)
        except StoreUnavailable:
            self.ctx.logger.error(
                "call not recorded: the store is unavailable", extra={"inbox": self.inbox_id}
            )

    async def _text_missed_caller(self, caller: IdentityRef, call_sid: str) -> None:
        if not self.settings.missed_call_sms:
            return
        try:
            await self.ctx.send_text(
                self.inbox_id,
                "sms",
                caller,
                self.settings.missed_call_sms,
                key=f"{call_sid}:missed-call-sms",
            )
        except Exception:
            # At most once: a retry of the callback is a duplicate and sends nothing.
            self.ctx.logger.warning(
                "missed-call text not queued", exc_info=True, extra={"inbox": self.inbox_id}
            )

    # -- sending ---------------------------------------------------------------------

    def _addresses(self, message: OutboundMessage) -> tuple[str, str]:
        """(From, To) for a message on its medium."""
        if message.medium == "whatsapp":
            if not self.settings.whatsapp_number:
                raise PermanentSendError(f"inbox {self.inbox_id} has no whatsapp_number")
            return f"whatsapp:{self.settings.whatsapp_number}", f"whatsapp:{message.to}"
        if message.medium in ("sms", "voice"):  # voice: a text to the caller
            if not self.settings.number:
                raise PermanentSendError(f"inbox {self.inbox_id} has no SMS number")
            return self.settings.number, message.to
        raise PermanentSendError(f"Twilio cannot send on {message.medium}")

    def _fields(self, message: OutboundMessage) -> list[tuple[str, str]]:
        sender, to = self._addresses(message)
        fields = [("To", to), ("From", sender)]
        if message.text:
            fields.append(("Body", message.text))
        fields += [("MediaUrl", attachment.url) for attachment in message.attachments]
        template = message.template or {}
        if template.get("content_sid"):
            # An approved WhatsApp template (Twilio Content API).
            fields.append(("ContentSid", str(template["content_sid"])))
            variables = template.get("variables")
            if variables:
                fields.append(("ContentVariables", json.dumps(variables)))
        if len(fields) == 2:
            raise PermanentSendError("nothing to send: no text, media or template")
        if self.settings.status_callback:
            fields.append(("StatusCallback", self.url("/status")))
        return fields

    async def send(self, message: OutboundMessage) -> SendResult:
        fields = self._fields(message)
        endpoint = f"{self.settings.api_base}/2010-04-01/Accounts/{self.settings.account_sid}"
        try:
            async with self.ctx.http().post(
                f"{endpoint}/Messages.json",
                data=urllib.parse.urlencode(fields),
                headers={
                    "Authorization": self._authorization,
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=self.settings.send_timeout),
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
