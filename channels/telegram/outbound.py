"""Sending through the Bot API: one hub message as one or more Telegram messages,
each part paced in the bot's and the chat's budget, and what a failed call means.

The hub paces each inbox at `rate` messages/s overall and `per_chat_rate` per chat;
a 429 that still comes is honoured (`retry_after`) and holds further sends to that
chat until it has passed.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiogram import Bot
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
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup, Message

from channels.base import PermanentSendError, SendError, TransientSendError
from channels.telegram.inbound import FILE_SCHEME
from hub.model import Attachment, ButtonReply, OutboundMessage, SendResult
from hub.ports import FileRefusal, OutboundFile
from hub.ratelimit import KeyedRateLimiter, RateLimiter, acquire_together

# Bot API limits on what we send.
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64  # bytes
# Uploads (multipart): a photo up to 10 MB, any other file up to 50 MB; a photo is
# JPEG, PNG or WebP (a GIF goes as an animation, other images as documents).
MB = 1024 * 1024
MAX_PHOTO_UPLOAD = 10 * MB
MAX_FILE_UPLOAD = 50 * MB
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


def refuse_file(content_type: str, size: int) -> FileRefusal | None:
    """Telegram takes any type (as a document at worst); only the size is limited."""
    if content_type in PHOTO_TYPES - {"image/gif"} and size > MAX_PHOTO_UPLOAD:
        return FileRefusal(413, f"{size} bytes is over Telegram's 10 MB limit for a photo")
    if size > MAX_FILE_UPLOAD:
        return FileRefusal(413, f"{size} bytes is over Telegram's 50 MB limit for a file")
    return None


class BotSender:
    """Sends hub messages with a `Bot`, pacing every part and holding a chat that
    Telegram told us to leave alone for a while."""

    def __init__(self, rate: float, per_chat_rate: float) -> None:
        # chat id -> monotonic time before which Telegram told us not to send there.
        self.held_until: dict[int, float] = {}
        # A message sent in parts (a long text and a file, several files) takes a
        # slot for each later part from these. Under a dispatcher they are its own
        # limiters (`share_pacing`) and the first part has its slot already;
        # without one the sender paces every part itself.
        self.bot_pace = RateLimiter(rate)
        self.chat_pace = KeyedRateLimiter(per_chat_rate)
        self.first_part_paced = False

    def share_pacing(self, overall: RateLimiter, per_recipient: KeyedRateLimiter | None) -> None:
        self.bot_pace = overall
        if per_recipient is not None:
            self.chat_pace = per_recipient
        self.first_part_paced = True

    async def send(
        self, bot: Bot, message: OutboundMessage, uploads: Mapping[str, OutboundFile] | None = None
    ) -> SendResult:
        """Send `message`; `uploads` holds the bytes of the hub's own files (by
        attachment id), uploaded with the call (multipart) instead of by URL."""
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
            await self._deliver(
                bot, chat_id, text, message.attachments, markup, parts, uploads or {}
            )
        except (AiogramError, aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, TelegramRetryAfter):
                self.held_until[chat_id] = time.monotonic() + error.retry_after
            failure = classify(error)
            if parts and isinstance(failure, TransientSendError):
                # Part of it is in the chat already: a retry would repeat that part.
                failure.maybe_sent = True
            raise failure from error
        return SendResult(provider_id=f"{parts[0].chat.id}:{parts[0].message_id}")

    def _check_hold(self, chat_id: int) -> None:
        until = self.held_until.get(chat_id)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self.held_until[chat_id]
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
        uploads: Mapping[str, OutboundFile],
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
                upload=uploads.get(attachment.id or ""),
            )
            parts.append(sent)

    async def _pace(self, chat_id: int, part: int) -> None:
        """Wait for a part's slot in the chat and in the bot's overall budget.

        The first part's slots were taken by the dispatcher when it paces this
        adapter. Both slots are booked, then their use recorded at the one instant
        both have room, right before the request.
        """
        if part == 0 and self.first_part_paced:
            return
        await acquire_together(self.bot_pace, self.chat_pace.limiter(str(chat_id)))


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
    upload: OutboundFile | None = None,
) -> Message:
    """Send one file by URL (Telegram fetches it), by file id for a file Telegram
    already has (`tg://file/...`), or uploaded (the hub's own file), with the method
    its type calls for: a photo, a voice note (OGG), audio, video or a document."""
    url = attachment.url
    media: str | BufferedInputFile = url[len(FILE_SCHEME) :] if url.startswith(FILE_SCHEME) else url
    content_type = attachment.content_type or mimetypes.guess_type(url)[0] or ""
    if upload is not None:
        media = BufferedInputFile(upload.data, filename=upload.name or "file")
        content_type = upload.content_type
        if content_type.startswith("image/") and content_type not in PHOTO_TYPES:
            content_type = "application/octet-stream"  # sent as a document
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
