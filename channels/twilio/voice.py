"""The call flow: an incoming call on `/voice` gets TwiML (the greeting, the agents'
phones ringing together, then voicemail); `/voice/status` takes the `<Dial>` and
`<Record>` actions of that TwiML and the number's own call status callback;
`/voice/recording` takes the recording status callback, which becomes a voicemail.

A call is stored once per CallSid, by whichever callback reports its outcome
first, and a missed caller gets the inbox's `missed_call_sms` once.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Literal

from aiohttp import web
from multidict import MultiDict
from twilio.twiml.voice_response import Dial, VoiceResponse

from channels.base import MalformedPayload, StoreUnavailable
from channels.twilio.webhook import (
    Acknowledge,
    Classifier,
    Handler,
    TwilioInbox,
    duration,
    empty,
    empty_twiml,
    extra,
    first,
    log_ignored,
    phone,
    required,
    twiml,
)
from hub.model import CallInfo, IdentityRef, InboundCall, InboundVoicemail

# Provider fields kept on call messages (`extra`) without being modelled.
CALL_EXTRA = ("To", "CallerCountry", "CallerState", "CallerCity", "DialCallSid", "CallStatus")


# --- classification ----------------------------------------------------------------------


def classify_incoming(form: Mapping[str, str]) -> str:
    return "voice.incoming"


def classify_call_status(form: Mapping[str, str]) -> str:
    if form.get("DialCallStatus"):
        return f"dial.{form['DialCallStatus']}"
    if form.get("RecordingUrl") and not form.get("RecordingStatus"):
        return "record.done"  # the <Record> action: the caller left a message
    call_status = form.get("CallStatus")
    if not call_status:
        raise MalformedPayload("none of DialCallStatus, RecordingUrl, CallStatus")
    return f"call.{call_status}"


def classify_recording(form: Mapping[str, str]) -> str:
    recording_status = form.get("RecordingStatus")
    if not recording_status:
        raise MalformedPayload("RecordingStatus is missing")
    return f"recording.{recording_status}"


# --- handlers ------------------------------------------------------------------------------


async def on_incoming_call(
    inbox: TwilioInbox, request: web.Request, form: MultiDict[str]
) -> web.Response:
    """The screen-pop, then the TwiML: greeting, agents ringing, else voicemail."""
    settings = inbox.settings
    call_sid = required(form, "CallSid")
    caller = phone(inbox, required(form, "From", "Caller"))
    if caller is not None:
        # The screen-pop is best effort: the caller is answered even when it fails.
        try:
            await inbox.ctx.call_incoming(inbox.inbox_id, caller, call_sid)
        except Exception:
            inbox.ctx.logger.warning(
                "call screen-pop failed", exc_info=True, extra={"inbox": inbox.inbox_id}
            )
    response = VoiceResponse()
    if settings.greeting:
        response.say(settings.greeting, language=settings.voice_language)
    if settings.agent_numbers:
        dial = Dial(
            timeout=settings.ring_seconds,
            action=inbox.url("/voice/status"),
            method="POST",
            caller_id=caller.value if caller else None,
        )
        for number in settings.agent_numbers:
            dial.number(number)
        response.append(dial)
    elif settings.voicemail and caller is not None:
        _voicemail(inbox, response, caller)
    else:
        response.hangup()
        await _log_call_in_flight(inbox, form, call_sid, caller, "missed", None)
    return twiml(response)


def _voicemail(inbox: TwilioInbox, response: VoiceResponse, caller: IdentityRef) -> None:
    """Append the voicemail prompt and recording to `response`."""
    settings = inbox.settings
    if settings.voicemail_prompt:
        response.say(settings.voicemail_prompt, language=settings.voice_language)
    # The recording callback carries no caller, so its URL names them (Twilio
    # signs the full URL, query included, so it cannot be altered).
    recording_url = (
        inbox.url("/voice/recording") + "?" + urllib.parse.urlencode({"caller": caller.value})
    )
    response.record(
        action=inbox.url("/voice/status"),
        method="POST",
        max_length=settings.voicemail_max_seconds,
        play_beep=True,
        recording_status_callback=recording_url,
        recording_status_callback_method="POST",
        recording_status_callback_event="completed",
    )
    response.hangup()  # reached when the caller said nothing


async def on_dial(inbox: TwilioInbox, request: web.Request, form: MultiDict[str]) -> web.Response:
    """The `<Dial>` action: the call answered (hang up) or missed (voicemail)."""
    call_sid = required(form, "CallSid")
    caller = phone(inbox, first(form, "From", "Caller"))
    answered = form["DialCallStatus"] in ("completed", "answered")
    response = VoiceResponse()
    if answered:
        seconds = duration(form.get("DialCallDuration"))
        await _log_call_in_flight(inbox, form, call_sid, caller, "completed", seconds)
        response.hangup()
    else:
        await _log_call_in_flight(inbox, form, call_sid, caller, "missed", None)
        if inbox.settings.voicemail and caller is not None:
            _voicemail(inbox, response, caller)
        else:
            response.hangup()
    return twiml(response)


async def on_record_done(
    inbox: TwilioInbox, request: web.Request, form: MultiDict[str]
) -> web.Response:
    """The `<Record>` action. Voicemail is only offered when nobody answered: the
    call was missed. The recording itself arrives on /voice/recording."""
    call_sid = required(form, "CallSid")
    caller = phone(inbox, first(form, "From", "Caller"))
    await _log_call_in_flight(inbox, form, call_sid, caller, "missed", None)
    response = VoiceResponse()
    response.hangup()
    return twiml(response)


async def on_call_status(
    inbox: TwilioInbox, request: web.Request, form: MultiDict[str]
) -> web.Response:
    """The number's own call status callback: the call's final outcome."""
    call_sid = required(form, "CallSid")
    caller = phone(inbox, first(form, "From", "Caller"))
    if form["CallStatus"] == "completed" and inbox.settings.agent_numbers:
        outcome: Literal["completed", "missed"] = "completed"
        seconds = duration(form.get("CallDuration"))
    else:
        # busy, no-answer, failed, canceled; or completed with no agent to answer.
        outcome, seconds = "missed", None
    await _log_call(inbox, form, call_sid, caller, outcome, seconds)
    return empty()


async def on_recording(
    inbox: TwilioInbox, request: web.Request, form: MultiDict[str]
) -> web.Response:
    """The recording status callback: a voicemail in the caller's conversation."""
    recording_sid = required(form, "RecordingSid")
    call_sid = required(form, "CallSid")
    recording_url = required(form, "RecordingUrl")
    caller = phone(inbox, request.query.get("caller", ""))
    if caller is None:
        raise MalformedPayload("the recording callback URL names no caller")
    voicemail = InboundVoicemail(
        inbox=inbox.inbox_id,
        medium="voice",
        provider_id=recording_sid,
        sender=caller,
        call=CallInfo(
            direction="in",
            status="missed",
            duration=duration(form.get("RecordingDuration")),
            recording_url=recording_url,
            call_id=call_sid,
        ),
    )
    await inbox.ctx.ingest([voicemail])
    return empty()


# --- the call's record ---------------------------------------------------------------------


async def _log_call(
    inbox: TwilioInbox,
    form: Mapping[str, str],
    call_sid: str,
    caller: IdentityRef | None,
    outcome: Literal["completed", "missed"],
    seconds: int | None,
) -> None:
    """Store the call (once per CallSid, whichever callback comes first) and text
    a missed caller when this is the first word of that call."""
    if caller is None:
        log_ignored(inbox, "call", "the caller withheld their number")
        return
    call = InboundCall(
        inbox=inbox.inbox_id,
        medium="voice",
        provider_id=call_sid,
        sender=caller,
        call=CallInfo(direction="in", status=outcome, duration=seconds, call_id=call_sid),
        extra=extra(form, CALL_EXTRA),
    )
    (result,) = await inbox.ctx.ingest([call])
    if outcome == "missed" and not result.duplicate:
        await _text_missed_caller(inbox, caller, call_sid)


async def _log_call_in_flight(
    inbox: TwilioInbox,
    form: Mapping[str, str],
    call_sid: str,
    caller: IdentityRef | None,
    outcome: Literal["completed", "missed"],
    seconds: int | None,
) -> None:
    """`_log_call` during a live call, whose TwiML answer must not fail.

    Twilio does not retry a verb's action URL: a 5xx would play an error to the
    caller and lose the voicemail too. So a store outage is logged and the call
    goes on; the number's status callback, when set, records the call later.
    """
    try:
        await _log_call(inbox, form, call_sid, caller, outcome, seconds)
    except StoreUnavailable:
        inbox.ctx.logger.error(
            "call not recorded: the store is unavailable", extra={"inbox": inbox.inbox_id}
        )


async def _text_missed_caller(inbox: TwilioInbox, caller: IdentityRef, call_sid: str) -> None:
    if not inbox.settings.missed_call_sms:
        return
    try:
        await inbox.ctx.send_text(
            inbox.inbox_id,
            "sms",
            caller,
            inbox.settings.missed_call_sms,
            key=f"{call_sid}:missed-call-sms",
        )
    except Exception:
        # At most once: a retry of the callback is a duplicate and sends nothing.
        inbox.ctx.logger.warning(
            "missed-call text not queued", exc_info=True, extra={"inbox": inbox.inbox_id}
        )


# --- the room's tables -------------------------------------------------------------------------

ROUTES: dict[str, Classifier] = {
    "/voice": classify_incoming,
    "/voice/status": classify_call_status,
    "/voice/recording": classify_recording,
}

# Every event type of these routes and its handler; None: known, acknowledged and
# logged as ignored.
EVENTS: dict[str, Handler | None] = {
    # /voice
    "voice.incoming": on_incoming_call,
    # /voice/status: the <Dial> action
    "dial.completed": on_dial,
    "dial.answered": on_dial,
    "dial.busy": on_dial,
    "dial.no-answer": on_dial,
    "dial.failed": on_dial,
    "dial.canceled": on_dial,
    # /voice/status: the <Record> action
    "record.done": on_record_done,
    # /voice/status: the number's call status callback
    "call.queued": None,
    "call.initiated": None,
    "call.ringing": None,
    "call.in-progress": None,
    "call.completed": on_call_status,
    "call.busy": on_call_status,
    "call.no-answer": on_call_status,
    "call.failed": on_call_status,
    "call.canceled": on_call_status,
    # /voice/recording
    "recording.completed": on_recording,
    "recording.in-progress": None,
    "recording.absent": None,  # nothing was said
    "recording.failed": None,
}

# What an ignored event is answered, by its family (the event type before the dot):
# TwiML on the routes a live call waits on, an empty body on the callbacks.
ACKNOWLEDGE: dict[str, Acknowledge] = {
    "voice": empty_twiml,
    "dial": empty_twiml,
    "record": empty_twiml,
    "call": empty_twiml,
    "recording": empty,
}
