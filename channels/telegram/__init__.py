"""Telegram bots through the Bot API, with aiogram 3.

Inbound: Telegram POSTs one `Update` per request to `/webhooks/telegram/{inbox}`,
with the `secret_token` given to `setWebhook` in `X-Telegram-Bot-Api-Secret-Token`.
The body is parsed with aiogram's own `Update` model and dispatched by its kind
through `UPDATE_HANDLERS`; every other kind Telegram can send is listed in
`IGNORED_UPDATES` (acknowledged and logged, nothing written).

The package: `inbound` reads Updates into the hub's events, `outbound` sends
through the Bot API (pacing each part, classifying errors), `simulator` is a Bot
API server on loopback for tests and the sandbox; this module is the adapter.

Choices this module makes (docs/providers/telegram.md says the same for operators):
- Files arrive as `tg://file/<file_id>` references, not as download URLs: a Bot
  API download URL carries the bot token, and it expires after an hour. The hub's
  media fetcher calls `fetch_media` (getFile, then the download) after the webhook
  was answered and keeps the bytes; of a photo's sizes the largest is taken.
- An edited message is stored as a new message (provider id
  `<chat>:<message_id>:edit:<edit_date>`, `extra.edited = "true"`), so the agent sees
  the correction and the original stays as it was.
- A conversation's identity is the chat (`telegram:<chat id>`); a private chat's id is
  the user's id.

Outbound: aiogram's `Bot` pointed at `api_base`. The hub paces each inbox at `rate`
messages/s overall and `per_chat_rate` per chat; a 429 that still comes is honoured
(`retry_after`) and holds further sends to that chat until it has passed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import AiogramError
from aiogram.types import Message, Update
from aiogram.utils.token import TokenValidationError, validate_token
from aiohttp import web
from pydantic import Field, field_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    IgnoredEvent,
    PermanentSendError,
    RateLimit,
    supported_events,
)
from channels.media import download
from channels.telegram.inbound import (
    FILE_SCHEME,
    MEDIUM,
    MESSAGE_CONTENT,
    OPT_OUT_BY_STATUS,
    SECRET_HEADER,
    button_title,
    message_event,
    parse_update,
    person_name,
    plain,
    sender,
    update_kind,
)
from channels.telegram.outbound import BotSender, classify, keyboard
from channels.telegram.outbound import refuse_file as outbound_refuse_file
from hub.model import (
    ButtonReply,
    IdentityRef,
    InboundButton,
    InboundEvent,
    OutboundMessage,
    SendResult,
)
from hub.ports import FetchedMedia, FileRefusal, MediaFetchError, MediaTooLarge
from hub.ratelimit import KeyedRateLimiter, RateLimiter

# A Bot API call that takes longer is abandoned (well inside the dispatcher's lease).
REQUEST_TIMEOUT = 20.0
# Answering a button press happens inside the webhook request: keep it short.
CALLBACK_ANSWER_TIMEOUT = 5


class TelegramSettings(ChannelSettings):
    token: str = Field(json_schema_extra={"secret": True})
    secret_token: str = Field(json_schema_extra={"secret": True})
    api_base: str = "https://api.telegram.org"
    # Call setWebhook at start-up with public_url + /webhooks/telegram/{inbox}.
    register_webhook: bool = False
    rate: float = Field(default=30.0, gt=0)  # messages per second, the whole bot
    per_chat_rate: float = Field(default=1.0, gt=0)  # messages per second, one chat

    @field_validator("token")
    @classmethod
    def _bot_token(cls, value: str) -> str:
        try:
            validate_token(value)
        except TokenValidationError:
            raise ValueError(
                "not a bot token (expected <bot id>:<secret> from @BotFather)"
            ) from None
        return value

    @field_validator("secret_token")
    @classmethod
    def _webhook_secret(cls, value: str) -> str:
        if not 1 <= len(value) <= 256 or not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in value
        ):
            raise ValueError("must be 1-256 characters of A-Za-z0-9_- (Telegram's rule)")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://api.telegram.org")
        return value.rstrip("/")


UpdateHandler = Callable[["TelegramChannel", Update], Awaitable[None]]


class TelegramChannel(ChannelAdapter):
    name = "telegram"
    Settings = TelegramSettings
    simulator = "channels.telegram.simulator:FakeTelegram"
    settings: TelegramSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bot: Bot | None = None
        self.outbound = BotSender(self.settings.rate, self.settings.per_chat_rate)

    # -- life cycle --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.webhook)]

    def rate_limit(self) -> RateLimit:
        return RateLimit(
            per_second=self.settings.rate, burst=1, per_recipient=self.settings.per_chat_rate
        )

    def share_pacing(self, overall: RateLimiter, per_recipient: KeyedRateLimiter | None) -> None:
        self.outbound.share_pacing(overall, per_recipient)

    async def start(self) -> None:
        for key in ("token", "secret_token"):
            if not getattr(self.settings, key, None):
                raise ValueError(f"{self.inbox_id}: {key} is required for a Telegram inbox")
        session = AiohttpSession(
            api=TelegramAPIServer.from_base(self.settings.api_base), timeout=REQUEST_TIMEOUT
        )
        self.bot = Bot(self.settings.token, session=session)
        if self.settings.register_webhook:
            await self.register_webhook()

    async def close(self) -> None:
        if self.bot is not None:
            await self.bot.session.close()
            self.bot = None

    @property
    def webhook_url(self) -> str:
        return self.ctx.public_url.rstrip("/") + self.webhook_prefix

    async def register_webhook(self) -> bool:
        """Point the bot's webhook at this inbox, with our secret and the kinds we handle.

        A failure is logged, not raised: the hub keeps serving its other inboxes and
        Telegram keeps the webhook it had.
        """
        bot = self._bot()
        try:
            await bot.set_webhook(
                url=self.webhook_url,
                secret_token=self.settings.secret_token,
                allowed_updates=sorted(SUPPORTED_EVENTS),
            )
        except (AiogramError, aiohttp.ClientError, TimeoutError) as error:
            self.ctx.logger.error(
                "telegram setWebhook failed",
                extra={"inbox": self.inbox_id, "url": self.webhook_url, "error": str(error)},
            )
            return False
        self.ctx.logger.info(
            "telegram webhook registered", extra={"inbox": self.inbox_id, "url": self.webhook_url}
        )
        return True

    def _bot(self) -> Bot:
        if self.bot is None:
            raise RuntimeError(f"{self.inbox_id}: the Telegram channel is not started")
        return self.bot

    # -- inbound -----------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.settings.secret_token.encode()):
            self.ctx.logger.warning(
                "telegram webhook with a wrong or missing secret token",
                extra={"inbox": self.inbox_id, "remote": request.remote},
            )
            raise web.HTTPForbidden(text="wrong secret token")
        update = parse_update(await request.read(), self.bot)
        kind = update_kind(update)
        handler = UPDATE_HANDLERS.get(kind)
        if handler is None:
            if kind not in IGNORED_UPDATES:
                # A kind nobody declared (newer than this code): logged louder.
                self.ctx.logger.warning(
                    "telegram update of an undeclared kind",
                    extra={"inbox": self.inbox_id, "update_id": update.update_id, "kind": kind},
                )
                raise IgnoredEvent(kind, "undeclared update kind")
            raise IgnoredEvent(kind)
        await handler(self, update)
        return web.json_response({"ok": True})

    def ignored_response(self, ignored: IgnoredEvent) -> web.StreamResponse:
        """Telegram is answered as for any update it need not retry."""
        return web.json_response({"ok": True})

    def _event(
        self, message: Message, provider_id: str, extra: dict[str, str]
    ) -> InboundEvent | None:
        return message_event(self.inbox_id, self.ctx.default_region, message, provider_id, extra)

    async def on_message(self, update: Update) -> None:
        message = update.message
        assert message is not None
        event = self._event(message, f"{message.chat.id}:{message.message_id}", {})
        if event is None:
            raise IgnoredEvent(f"message:{plain(message.content_type)}", "content not taken")
        await self.ctx.ingest([event])

    async def on_edited_message(self, update: Update) -> None:
        message = update.edited_message
        assert message is not None
        original = f"{message.chat.id}:{message.message_id}"
        # Unix seconds; an edit without one (never seen) falls back to the update id.
        stamp = message.edit_date if message.edit_date is not None else update.update_id
        event = self._event(
            message, f"{original}:edit:{stamp}", {"edited": "true", "edit_of": original}
        )
        if event is None:
            raise IgnoredEvent(f"edited_message:{plain(message.content_type)}", "content not taken")
        await self.ctx.ingest([event])

    async def on_callback_query(self, update: Update) -> None:
        query = update.callback_query
        assert query is not None
        if query.data is None:  # a game button: nothing for an agent
            raise IgnoredEvent("callback_query:game", "a game button")
        origin = query.message
        # A button under an inline-mode message has no chat: the user's own chat it is.
        chat_id = origin.chat.id if origin is not None else query.from_user.id
        who = (
            sender(origin.chat, query.from_user)
            if origin is not None
            else IdentityRef(kind="telegram", value=str(chat_id), name=person_name(query.from_user))
        )
        title = button_title(origin, query.data) if isinstance(origin, Message) else None
        extra = {"callback_query_id": query.id}
        if origin is not None:
            extra["button_message_id"] = str(origin.message_id)
        event = InboundButton(
            inbox=self.inbox_id,
            medium=MEDIUM,
            provider_id=f"{chat_id}:callback:{query.id}",
            sender=who,
            text=title or query.data,
            button=ButtonReply(payload=query.data, title=title),
            extra=extra,
        )
        (result,) = await self.ctx.ingest([event])
        if not result.duplicate:
            await self._answer_callback(query.id)

    async def _answer_callback(self, query_id: str) -> None:
        """Stop the spinner on the customer's button; failing that changes nothing stored."""
        try:
            await self._bot().answer_callback_query(
                callback_query_id=query_id, request_timeout=CALLBACK_ANSWER_TIMEOUT
            )
        except (AiogramError, aiohttp.ClientError, TimeoutError) as error:
            self.ctx.logger.warning(
                "telegram answerCallbackQuery failed",
                extra={"inbox": self.inbox_id, "error": str(error)},
            )

    async def on_my_chat_member(self, update: Update) -> None:
        change = update.my_chat_member
        assert change is not None
        status = plain(change.new_chat_member.status)
        opted_out = OPT_OUT_BY_STATUS.get(status)
        if opted_out is None:
            raise IgnoredEvent(f"my_chat_member:{status}", "no change of opt-out")
        ref = sender(change.chat, change.from_user)
        contact_id = await self.ctx.opt_out(ref, MEDIUM, opted_out)
        self.ctx.logger.info(
            "telegram chat opted out" if opted_out else "telegram chat opted back in",
            extra={"inbox": self.inbox_id, "contact_id": contact_id, "status": status},
        )

    # -- outbound ----------------------------------------------------------------------

    def refuse_file(
        self, medium: str | None, name: str | None, content_type: str, size: int
    ) -> FileRefusal | None:
        return outbound_refuse_file(content_type, size)

    def files_per_message(self, medium: str | None) -> int:
        return 1

    async def send(self, message: OutboundMessage) -> SendResult:
        uploads = {a.id: await self.ctx.outbound_file(a) for a in message.attachments if a.id}
        return await self.outbound.send(self._bot(), message, uploads)

    async def fetch_media(self, ref: str, max_bytes: int) -> FetchedMedia:
        """A received file (`tg://file/<file_id>`): getFile, then its download
        (the URL carries the bot token, so it is used here and never kept)."""
        file_id = ref[len(FILE_SCHEME) :] if ref.startswith(FILE_SCHEME) else ref
        try:
            found = await self._bot().get_file(file_id)
        except (AiogramError, aiohttp.ClientError, TimeoutError) as error:
            failed = classify(error)
            raise MediaFetchError(
                f"provider error: {failed.reason}", permanent=isinstance(failed, PermanentSendError)
            ) from None
        if found.file_size is not None and found.file_size > max_bytes:
            raise MediaTooLarge(found.file_size, max_bytes)
        if not found.file_path:
            raise MediaFetchError(
                "provider error: Telegram has no download for this file (over 20 MB?)",
                permanent=True,
            )
        url = self._bot().session.api.file_url(self.settings.token, found.file_path)
        return await download(self.ctx.http(), url, max_bytes=max_bytes)

    async def file_download_url(self, file_id: str) -> str:
        """Where to download a received file (a `tg://file/<file_id>` reference).

        The URL holds the bot token and expires after an hour: fetch it server-side
        when the file is opened, never store it or hand it to a browser.
        """
        bot = self._bot()
        if file_id.startswith(FILE_SCHEME):
            file_id = file_id[len(FILE_SCHEME) :]
        found = await bot.get_file(file_id)
        if not found.file_path:
            raise PermanentSendError("Telegram has no download for this file (over 20 MB?)")
        return bot.session.api.file_url(self.settings.token, found.file_path)


# -- the maps: what we take, what we knowingly leave ---------------------------------------

UPDATE_HANDLERS: dict[str, UpdateHandler] = {
    "message": TelegramChannel.on_message,
    "edited_message": TelegramChannel.on_edited_message,
    "callback_query": TelegramChannel.on_callback_query,
    "my_chat_member": TelegramChannel.on_my_chat_member,
}

# The kinds the webhook handles (and asks setWebhook for), read from the handler map.
SUPPORTED_EVENTS: tuple[str, ...] = supported_events(UPDATE_HANDLERS)

# Every other kind of Update the Bot API defines (aiogram's `Update` fields): known,
# acknowledged, logged as ignored. A test fails when aiogram knows a kind that is in
# neither map, so a new kind is a decision, not an accident.
IGNORED_UPDATES: frozenset[str] = frozenset(
    {
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "guest_message",
        "message_reaction",
        "message_reaction_count",
        "inline_query",
        "chosen_inline_result",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
        "managed_bot",
        "subscription",
        "stopped_message_generation",
    }
)


__all__ = [
    "IGNORED_UPDATES",
    "MESSAGE_CONTENT",
    "SECRET_HEADER",
    "SUPPORTED_EVENTS",
    "UPDATE_HANDLERS",
    "TelegramChannel",
    "TelegramSettings",
    "classify",
    "keyboard",
    "parse_update",
    "update_kind",
]
