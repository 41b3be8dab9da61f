"""A WhatsApp inbox's settings: the phone number, the Graph API's credentials and
the Meta app's webhook secrets, its sending pace and its body limit."""

from __future__ import annotations

from pydantic import Field, field_validator

from channels.base import ChannelSettings


class WhatsAppSettings(ChannelSettings):
    # The business phone number's id (WhatsApp Manager > API setup), not the number.
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    # A system-user access token with whatsapp_business_messaging.
    access_token: str = Field(min_length=1, json_schema_extra={"secret": True})
    # The Meta app's secret: Meta signs every notification with it.
    app_secret: str = Field(min_length=8, json_schema_extra={"secret": True})
    # The token typed into the app's webhook settings; Meta echoes it on verification.
    verify_token: str = Field(min_length=8, json_schema_extra={"secret": True})
    api_base: str = "https://graph.facebook.com/v21.0"
    # The WhatsApp Business Account's id (optional): its approved templates are
    # listed to agents (GET /api/inboxes/{id}/templates).
    business_account_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    # Messages per second for this phone number (Cloud API: 80 by default, up to 1000).
    rate: float = Field(default=80.0, gt=0, le=1000)
    # Larger notification bodies are refused (413) before they are parsed.
    max_body_bytes: int = Field(default=1024 * 1024, ge=16 * 1024, le=16 * 1024 * 1024)

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")
