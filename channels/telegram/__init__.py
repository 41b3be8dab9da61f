"""Telegram bots through the Bot API, with aiogram 3.

Inbound: Telegram POSTs one `Update` per request to `/webhooks/telegram/{inbox}`,
with the `secret_token` given to `setWebhook` in `X-Telegram-Bot-Api-Secret-Token`.
The body is parsed with aiogram's own `Update` model and dispatched by its kind
through `UPDATE_HANDLERS`; every other kind Telegram can send is listed in
`IGNORED_UPDATES` (acknowledged and logged, nothing written).

Choices this module makes (docs/providers/telegram.md says the same for operators):
- Files are stored as `tg://file/<file_id>` references, not as download URLs: a Bot
  API download URL carries the bot token, and it expires after an hour. A media proxy
  resolves a reference with `file_download_url` when someone opens it.
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
import json
import mimetypes
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ContentType
from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    User,
)
from aiogram.utils.token import TokenValidationError, validate_token
from aiohttp import web
from pydantic import Field, ValidationError, field_validator

from channels.base import (
    ChannelAdapter,
    ChannelSettings,
    PermanentSendError,
    RateLimit,
    SendError,
    TransientSendError,
)
from hub.addresses import InvalidIdentity, normalize_phone
from hub.model import (
    Attachment,
    ButtonReply,
    IdentityRef,
    InboundButton,
    InboundEvent,
    InboundLocation,
    InboundMedia,
    InboundSharedContact,
    InboundText,
    Location,
    OutboundMessage,
    SendResult,
    SharedContact,
)
from hub.ratelimit import KeyedRateLimiter, RateLimiter, acquire_together

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
FILE_SCHEME = "tg://file/"
MEDIUM: Literal["telegram"] = "telegram"
# Bot API limits on what we send.
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64  # bytes
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
EventBuilder = Callable[["TelegramChannel", Message, dict[str, Any]], InboundEvent]


class TelegramChannel(ChannelAdapter):
    name = "telegram"
    Settings = TelegramSettings
    settings: TelegramSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bot: Bot | None = None
        # chat id -> monotonic time before which Telegram told us not to send there.
        self._held_until: dict[int, float] = {}
        # A message sent in parts (a long text and a file, several files) takes a
        # slot for each later part from these. Under a dispatcher they are its own
        # limiters (`share_pacing`) and the first part has its slot already;
        # without one the adapter paces every part itself.
        self._bot_pace = RateLimiter(self.settings.rate)
        self._chat_pace = KeyedRateLimiter(self.settings.per_chat_rate)
        self._first_part_paced = False

    # -- life cycle --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.webhook)]

    def rate_limit(self) -> RateLimit:
        return RateLimit(
            per_second=self.settings.rate, burst=1, per_recipient=self.settings.per_chat_rate
        )

    def share_pacing(self, overall: RateLimiter, per_recipient: KeyedRateLimiter | None) -> None:
        self._bot_pace = overall
        if per_recipient is not None:
            self._chat_pace = per_recipient
        self._first_part_paced = True

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
                allowed_updates=sorted(UPDATE_HANDLERS),
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
            self._ignored(update, kind, declared=kind in IGNORED_UPDATES)
        else:
            await handler(self, update)
        return web.json_response({"ok": True})

    def _ignored(self, update: Update, kind: str, *, declared: bool = True) -> None:
        """A known update we do not handle is acknowledged and logged (Telegram would
        otherwise retry it for a day); one nobody declared is logged louder."""
        log = self.ctx.logger.info if declared else self.ctx.logger.warning
        log(
            "telegram update ignored" if declared else "telegram update of an undeclared kind",
            extra={"inbox": self.inbox_id, "update_id": update.update_id, "kind": kind},
        )

    async def _ingest(self, events: list[InboundEvent]) -> list[Any]:
        return list(await self.ctx.ingest(events))

    async def on_message(self, update: Update) -> None:
        message = update.message
        assert message is not None
        event = self.message_event(message, f"{message.chat.id}:{message.message_id}", {})
        if event is None:
            self._ignored(update, f"message:{_value(message.content_type)}")
            return
        await self._ingest([event])

    async def on_edited_message(self, update: Update) -> None:
        message = update.edited_message
        assert message is not None
        original = f"{message.chat.id}:{message.message_id}"
        # Unix seconds; an edit without one (never seen) falls back to the update id.
        stamp = message.edit_date if message.edit_date is not None else update.update_id
        event = self.message_event(
            message, f"{original}:edit:{stamp}", {"edited": "true", "edit_of": original}
        )
        if event is None:
            self._ignored(update, f"edited_message:{_value(message.content_type)}")
            return
        await self._ingest([event])

    async def on_callback_query(self, update: Update) -> None:
        query = update.callback_query
        assert query is not None
        if query.data is None:  # a game button: nothing for an agent
            self._ignored(update, "callback_query:game")
            return
        origin = query.message
        # A button under an inline-mode message has no chat: the user's own chat it is.
        chat_id = origin.chat.id if origin is not None else query.from_user.id
        sender = (
            self.sender(origin.chat, query.from_user)
            if origin is not None
            else IdentityRef(kind="telegram", value=str(chat_id), name=_person(query.from_user))
        )
        title = button_title(origin, query.data) if isinstance(origin, Message) else None
        extra = {"callback_query_id": query.id}
        if origin is not None:
            extra["button_message_id"] = str(origin.message_id)
        event = InboundButton(
            inbox=self.inbox_id,
            medium=MEDIUM,
            provider_id=f"{chat_id}:callback:{query.id}",
            sender=sender,
            text=title or query.data,
            button=ButtonReply(payload=query.data, title=title),
            extra=extra,
        )
        (result,) = await self._ingest([event])
        if not getattr(result, "duplicate", False):
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
        status = _value(change.new_chat_member.status)
        opted_out = OPT_OUT_BY_STATUS.get(status)
        if opted_out is None:
            self._ignored(update, f"my_chat_member:{status}")
            return
        ref = self.sender(change.chat, change.from_user)
        contact_id = await self.ctx.opt_out(ref, MEDIUM, opted_out)
        self.ctx.logger.info(
            "telegram chat opted out" if opted_out else "telegram chat opted back in",
            extra={"inbox": self.inbox_id, "contact_id": contact_id, "status": status},
        )

    # -- normalising -------------------------------------------------------------------

    def sender(self, chat: Chat, user: User | None) -> IdentityRef:
        """The chat is the identity; its name is the person's in a private chat."""
        if chat.type == "private":
            name = _person(user) if user is not None else _chat_person(chat)
        else:
            name = chat.title
        return IdentityRef(kind="telegram", value=str(chat.id), name=name or None)

    def message_event(
        self, message: Message, provider_id: str, extra: dict[str, str]
    ) -> InboundEvent | None:
        """The hub's event for a message, or None for content we do not take."""
        builder = MESSAGE_CONTENT.get(_value(message.content_type))
        if builder is None:
            return None
        fields: dict[str, Any] = {
            "inbox": self.inbox_id,
            "medium": MEDIUM,
            "provider_id": provider_id,
            "sender": self.sender(message.chat, message.from_user),
            "received_at": _edited_at(message) if extra.get("edited") else message.date,
            "text": message.text if message.text is not None else message.caption,
            "extra": {**_message_extra(message), **extra},
        }
        try:
            return builder(self, message, fields)
        except (ValidationError, ValueError) as error:
            raise _bad_request(f"cannot read the message: {_errors(error)}") from None

    def _text(self, message: Message, fields: dict[str, Any]) -> InboundEvent:
        return InboundText(**fields)

    def _photo(self, message: Message, fields: dict[str, Any]) -> InboundEvent:
        assert message.photo
        largest = max(
            message.photo, key=lambda size: (size.width * size.height, size.file_size or 0)
        )
        attachment = Attachment(
            url=FILE_SCHEME + largest.file_id, content_type="image/jpeg", size=largest.file_size
        )
        return InboundMedia(**fields, attachments=(attachment,))

    def _file(self, message: Message, fields: dict[str, Any]) -> InboundEvent:
        content = _value(message.content_type)
        media = getattr(message, content)
        attachment = Attachment(
            url=FILE_SCHEME + media.file_id,
            content_type=getattr(media, "mime_type", None) or DEFAULT_MIME.get(content),
            name=getattr(media, "file_name", None) or getattr(media, "title", None),
            size=media.file_size,
        )
        return InboundMedia(**fields, attachments=(attachment,))

    def _location(self, message: Message, fields: dict[str, Any]) -> InboundEvent:
        if message.venue is not None:
            venue = message.venue
            place = Location(
                latitude=venue.location.latitude,
                longitude=venue.location.longitude,
                name=venue.title,
                address=venue.address,
            )
        else:
            assert message.location is not None
            place = Location(
                latitude=message.location.latitude, longitude=message.location.longitude
            )
        return InboundLocation(**fields, location=place)

    def _contact(self, message: Message, fields: dict[str, Any]) -> InboundEvent:
        shared = message.contact
        assert shared is not None
        own = message.from_user is not None and shared.user_id == message.from_user.id
        name = " ".join(p for p in (shared.first_name, shared.last_name) if p) or None
        phones = (self._shared_phone(shared.phone_number, own),) if shared.phone_number else ()
        return InboundSharedContact(**fields, contact=SharedContact(name=name, phones=phones))

    def _shared_phone(self, raw: str, own: bool) -> str:
        """E.164 when we can tell; the number as sent otherwise.

        Telegram sends a user's own number (the "share my phone" button) as digits
        without the `+`; a number from the address book comes as the user typed it.
        """
        text = raw.strip()
        candidates = [text]
        if own and text.isdigit():
            candidates.insert(0, "+" + text)
        for candidate in candidates:
            try:
                return normalize_phone(candidate, self.ctx.default_region)
            except InvalidIdentity:
                continue
        return text

    # -- outbound ----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        bot = self._bot()
        try:
            chat_id = int(message.to)
        except ValueError:
            raise PermanentSendError(f"not a Telegram chat id: {message.to!r}") from None
        self._check_hold(chat_id)
        markup = keyboard(message.buttons)
        text = message.text or None
        if text is not None and len(text) > MAX_TEXT:
            raise PermanentSendError(
                f"the text is {len(text)} characters; Telegram takes at most {MAX_TEXT}"
            )
        if text is None and not message.attachments:
            raise PermanentSendError("nothing to send: no text and no attachment")
        parts: list[Message] = []
        try:
            await self._deliver(bot, chat_id, text, message.attachments, markup, parts)
        except (AiogramError, aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, TelegramRetryAfter):
                self._held_until[chat_id] = time.monotonic() + error.retry_after
            failure = classify(error)
            if parts and isinstance(failure, TransientSendError):
                # Part of it is in the chat already: a retry would repeat that part.
                failure.maybe_sent = True
            raise failure from error
        return SendResult(provider_id=f"{parts[0].chat.id}:{parts[0].message_id}")

    def _check_hold(self, chat_id: int) -> None:
        until = self._held_until.get(chat_id)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._held_until[chat_id]
            return
        raise TransientSendError(
            "Telegram asked us to wait before sending to this chat again",
            code="429",
            retry_after=left,
            maybe_sent=False,
        )

    async def _deliver(
        self,
        bot: Bot,
        chat_id: int,
        text: str | None,
        attachments: tuple[Attachment, ...],
        markup: InlineKeyboardMarkup | None,
        parts: list[Message],
    ) -> None:
        """Send the text and the files, appending each message sent to `parts`; the
        first one names the whole send.

        One file per message (the text becomes the first file's caption when it fits),
        the keyboard under the last message.
        """
        if not attachments:
            assert text is not None
            await self._pace(chat_id, len(parts))
            parts.append(await bot.send_message(chat_id=chat_id, text=text, reply_markup=markup))
            return
        caption = text if text is not None and len(text) <= MAX_CAPTION else None
        if text is not None and caption is None:
            await self._pace(chat_id, len(parts))
            parts.append(await bot.send_message(chat_id=chat_id, text=text))
        for index, attachment in enumerate(attachments):
            last = index == len(attachments) - 1
            await self._pace(chat_id, len(parts))
            sent = await send_file(
                bot,
                chat_id,
                attachment,
                caption=caption if index == 0 else None,
                markup=markup if last else None,
            )
            parts.append(sent)

    async def _pace(self, chat_id: int, part: int) -> None:
        """Wait for a part's slot in the chat and in the bot's overall budget.

        The first part's slots were taken by the dispatcher when it paces this
        adapter. Both slots are booked, then their use recorded at the one instant
        both have room, right before the request.
        """
        if part == 0 and self._first_part_paced:
            return
        await acquire_together(self._bot_pace, self._chat_pace.limiter(str(chat_id)))

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

MESSAGE_CONTENT: dict[str, EventBuilder] = {
    ContentType.TEXT: TelegramChannel._text,
    ContentType.PHOTO: TelegramChannel._photo,
    ContentType.DOCUMENT: TelegramChannel._file,
    ContentType.ANIMATION: TelegramChannel._file,
    ContentType.VOICE: TelegramChannel._file,
    ContentType.AUDIO: TelegramChannel._file,
    ContentType.VIDEO: TelegramChannel._file,
    ContentType.VIDEO_NOTE: TelegramChannel._file,
    ContentType.LOCATION: TelegramChannel._location,
    ContentType.VENUE: TelegramChannel._location,
    ContentType.CONTACT: TelegramChannel._contact,
}

# Telegram omits the type of some files it always encodes the same way.
DEFAULT_MIME: dict[str, str] = {
    ContentType.VOICE: "audio/ogg",
    ContentType.VIDEO_NOTE: "video/mp4",
    ContentType.ANIMATION: "video/mp4",
    ContentType.VIDEO: "video/mp4",
}

# The bot's new status in a chat -> whether that chat is opted out. "kicked" in a
# private chat is the user blocking the bot; "member" is them unblocking it.
OPT_OUT_BY_STATUS: dict[str, bool] = {
    "kicked": True,
    "left": True,
    "member": False,
    "administrator": False,
}


# -- helpers -------------------------------------------------------------------------------


def parse_update(body: bytes, bot: Bot | None) -> Update:
    """The request body as aiogram's `Update`, or a 400 naming what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _bad_request("the body is not JSON") from None
    if not isinstance(data, dict):
        raise _bad_request("the body is not a JSON object (a Telegram Update)")
    try:
        return Update.model_validate(data, context={"bot": bot} if bot is not None else {})
    except ValidationError as error:
        raise _bad_request(f"not a Telegram Update: {_errors(error)}") from None


def update_kind(update: Update) -> str:
    """The one kind an Update carries: a field of aiogram's model, or a newer one."""
    kinds = [
        name
        for name in type(update).model_fields
        if name != "update_id" and getattr(update, name) is not None
    ]
    kinds += [name for name in update.model_extra or {} if name not in kinds]
    if len(kinds) != 1:
        raise _bad_request(
            "a Telegram Update carries exactly one of message, edited_message, "
            f"callback_query, ...; this one has {len(kinds)}"
        )
    return kinds[0]


def button_title(message: Message, data: str) -> str | None:
    """The label of the button with this callback data on the message it came from."""
    markup = message.reply_markup
    if markup is None:
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == data:
                return button.text
    return None


def keyboard(buttons: tuple[ButtonReply, ...]) -> InlineKeyboardMarkup | None:
    """One button per row; pressing one sends its payload back as callback data."""
    if not buttons:
        return None
    for button in buttons:
        if not 1 <= len(button.payload.encode()) <= MAX_CALLBACK_DATA:
            raise PermanentSendError(
                f"button payload {button.payload[:20]!r} is not 1-{MAX_CALLBACK_DATA} bytes, "
                "Telegram's limit for callback data"
            )
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=button.title or button.payload, callback_data=button.payload
                )
            ]
            for button in buttons
        ]
    )


async def send_file(
    bot: Bot,
    chat_id: int,
    attachment: Attachment,
    *,
    caption: str | None,
    markup: InlineKeyboardMarkup | None,
) -> Message:
    """Send one file by URL (Telegram fetches it), or by file id for a file Telegram
    already has (`tg://file/...`), with the method its type calls for."""
    url = attachment.url
    media = url[len(FILE_SCHEME) :] if url.startswith(FILE_SCHEME) else url
    content_type = attachment.content_type or mimetypes.guess_type(url)[0] or ""
    common: dict[str, Any] = {"chat_id": chat_id, "caption": caption, "reply_markup": markup}
    if content_type == "image/gif":
        return await bot.send_animation(animation=media, **common)
    if content_type.startswith("image/"):
        return await bot.send_photo(photo=media, **common)
    if content_type.startswith("video/"):
        return await bot.send_video(video=media, **common)
    if content_type == "audio/ogg":
        return await bot.send_voice(voice=media, **common)
    if content_type.startswith("audio/"):
        return await bot.send_audio(audio=media, **common)
    return await bot.send_document(document=media, **common)


def classify(error: BaseException) -> SendError:
    """What a failed Bot API call means for the message: retry, or give up (and why)."""
    if isinstance(error, TelegramRetryAfter):
        return TransientSendError(
            f"Too Many Requests: retry after {error.retry_after}",
            code="429",
            retry_after=float(error.retry_after),
            maybe_sent=False,
        )
    if isinstance(error, TelegramForbiddenError):
        # Blocked by the user, kicked from the group, user deactivated: this chat is
        # closed to the bot until the user opens it again.
        return PermanentSendError(error.message, code="403", opt_out=True)
    if isinstance(error, TelegramMigrateToChat):
        return PermanentSendError(
            f"the group became supergroup {error.migrate_to_chat_id}; write there",
            code="400",
        )
    if isinstance(error, TelegramEntityTooLarge):
        return PermanentSendError(error.message, code="413")
    if isinstance(error, TelegramUnauthorizedError):
        return PermanentSendError("Telegram rejected the bot token (401)", code="401")
    for kind, code in (
        (TelegramBadRequest, "400"),
        (TelegramNotFound, "404"),
        (TelegramConflictError, "409"),
    ):
        if isinstance(error, kind):
            return PermanentSendError(error.message, code=code)
    if isinstance(error, TelegramServerError):
        return TransientSendError(error.message, code="5xx")
    if isinstance(error, TelegramNetworkError):
        # A refused connection never reached Telegram; a timeout may have.
        refused = isinstance(error.__cause__, aiohttp.ClientConnectorError)
        return TransientSendError(error.message, maybe_sent=not refused)
    if isinstance(error, aiohttp.ClientConnectorError):
        return TransientSendError(f"cannot connect: {error}", maybe_sent=False)
    if isinstance(error, ClientDecodeError):
        return TransientSendError("Telegram's answer could not be read")
    if isinstance(error, TelegramAPIError):
        return PermanentSendError(error.message)
    return TransientSendError(f"request failed: {type(error).__name__}")


def _edited_at(message: Message) -> datetime:
    if message.edit_date is None:
        return message.date
    return datetime.fromtimestamp(message.edit_date, UTC)


def _value(value: object) -> str:
    """An aiogram enum member or plain string as the plain string Telegram sent."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def _person(user: User | None) -> str | None:
    if user is None:
        return None
    full = " ".join(p for p in (user.first_name, user.last_name) if p)
    return full or user.username


def _chat_person(chat: Chat) -> str | None:
    full = " ".join(p for p in (chat.first_name, chat.last_name) if p)
    return full or chat.username


def _message_extra(message: Message) -> dict[str, str]:
    extra = {"chat_type": _value(message.chat.type)}
    user = message.from_user
    if user is not None:
        if user.username:
            extra["username"] = user.username
        if user.language_code:
            extra["language_code"] = user.language_code
        if message.chat.type != "private":
            extra["from_id"] = str(user.id)
            name = _person(user)
            if name:
                extra["from_name"] = name
    return extra


def _errors(error: ValidationError | ValueError) -> str:
    """Where a payload is wrong, without echoing its values (customer text)."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors(include_input=False)[:5]
        )
    return str(error)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"code": "bad_request", "message": message}}),
        content_type="application/json",
    )
