"""A tiny channel used to test the hub core before and beside the real channels.

Inbound: `POST /webhooks/testchan/{inbox}` with a form (`MessageSid`, `From`,
`Body`, optional `ProfileName`, `MediaUrl0`/`MediaContentType0`), signed with
`X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. Status callbacks:
`POST .../status` with `MessageSid`, `MessageStatus`, optional `ErrorCode`.
Outbound: `POST {api_base}/messages` with JSON `{"to", "text"}`; the fake provider
in `fakeprovider.py` answers like a real one (200 with an id, 429, 5xx, 4xx).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import datetime

import aiohttp
from aiohttp import web
from pydantic import Field, ValidationError

from channels import (
    ChannelAdapter,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    TransientSendError,
    register_channel,
)
from channels.media import download
from hub.addresses import InvalidIdentity, phone_ref
from hub.model import (
    Attachment,
    InboundMedia,
    InboundText,
    OutboundMessage,
    SendResult,
    StatusUpdate,
)
from hub.ports import FetchedMedia


class TestChannelSettings(ChannelSettings):
    secret: str = Field(min_length=8, json_schema_extra={"secret": True})
    api_base: str = "http://127.0.0.1:9"
    medium: str = "sms"
    rate: float = 50.0
    burst: int = 1
    per_recipient: float | None = None
    # When set, replies are refused with this reason (a channel with a window).
    refuse_replies: str = ""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


class TestChannel(ChannelAdapter):
    __test__ = False  # not a pytest class
    name = "testchan"
    Settings = TestChannelSettings
    settings: TestChannelSettings

    # A test may set `hold` to keep parsed webhooks waiting before they reach
    # ingest (requests in flight at a moment of its choosing); `held` counts them.
    hold: asyncio.Event | None = None
    held: int = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.inbound), web.post("/status", self.status)]

    def rate_limit(self) -> RateLimit:
        return RateLimit(
            self.settings.rate, self.settings.burst, per_recipient=self.settings.per_recipient
        )

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        return self.settings.refuse_replies or None

    async def _verified_form(self, request: web.Request) -> dict[str, str]:
        body = await request.read()
        given = request.headers.get("X-Signature", "")
        if not hmac.compare_digest(given.encode(), sign(self.settings.secret, body).encode()):
            raise web.HTTPForbidden(text="bad signature")
        try:
            from urllib.parse import parse_qsl

            return dict(
                parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            )
        except (UnicodeDecodeError, ValueError):
            raise web.HTTPBadRequest(text="body is not a form") from None

    async def inbound(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        missing = [k for k in ("MessageSid", "From") if not form.get(k)]
        if missing:
            raise web.HTTPBadRequest(text=f"missing field(s): {', '.join(missing)}")
        try:
            sender = phone_ref(form["From"], self.ctx.default_region, form.get("ProfileName"))
            common = dict(
                inbox=self.inbox_id,
                medium=self.settings.medium,
                provider_id=form["MessageSid"],
                sender=sender,
                text=form.get("Body") or None,
            )
            event: InboundText | InboundMedia
            if form.get("MediaUrl0"):
                event = InboundMedia(
                    **common,
                    attachments=tuple(
                        Attachment(
                            url=form[f"MediaUrl{n}"], content_type=form.get(f"MediaContentType{n}")
                        )
                        for n in range(10)
                        if form.get(f"MediaUrl{n}")
                    ),
                )
            else:
                event = InboundText(**common)
        except (InvalidIdentity, ValidationError) as error:
            raise web.HTTPBadRequest(text=f"invalid payload: {error}") from None
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        (result,) = await self.ctx.ingest([event])
        return web.json_response(
            {"ok": True, "duplicate": result.duplicate, "id": result.message_id}
        )

    async def status(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        status = _STATUS.get(form.get("MessageStatus", ""))
        if not form.get("MessageSid") or status is None:
            raise web.HTTPBadRequest(text="MessageSid and a known MessageStatus are required")
        update = StatusUpdate(
            inbox=self.inbox_id,
            provider_id=form["MessageSid"],
            status=status,  # type: ignore[arg-type]
            error_code=form.get("ErrorCode") or None,
            error=form.get("ErrorMessage") or None,
        )
        await self.ctx.record_status([update])
        return web.Response(text="")

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """An inbound file: its `MediaUrl0`, downloaded as any adapter does."""
        return await download(self.ctx.http(), ref, max_bytes=max_bytes)

    async def send(self, message: OutboundMessage) -> SendResult:
        url = f"{self.settings.api_base}/messages"
        try:
            async with self.ctx.http().post(
                url,
                json={
                    "to": message.to,
                    "text": message.text,
                    "ref": message.id,
                    "attempt": message.attempt,
                },
            ) as response:
                payload = await response.json(content_type=None)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as error:
            raise TransientSendError(f"cannot connect: {error}", maybe_sent=False) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientSendError(f"request failed: {type(error).__name__}") from error
        if status == 200:
            return SendResult(provider_id=str(payload["id"]))
        code = str((payload or {}).get("code", status))
        reason = str((payload or {}).get("message", f"HTTP {status}"))
        if status == 429:
            raise TransientSendError(
                reason, code=code, retry_after=float(retry_after or 1), maybe_sent=False
            )
        if status >= 500:
            raise TransientSendError(reason, code=code)
        raise PermanentSendError(reason, code=code, opt_out=code == "unsubscribed")


register_channel(TestChannel)
