"""The keys of a `channel = "twilio"` inbox."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from channels.base import ChannelSettings

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


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
    # Twilio's Content API (the WhatsApp templates). Unset: content.twilio.com, or
    # `api_base` itself when that is not Twilio's (a proxy or a test double).
    content_api_base: str | None = None
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

    @field_validator("api_base", "content_api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @property
    def content_base(self) -> str:
        """Where the Content API is served."""
        if self.content_api_base:
            return self.content_api_base
        if self.api_base == "https://api.twilio.com":
            return "https://content.twilio.com"
        return self.api_base

    @model_validator(mode="after")
    def _sms_needs_a_number(self) -> TwilioSettings:
        if self.missed_call_sms and not self.number:
            raise ValueError("missed_call_sms needs `number` (the SMS sender)")
        return self
