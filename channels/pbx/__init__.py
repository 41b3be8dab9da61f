"""Any IP-PBX or telephony provider, through the hub's neutral call-event webhook.

`POST /webhooks/pbx/{inbox}` takes one JSON call event (CONTRACT.md), signed with
`X-Signature: sha256=<hex HMAC-SHA256 of the raw body with the inbox's secret>`:

    {"event": "call.started" | "call.answered" | "call.ended" | "call.missed"
              | "recording.ready",
     "call_id", "from", "to", "direction": "in" | "out",
     "duration"?, "recording_url"?, "agent"?, "at"?}

The customer is `from` on an incoming call and `to` on an outgoing one. A call
becomes one `call` message in the customer's `voice` conversation (provider id
`<call_id>:call`, so `call.ended` and `call.missed` of one call, and their
retries, are stored once) and its recording one `voicemail` message
(`<call_id>:recording`). `call.started` of an incoming call publishes
`call.incoming` at once (the agent's screen-pop). A missed incoming call can
send the caller an automatic SMS through another, SMS-capable inbox.

A phone line carries no text: replies are refused with a clear reason. `simulator`
posts these events the way a PBX would, for the sandbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    IgnoredEvent,
    MalformedPayload,
    PermanentSendError,
    json_object,
    supported_events,
    validation_message,
)
from channels.media import download
from channels.signing import verified_body
from hub.addresses import InvalidIdentity, phone_ref
from hub.model import (
    CallInfo,
    IdentityRef,
    InboundCall,
    InboundVoicemail,
    OutboundMessage,
    SendResult,
    utcnow,
)
from hub.ports import FetchedMedia

NO_TEXT_REASON = (
    "a phone line cannot carry a text reply: answer this caller from an SMS, "
    "WhatsApp or e-mail inbox"
)


class PbxSettings(ChannelSettings):
    # The HMAC key the PBX (or its relay) signs every event with.
    secret: str = Field(min_length=16, json_schema_extra={"secret": True})
    # Text of the automatic SMS to a caller whose incoming call was missed; empty: off.
    missed_call_sms: str = Field(default="", max_length=1600)
    # The inbox that sends that SMS (a Twilio or other SMS inbox of this hub): the
    # PBX itself sends no text.
    sms_inbox: str = ""
    # Larger requests are refused (413) before anything is parsed.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # Sent as `Authorization: Bearer <token>` when the hub downloads a recording
    # (`recording_url`); empty: the URL is fetched without credentials.
    recording_token: str = Field(default="", json_schema_extra={"secret": True})

    @model_validator(mode="after")
    def _sms_needs_an_inbox(self) -> PbxSettings:
        if self.missed_call_sms.strip() and not self.sms_inbox:
            raise ValueError(
                "missed_call_sms is set but sms_inbox is empty: name the SMS inbox that sends it"
            )
        return self


class PbxEvent(BaseModel):
    """One call event as the PBX sends it, validated at the edge."""

    # PBXs differ in whether numbers and ids are JSON strings or numbers; fields
    # outside the contract are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)

    event: str
    call_id: str = Field(min_length=1, max_length=256)
    from_: str = Field(alias="from", min_length=1, max_length=64)
    to: str = Field(min_length=1, max_length=64)
    direction: Literal["in", "out"]
    duration: int | None = Field(default=None, ge=0, le=7 * 24 * 3600)
    recording_url: str | None = Field(default=None, max_length=2048)
    agent: str | None = Field(default=None, max_length=256)
    at: datetime | None = None

    @field_validator("duration", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> Any:
        # Some PBXs report fractional seconds; the hub keeps whole ones.
        if isinstance(value, float) and 0 <= value < 1e12:  # finite: NaN and inf fail below
            return round(value)
        return value

    @field_validator("recording_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # a PBX without a zone reports UTC
        return value

    @property
    def customer_number(self) -> str:
        """The other party: the caller on an incoming call, the callee on an outgoing one."""
        return self.from_ if self.direction == "in" else self.to


Reply = dict[str, Any]
Handler = Callable[["PbxChannel", PbxEvent, IdentityRef], Awaitable[Reply]]


def _call_text(status: str, duration: int | None) -> str:
    """A one-line summary for the conversation list (the call itself is in `call`)."""
    if status == "missed":
        return "Missed call"
    if duration is None:
        return "Call"
    minutes, seconds = divmod(duration, 60)
    return f"Call, {minutes} min {seconds} s" if minutes else f"Call, {seconds} s"


class PbxChannel(ChannelAdapter):
    name = "pbx"
    Settings = PbxSettings
    simulator = "channels.pbx.simulator:FakePbx"
    settings: PbxSettings

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.webhook)]

    async def start(self) -> None:
        if not self.settings.secret:
            raise ValueError(f"{self.inbox_id}: secret is required to verify call events")

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        return NO_TEXT_REASON

    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(NO_TEXT_REASON, code="no_text")

    # -- the webhook ---------------------------------------------------------------

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """A call's recording (`recording_url`), fetched by the hub's media fetcher
        after the event was answered; with `recording_token` when set."""
        token = self.settings.recording_token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return await download(self.ctx.http(), ref, max_bytes=max_bytes, headers=headers)

    async def webhook(self, request: web.Request) -> web.Response:
        body = await verified_body(request, self.settings.secret, self.settings.max_body_bytes)
        payload = json_object(body)
        name = payload.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedPayload("event: a string is required")
        handler = self.EVENT_HANDLERS.get(name)
        if handler is None:
            raise IgnoredEvent(name, "unknown event")
        try:
            event = PbxEvent.model_validate(payload)
        except ValidationError as error:
            raise MalformedPayload(validation_message(error)) from None
        field = "from" if event.direction == "in" else "to"
        try:
            customer = phone_ref(event.customer_number, self.ctx.default_region)
        except InvalidIdentity as error:
            raise MalformedPayload(f"{field}: {error}") from None
        return web.json_response(await handler(self, event, customer))

    # -- one handler per event -----------------------------------------------------

    async def _call_started(self, event: PbxEvent, customer: IdentityRef) -> Reply:
        if event.direction == "out":
            raise IgnoredEvent(event.event, "outgoing call started")
        contact_id = await self.ctx.call_incoming(self.inbox_id, customer, event.call_id)
        return {"ok": True, "contact_id": contact_id}

    async def _call_answered(self, event: PbxEvent, customer: IdentityRef) -> Reply:
        # The call message is written once, when the call ends or is missed (with
        # the agent, who is on `call.ended` too): nothing to store yet.
        raise IgnoredEvent(event.event, "the call is logged when it ends")

    async def _call_ended(self, event: PbxEvent, customer: IdentityRef) -> Reply:
        return await self._log_call(event, customer, "completed")

    async def _call_missed(self, event: PbxEvent, customer: IdentityRef) -> Reply:
        reply = await self._log_call(event, customer, "missed")
        text = self.settings.missed_call_sms.strip()
        # Once per call: keyed by the call, so asking again on every retry (one
        # after a 503 included) queues it at most once. An outgoing call the
        # customer did not pick up gets no SMS.
        if text and event.direction == "in":
            try:
                # None when the caller opted out of SMS.
                reply["sms_id"] = await self.ctx.send_text(
                    self.settings.sms_inbox,
                    "sms",
                    customer,
                    text,
                    key=f"{event.call_id}:missed-call-sms",
                )
            except ValueError as error:
                # A configuration problem (no such inbox, one that refuses the
                # text): the call is logged and a PBX retry would not help.
                self.ctx.logger.warning(
                    "missed-call SMS not queued",
                    extra={
                        "inbox": self.inbox_id,
                        "sms_inbox": self.settings.sms_inbox,
                        "reason": str(error),
                    },
                )
                reply["sms_error"] = str(error)
        return reply

    async def _recording_ready(self, event: PbxEvent, customer: IdentityRef) -> Reply:
        if not event.recording_url:
            raise MalformedPayload("recording_url: required for recording.ready")
        voicemail = InboundVoicemail(
            inbox=self.inbox_id,
            medium="voice",
            provider_id=f"{event.call_id}:recording",
            sender=customer,
            text="Call recording",
            call=self._call_info(event, "completed"),
            extra=self._extra(event),
            received_at=event.at or utcnow(),
        )
        return await self._ingest(voicemail)

    EVENT_HANDLERS: ClassVar[dict[str, Handler]] = {
        "call.started": _call_started,
        "call.answered": _call_answered,
        "call.ended": _call_ended,
        "call.missed": _call_missed,
        "recording.ready": _recording_ready,
    }

    # -- helpers -------------------------------------------------------------------

    async def _log_call(
        self, event: PbxEvent, customer: IdentityRef, status: Literal["completed", "missed"]
    ) -> Reply:
        call = InboundCall(
            inbox=self.inbox_id,
            medium="voice",
            provider_id=f"{event.call_id}:call",
            sender=customer,
            text=_call_text(status, event.duration),
            call=self._call_info(event, status),
            extra=self._extra(event),
            received_at=event.at or utcnow(),
        )
        return await self._ingest(call)

    async def _ingest(self, message: InboundCall | InboundVoicemail) -> Reply:
        (result,) = await self.ctx.ingest([message])
        return {
            "ok": True,
            "message_id": result.message_id,
            "conversation_id": result.conversation_id,
            "duplicate": result.duplicate,
        }

    @staticmethod
    def _call_info(event: PbxEvent, status: Literal["completed", "missed"]) -> CallInfo:
        return CallInfo(
            direction=event.direction,
            status=status,
            duration=event.duration,
            recording_url=event.recording_url,
            call_id=event.call_id,
        )

    @staticmethod
    def _extra(event: PbxEvent) -> dict[str, str]:
        extra = {"from": event.from_, "to": event.to}
        if event.agent:
            extra["agent"] = event.agent
        return extra


# The events the webhook handles, read from the handler map.
SUPPORTED_EVENTS: frozenset[str] = frozenset(supported_events(PbxChannel.EVENT_HANDLERS))
