"""The providers' side of the sandbox: one loopback HTTP server with the REST APIs
the adapters call, and one loopback SMTP server the e-mail inboxes send through.

- Twilio: `POST /twilio/2010-04-01/Accounts/{sid}/Messages.json` (basic auth with
  the account SID and auth token), answered 201 with the message resource; then
  the `StatusCallback` it named gets `sent` and `delivered`, signed with
  `X-Twilio-Signature`.
- Telegram: `/telegram/bot{token}/{method}` (sendMessage, the send* methods for
  files, getMe, setWebhook, deleteWebhook, getWebhookInfo, answerCallbackQuery,
  getFile), answered `{"ok": true, "result": ...}`. The Bot API reports no
  delivery, so the hub's message stays `sent`; the customer's view shows it
  delivered.
- WhatsApp Cloud: `POST /whatsapp/{version}/{phone_number_id}/messages` (Bearer
  token), answered with the `wamid`; then `sent` and `delivered` statuses are
  posted to the inbox's webhook, signed with `X-Hub-Signature-256`.
- E-mail: an aiosmtpd server; every mail accepted is followed by a delivery
  status notification (RFC 3464, `Action: delivered`) sent back to the inbox
  (its SMTP receiver, or its inbound-parse webhook).
- `GET /recordings/{name}`: a short tone, the recording of a sandbox voicemail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import itertools
import json
import math
import secrets
import socket
import struct
import time
import wave
from email import policy
from email.parser import BytesParser
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope, Session

from channels.email import EmailSettings
from channels.telegram import TelegramSettings
from channels.twilio import TwilioSettings
from channels.whatsapp import WhatsAppSettings
from hub.sandbox.wire import new_wamid, whatsapp_notification

if TYPE_CHECKING:
    from hub.sandbox.core import Sandbox

SEND_METHODS: dict[str, str | None] = {
    "sendMessage": None,
    "sendPhoto": "photo",
    "sendDocument": "document",
    "sendVideo": "video",
    "sendAudio": "audio",
    "sendVoice": "voice",
    "sendAnimation": "animation",
    "sendSticker": "sticker",
}
BOT_ID = 7000000001


def _tg_ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _tg_error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": status, "description": description}, status=status
    )


def _twilio_error(code: int, message: str, status: int = 400) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


def _graph_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "fbtrace_id": secrets.token_urlsafe(12),
            }
        },
        status=status,
    )


def tone_wav(seconds: float = 1.5, rate: int = 8000) -> bytes:
    """A 440 Hz tone, 16-bit mono PCM: the sandbox's voicemail recording."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


class _SinkHandler:
    """aiosmtpd hooks of the sandbox's SMTP server: take every mail from an inbox."""

    def __init__(self, simulators: Simulators) -> None:
        self.simulators = simulators

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        return await self.simulators.mail_received(
            envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""
        )


class Simulators:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.runner: web.AppRunner | None = None
        self.smtp: asyncio.Server | None = None
        self._message_ids: itertools.count[int] = itertools.count(100)
        self._tone: bytes | None = None
        self.webhooks: dict[str, dict[str, Any]] = {}  # telegram inbox -> setWebhook params

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, http_socket: socket.socket, smtp_socket: socket.socket) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/twilio/2010-04-01/Accounts/{sid}/Messages.json", self.twilio_send)
        app.router.add_route("*", "/telegram/bot{token}/{method}", self.telegram)
        app.router.add_post("/whatsapp/{version}/{phone_number_id}/messages", self.whatsapp_send)
        app.router.add_get("/recordings/{name}", self.recording)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, http_socket).start()
        loop = asyncio.get_running_loop()
        handler = _SinkHandler(self)
        self.smtp = await loop.create_server(
            lambda: SMTPProtocol(
                handler,
                hostname="smtp.sandbox.invalid",
                ident="hub sandbox",
                enable_SMTPUTF8=True,
                data_size_limit=32 * 1024 * 1024,
                loop=loop,
            ),
            sock=smtp_socket,
        )

    async def stop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.smtp.wait_closed(), timeout=2)
        if self.runner is not None:
            await self.runner.cleanup()

    async def recording(self, request: web.Request) -> web.Response:
        if self._tone is None:
            self._tone = tone_wav()
        return web.Response(body=self._tone, content_type="audio/wav")

    # -- Twilio --------------------------------------------------------------------------

    def _twilio_inbox(self, request: web.Request) -> tuple[str, TwilioSettings] | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return None
        for inbox in self.sandbox.inboxes.values():
            s = inbox.settings
            if (
                isinstance(s, TwilioSettings)
                and s.account_sid == request.match_info["sid"] == user
                and hmac.compare_digest(s.auth_token.encode(), password.encode())
            ):
                return inbox.id, s
        return None

    async def twilio_send(self, request: web.Request) -> web.Response:
        found = self._twilio_inbox(request)
        if found is None:
            return _twilio_error(20003, "Authenticate", 401)
        inbox, settings = found
        form = await request.post()
        to, sender = str(form.get("To") or ""), str(form.get("From") or "")
        body = str(form.get("Body") or "")
        media = [str(m) for m in form.getall("MediaUrl", [])]
        if not to:
            return _twilio_error(21604, "A 'To' phone number is required.")
        if not sender:
            return _twilio_error(21603, "A 'From' phone number is required.")
        if not (body or media or form.get("ContentSid")):
            return _twilio_error(21619, "A text message body or media url must be specified.")
        whatsapp = to.lower().startswith("whatsapp:")
        own = f"whatsapp:{settings.whatsapp_number}" if whatsapp else settings.number
        if sender != own:
            return _twilio_error(21606, "The From phone number is not a valid number of yours.")
        line = self.sandbox.line_for(inbox, "whatsapp" if whatsapp else "sms")
        if line is None:
            return _twilio_error(21606, "The From phone number is not a valid number of yours.")
        sid = f"SM{secrets.token_hex(16)}"
        text = body
        content_sid = form.get("ContentSid")
        if isinstance(content_sid, str) and content_sid:
            text = text or f"[template {content_sid}]"
        for url in media:
            text += f"\n[media] {url}"
        address = to.split(":", 1)[1] if whatsapp else to
        entry = self.sandbox.outbound(line, address, text.strip(), provider_id=sid)
        callback = str(form.get("StatusCallback") or "")
        if callback:
            params = {
                "SmsSid": sid,
                "To": to,
                "MessageSid": sid,
                "AccountSid": settings.account_sid,
                "From": sender,
                "ApiVersion": "2010-04-01",
            }
            self.sandbox.spawn(
                self._report(
                    entry,
                    [
                        self._twilio_status(inbox, callback, params, s)
                        for s in ("sent", "delivered")
                    ],
                )
            )
        else:
            entry.status = "delivered"
        now = formatdate(usegmt=True)
        path = f"/2010-04-01/Accounts/{settings.account_sid}/Messages/{sid}"
        return web.json_response(
            {
                "account_sid": settings.account_sid,
                "api_version": "2010-04-01",
                "body": body,
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": sender,
                "messaging_service_sid": None,
                "num_media": str(len(media)),
                "num_segments": "1",
                "price": None,
                "price_unit": "USD",
                "sid": sid,
                "status": "queued",
                "subresource_uris": {"media": f"{path}/Media.json"},
                "to": to,
                "uri": f"{path}.json",
            },
            status=201,
        )

    def _twilio_status(self, inbox: str, callback: str, params: dict[str, str], status: str) -> Any:
        async def post() -> tuple[int, str]:
            return await self.sandbox.post_twilio(
                inbox, callback, {**params, "SmsStatus": status, "MessageStatus": status}
            )

        return post

    async def _report(self, entry: Any, steps: list[Any]) -> None:
        """Post each status callback after the configured delay; the customer's view
        shows `delivered` once the hub took the last one."""
        delay = self.sandbox.config.delivery_delay
        for step in steps:
            await asyncio.sleep(delay / len(steps))
            status, answer = await step()
            if not 200 <= status < 300:
                entry.error = f"delivery callback: the hub answered {status}: {answer}"
                return
        entry.status = "delivered"

    # -- Telegram ------------------------------------------------------------------------

    async def telegram(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        inbox = next(
            (
                i.id
                for i in self.sandbox.inboxes.values()
                if isinstance(i.settings, TelegramSettings)
                and hmac.compare_digest(i.settings.token.encode(), token.encode())
            ),
            None,
        )
        if inbox is None:
            return _tg_error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await telegram_params(request)
        if method in SEND_METHODS:
            return self._telegram_send(inbox, method, params)
        if method == "getMe":
            return _tg_ok(_bot_user())
        if method == "setWebhook":
            if not params.get("url"):
                return _tg_error(400, "Bad Request: bad webhook: URL is empty")
            self.webhooks[inbox] = dict(params)
            return _tg_ok(True, "Webhook was set")
        if method == "deleteWebhook":
            self.webhooks.pop(inbox, None)
            return _tg_ok(True, "Webhook was deleted")
        if method == "getWebhookInfo":
            hook = self.webhooks.get(inbox, {})
            return _tg_ok(
                {
                    "url": hook.get("url", ""),
                    "has_custom_certificate": False,
                    "pending_update_count": 0,
                }
            )
        if method == "answerCallbackQuery":
            return _tg_ok(True)
        if method == "getFile":
            file_id = str(params.get("file_id") or "")
            if not file_id:
                return _tg_error(400, "Bad Request: invalid file_id")
            return _tg_ok(
                {"file_id": file_id, "file_unique_id": file_id[-12:], "file_path": f"f/{file_id}"}
            )
        return _tg_error(404, "Not Found")

    def _telegram_send(self, inbox: str, method: str, params: dict[str, Any]) -> web.Response:
        try:
            chat_id = int(params.get("chat_id", ""))
        except (TypeError, ValueError):
            return _tg_error(400, "Bad Request: chat_id is empty")
        file_field = SEND_METHODS[method]
        if file_field is None and not params.get("text"):
            return _tg_error(400, "Bad Request: message text is empty")
        if file_field is not None and not params.get(file_field):
            return _tg_error(400, f"Bad Request: there is no {file_field} in the request")
        line = self.sandbox.line_for(inbox, "telegram")
        if line is None or chat_id <= 0:
            return _tg_error(400, "Bad Request: chat not found")
        message_id = next(self._message_ids)
        text = str(params.get("text") or params.get("caption") or "")
        if file_field is not None:
            text = (text + f"\n[{file_field}] {params.get(file_field)}").strip()
        markup = params.get("reply_markup")
        if isinstance(markup, dict):
            titles = [
                str(button.get("text", ""))
                for row in markup.get("inline_keyboard", [])
                for button in row
                if isinstance(button, dict)
            ]
            if titles:
                text += "\n" + " ".join(f"[{t}]" for t in titles)
        entry = self.sandbox.outbound(
            line, f"+{chat_id}", text, provider_id=f"{chat_id}:{message_id}"
        )

        async def shown() -> None:
            await asyncio.sleep(self.sandbox.config.delivery_delay)
            entry.status = "delivered"

        self.sandbox.spawn(shown())
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": {
                k: v
                for k, v in _bot_user().items()
                if k in ("id", "is_bot", "first_name", "username")
            },
            "chat": {"id": chat_id, "type": "private", "first_name": "Customer"},
            "date": int(time.time()),
        }
        if file_field is None:
            message["text"] = params["text"]
        else:
            file_id = f"BQACAgIAAxkBAAI{message_id:08d}"
            unique = f"AgAD{message_id:08d}"
            if file_field == "photo":
                message["photo"] = [
                    {"file_id": file_id, "file_unique_id": unique, "width": 800, "height": 800}
                ]
            elif file_field in ("video", "animation"):
                message[file_field] = {
                    "file_id": file_id,
                    "file_unique_id": unique,
                    "width": 640,
                    "height": 360,
                    "duration": 1,
                }
            elif file_field in ("audio", "voice"):
                message[file_field] = {"file_id": file_id, "file_unique_id": unique, "duration": 1}
            elif file_field == "sticker":
                message[file_field] = {
                    "file_id": file_id,
                    "file_unique_id": unique,
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                }
            else:
                message[file_field] = {"file_id": file_id, "file_unique_id": unique}
            if params.get("caption"):
                message["caption"] = params["caption"]
        if isinstance(markup, dict):
            message["reply_markup"] = markup
        return _tg_ok(message)

    # -- WhatsApp Cloud ------------------------------------------------------------------

    async def whatsapp_send(self, request: web.Request) -> web.Response:

        phone_number_id = request.match_info["phone_number_id"]
        found = next(
            (
                i
                for i in self.sandbox.inboxes.values()
                if isinstance(i.settings, WhatsAppSettings)
                and i.settings.phone_number_id == phone_number_id
            ),
            None,
        )
        given = request.headers.get("Authorization", "")
        if found is None:
            return _graph_error(
                400,
                100,
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist.",
            )
        settings = found.settings
        assert isinstance(settings, WhatsAppSettings)
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.access_token}".encode()):
            return _graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _graph_error(400, 100, "The body is not JSON.")
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return _graph_error(400, 100, "(#100) The parameter messaging_product is required.")
        digits = str(body.get("to") or "").lstrip("+")
        if not digits.isdigit():
            return _graph_error(400, 100, "(#100) The parameter to is required.")
        text = _whatsapp_text(body)
        if text is None:
            return _graph_error(400, 100, "(#100) Param type is invalid.")
        line = self.sandbox.line_for(found.id, "whatsapp")
        assert line is not None
        wamid = new_wamid(digits)
        entry = self.sandbox.outbound(line, f"+{digits}", text, provider_id=wamid)
        inbox = found.id

        def status_step(status: str) -> Any:
            async def post() -> tuple[int, str]:
                value = {
                    "messaging_product": "whatsapp",
                    "metadata": {
                        "display_phone_number": line.business.lstrip("+"),
                        "phone_number_id": phone_number_id,
                    },
                    "statuses": [
                        {
                            "id": wamid,
                            "status": status,
                            "timestamp": str(int(time.time())),
                            "recipient_id": digits,
                            "conversation": {
                                "id": secrets.token_hex(16),
                                "origin": {"type": "service"},
                            },
                            "pricing": {
                                "billable": False,
                                "pricing_model": "PMP",
                                "category": "service",
                            },
                        }
                    ],
                }
                return await self.sandbox.post_whatsapp(inbox, whatsapp_notification(value))

            return post

        self.sandbox.spawn(self._report(entry, [status_step("sent"), status_step("delivered")]))
        message: dict[str, Any] = {"id": wamid}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": str(body.get("to")), "wa_id": digits}],
                "messages": [message],
            }
        )

    # -- e-mail --------------------------------------------------------------------------

    async def mail_received(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        inbox = next(
            (
                i
                for i in self.sandbox.inboxes.values()
                if isinstance(i.settings, EmailSettings)
                and i.settings.address == mail_from.strip().lower()
            ),
            None,
        )
        if inbox is None:
            return "550 5.7.1 Sender not allowed: not an address of a sandbox inbox"
        line = self.sandbox.line_for(inbox.id, "email")
        assert line is not None
        message = BytesParser(policy=policy.default).parsebytes(raw)
        message_id = str(message.get("Message-ID", "")).strip().strip("<>")
        subject = str(message.get("Subject", "")) or None
        body = message.get_body(("plain",))
        text = ""
        if body is not None:
            with contextlib.suppress(LookupError, ValueError):
                text = str(body.get_content())  # type: ignore[attr-defined]
        for part in message.iter_attachments():
            text += f"\n[attachment] {part.get_filename() or 'file'}"
        for rcpt in rcpt_tos:
            address = parseaddr(rcpt)[1].lower()
            entry = self.sandbox.outbound(
                line,
                address,
                text.strip(),
                provider_id=message_id or make_msgid().strip("<>"),
                kind="email",
                subject=subject,
            )
            thread = self.sandbox.thread(line, address)
            if message_id:
                thread.last_message_id = message_id
            self.sandbox.spawn(self._dsn(inbox.id, entry, address, message))
        return "250 2.0.0 OK: queued by the sandbox"

    async def _dsn(self, inbox: str, entry: Any, recipient: str, original: Any) -> None:
        settings = self.sandbox.inboxes[inbox].settings
        assert isinstance(settings, EmailSettings)
        await asyncio.sleep(self.sandbox.config.delivery_delay)
        boundary = "sandbox-" + secrets.token_hex(8)
        headers = "".join(
            f"{name}: {original[name]}\r\n"
            for name in ("Date", "From", "To", "Subject", "Message-ID")
            if original[name] is not None
        )
        dsn = (
            f"From: Mail Delivery System <mailer-daemon@sandbox.invalid>\r\n"
            f"To: {settings.address}\r\n"
            f"Subject: Delivery Status Notification (Success)\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            f"Message-ID: {make_msgid(domain='sandbox.invalid')}\r\n"
            f"Auto-Submitted: auto-replied\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f' boundary="{boundary}"\r\n'
            f"\r\n"
            f"--{boundary}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"\r\n"
            f"Your message was delivered to {recipient}.\r\n"
            f"\r\n"
            f"--{boundary}\r\n"
            f"Content-Type: message/delivery-status\r\n"
            f"\r\n"
            f"Reporting-MTA: dns; smtp.sandbox.invalid\r\n"
            f"\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\n"
            f"Action: delivered\r\n"
            f"Status: 2.0.0\r\n"
            f"\r\n"
            f"--{boundary}\r\n"
            f"Content-Type: text/rfc822-headers\r\n"
            f"\r\n"
            f"{headers}"
            f"\r\n"
            f"--{boundary}--\r\n"
        ).encode()
        status, answer = await self.sandbox.mail_to_hub(inbox, dsn, "")
        if 200 <= status < 300:
            entry.status = "delivered"
        else:
            entry.error = f"delivery report: the hub answered {status}: {answer}"


def _bot_user() -> dict[str, Any]:
    return {
        "id": BOT_ID,
        "is_bot": True,
        "first_name": "Sandbox Support",
        "username": "sandbox_support_bot",
        "can_join_groups": False,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
    }


async def telegram_params(request: web.Request) -> dict[str, Any]:
    """A Bot API call's parameters from the query, a JSON body or a form."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
    elif request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            params[key] = value if isinstance(value, str) else getattr(value, "filename", "file")
    for key in ("reply_markup", "allowed_updates"):
        if isinstance(params.get(key), str):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params


def _whatsapp_text(body: dict[str, Any]) -> str | None:
    """What the customer's WhatsApp shows for a Graph send (None: a type we do not know)."""
    kind = body.get("type", "text")
    part = body.get(kind)
    if not isinstance(part, dict):
        return None
    if kind == "text":
        return str(part.get("body") or "")
    if kind == "template":
        return f"[template {part.get('name', '?')}]"
    if kind in ("image", "video", "document", "audio", "sticker"):
        caption = str(part.get("caption") or "")
        return (caption + f"\n[{kind}] {part.get('link') or part.get('id') or ''}").strip()
    if kind == "interactive":
        text = str((part.get("body") or {}).get("text") or "")
        action = part.get("action") or {}
        titles = [
            str((b.get("reply") or {}).get("title", ""))
            for b in action.get("buttons", [])
            if isinstance(b, dict)
        ]
        for section in action.get("sections", []):
            titles += [str(r.get("title", "")) for r in section.get("rows", [])]
        return (text + "\n" + " ".join(f"[{t}]" for t in titles if t)).strip()
    if kind == "reaction":
        return str(part.get("emoji") or "")
    if kind == "location":
        return f"[location] {part.get('latitude')}, {part.get('longitude')}"
    return None
