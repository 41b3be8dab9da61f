"""A Telegram Bot API simulator: a real aiohttp server on loopback (127.0.0.1).

It answers `POST /bot<token>/<method>` as api.telegram.org does: parameters as
multipart form (what aiogram sends), URL-encoded form, JSON or query string; results
as `{"ok": true, "result": ...}` in the shapes aiogram's models accept; errors as
`{"ok": false, "error_code", "description"[, "parameters"]}`.

It enforces Telegram's sending limits over sliding windows: `per_chat_rate` messages
per second in one chat (Telegram: about 1) and `global_rate` over all chats (about
30). Over either, the send is refused with Telegram's own 429 body, `retry_after`
saying when the window frees. `slack` forgives that much scheduling jitter (a pacer
aiming at exactly 1/s lands a few milliseconds early now and then; Telegram is not
that strict either).

Every request is recorded in `requests` with its method, chat, parameters, monotonic
time and status; accepted sends are also in `sent`; `rejected_429` counts the 429s.
A test can make the next calls fail (`fail_next`) or a chat block the bot (`block`).

The sandbox (`channels.simulation`) attaches its Telegram inboxes: each is one more
bot, and once a bot is attached only the bots the simulator knows are answered (401
otherwise). An attached bot talks to its customers in private chats only; what it
sends is shown to the customer (`Customers.received`) and shown delivered after the
delivery delay (the Bot API reports no delivery, so the hub's message stays `sent`).
Its customer side (`write`) posts the Update a customer's message makes, with the
bot's secret token, to the inbox's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from channels.base import ChannelSettings
from channels.simulation import (
    Customers,
    Delivered,
    Handed,
    HttpSimulator,
    LineOffer,
    Medium,
    Place,
    Receipt,
    Writing,
    keep_last,
    report_delivery,
)
from channels.telegram import TelegramSettings

# Methods that post a message into a chat, and the field of Message their file goes in.
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
BLOCKED = "Forbidden: bot was blocked by the user"


# The Bot API's getFile serves files of up to 20 MB; the path its files live under here.
FILE_DOWNLOAD_LIMIT = 20 * 1024 * 1024
FILES_DIR = "customer_files"


@dataclass
class Failure:
    status: int
    description: str
    method: str | None = None  # None: whichever method comes next
    retry_after: int | None = None


@dataclass
class Bot:
    """A bot the simulator knows: the one of `token`, or an attached inbox's."""

    token: str
    settings: TelegramSettings | None = None  # an attached inbox's
    inbox: str | None = None
    webhook: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeTelegram(HttpSimulator):
    token: str | None = None  # None: any token is accepted (until a bot is attached)
    per_chat_rate: float | None = 1.0
    global_rate: float | None = 30.0
    slack: float = 0.02
    delay: float = 0.0  # seconds before each answer (a slow network)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    blocked: set[int] = field(default_factory=set)
    failures: deque[Failure] = field(default_factory=deque)
    webhook: dict[str, Any] = field(default_factory=dict)  # the last setWebhook's
    url: str = ""
    bot_name: str = "Fake Support"
    bot_username: str = "fake_support_bot"
    first_message_id: int = 1  # each chat's first message id
    history: int | None = None  # requests and sent kept (None: all)
    customers: Customers | None = None  # the sandbox's customer side
    bots: dict[str, Bot] = field(default_factory=dict)
    _global_window: deque[float] = field(default_factory=deque)
    _chat_windows: defaultdict[int, deque[float]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    _message_ids: dict[int, itertools.count[int]] = field(default_factory=dict)
    _file_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Files customers sent, by file id (`put_file`): getFile and the download serve them.
    files: dict[str, bytes] = field(default_factory=dict)
    _update_ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int(time.time()) % 100000 * 1000)
    )

    def __post_init__(self) -> None:
        if self.token is not None:
            self.bots[self.token] = Bot(self.token)

    # -- the sandbox -------------------------------------------------------------------

    @classmethod
    def for_sandbox(cls, customers: Customers) -> FakeTelegram:
        return cls(
            per_chat_rate=None,
            global_rate=None,
            bot_name="Sandbox Support",
            bot_username="sandbox_support_bot",
            # Message ids differ from one run to the next (a store outlives the simulator).
            first_message_id=int(time.time()) % 100000 * 1000,
            history=1000,
            customers=customers,
        )

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        assert isinstance(settings, TelegramSettings)
        self.bots[settings.token] = Bot(settings.token, settings, inbox)
        return settings.model_copy(update={"api_base": place.api_base})

    def _attached(self, inbox: str) -> tuple[Bot, TelegramSettings]:
        for bot in self.bots.values():
            if bot.inbox == inbox and bot.settings is not None:
                return bot, bot.settings
        raise LookupError(f"no Telegram inbox {inbox!r} attached")

    def lines(self, inbox: str) -> list[LineOffer]:
        self._attached(inbox)
        return [LineOffer("telegram", "Telegram bot", "the bot")]

    def next_message_id(self, chat_id: int) -> int:
        """The next message id of a chat (the bot's and the customer's count together)."""
        ids = self._message_ids.get(chat_id)
        if ids is None:
            ids = self._message_ids[chat_id] = itertools.count(self.first_message_id)
        return next(ids)

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        """Post the Update of a customer's private message to the bot."""
        _, settings = self._attached(inbox)
        assert self.customers is not None
        user_id = int(writing.customer.address.lstrip("+"))
        message_id = self.next_message_id(user_id)
        update = customer_update(
            next(self._update_ids), message_id, user_id, writing.customer.name, writing.text
        )
        status, answer = await self.customers.post(
            self.customers.webhook_url(inbox),
            json.dumps(update).encode(),
            {
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": settings.secret_token,
            },
        )
        return Handed(status, answer, provider_id=f"{user_id}:{message_id}")

    # -- what a test controls ---------------------------------------------------------

    def fail_next(
        self,
        status: int,
        description: str,
        *,
        method: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls (of `method`, or of any) with this error."""
        for _ in range(times):
            self.failures.append(Failure(status, description, method, retry_after))

    def fail_next_with_429(self, retry_after: int, *, method: str = "sendMessage") -> None:
        self.fail_next(
            429,
            f"Too Many Requests: retry after {retry_after}",
            method=method,
            retry_after=retry_after,
        )

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: every send to this chat is a 403 from now on."""
        self.blocked.add(chat_id)

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]

    # -- the server -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self.download)
        return app

    @property
    def bot_id(self) -> int:
        return _bot_id(self.token)

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        method = request.match_info["method"]
        uploads: dict[str, dict[str, Any]] = {}
        params = await bot_api_params(request, uploads)
        record: dict[str, Any] = {
            "method": method,
            # Files uploaded in a multipart call: field -> {filename, content_type, data}.
            "files": uploads,
            "chat_id": _int_or_none(params.get("chat_id")),
            "params": params,
            "at": time.monotonic(),
            "token": request.match_info["token"],
        }
        self.requests.append(record)
        keep_last(self.requests, self.history)
        response = self._answer(method, params, record)
        record["status"] = response.status
        return response

    def _bot(self, token: str) -> Bot | None:
        """The bot of `token`; any token is a bot while the simulator knows none."""
        return self.bots.get(token) or (None if self.bots else Bot(token, webhook=self.webhook))

    def _answer(self, method: str, params: dict[str, Any], record: dict[str, Any]) -> web.Response:
        bot = self._bot(record["token"])
        if bot is None:
            return _error(401, "Unauthorized")
        failure = self._take_failure(method)
        if failure is not None:
            if failure.status == 429:
                self.rejected_429 += 1
            return _error(failure.status, failure.description, failure.retry_after)
        if method in SEND_METHODS:
            return self._send(bot, method, params, record)
        if method == "getMe":
            return _ok(self._bot_user(bot))
        if method == "setWebhook":
            if not params.get("url"):
                return _error(400, "Bad Request: bad webhook: URL is empty")
            bot.webhook = self.webhook = dict(params)
            return _ok(True, description="Webhook was set")
        if method == "deleteWebhook":
            bot.webhook = self.webhook = {}
            return _ok(True, description="Webhook was deleted")
        if method == "getWebhookInfo":
            return _ok(
                {
                    "url": bot.webhook.get("url", ""),
                    "has_custom_certificate": False,
                    "pending_update_count": 0,
                }
            )
        if method == "answerCallbackQuery":
            if not params.get("callback_query_id"):
                return _error(400, "Bad Request: query is too old and response timeout expired")
            return _ok(True)
        if method == "getFile":
            file_id = params.get("file_id")
            if not file_id:
                return _error(400, "Bad Request: invalid file_id")
            data = self.files.get(str(file_id))
            if data is not None:
                if len(data) > FILE_DOWNLOAD_LIMIT:
                    return _error(400, "Bad Request: file is too big")
                return _ok(
                    {
                        "file_id": file_id,
                        "file_unique_id": f"AQAD{abs(hash(file_id)) % 10**8:08d}",
                        "file_size": len(data),
                        "file_path": f"{FILES_DIR}/{file_id}",
                    }
                )
            number = next(self._file_ids)
            return _ok(
                {
                    "file_id": file_id,
                    "file_unique_id": f"AQAD{number:08d}",
                    "file_size": 1024,
                    "file_path": f"documents/file_{number}",
                }
            )
        return _error(404, "Not Found")

    def _take_failure(self, method: str) -> Failure | None:
        for failure in self.failures:
            if failure.method is None or failure.method == method:
                self.failures.remove(failure)
                return failure
        return None

    def _send(
        self, bot: Bot, method: str, params: dict[str, Any], record: dict[str, Any]
    ) -> web.Response:
        chat_id = record["chat_id"]
        if chat_id is None:
            return _error(400, "Bad Request: chat_id is empty")
        file_field = SEND_METHODS[method]
        if file_field is None and not params.get("text"):
            return _error(400, "Bad Request: message text is empty")
        if file_field is not None and not params.get(file_field):
            return _error(400, f"Bad Request: there is no {file_field} in the request")
        if bot.inbox is not None and chat_id <= 0:
            return _error(400, "Bad Request: chat not found")  # its customers chat in private
        if chat_id in self.blocked:
            return _error(403, BLOCKED)
        wait = self._over_limit(chat_id, record["at"])
        if wait is not None:
            self.rejected_429 += 1
            retry_after = max(1, math.ceil(wait))
            return _error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        message = self._message(bot, chat_id, params, file_field)
        self.sent.append(
            {
                "method": method,
                "chat_id": chat_id,
                "params": params,
                "at": record["at"],
                "message_id": message["message_id"],
            }
        )
        keep_last(self.sent, self.history)
        if bot.inbox is not None:
            self._show(bot.inbox, chat_id, message["message_id"], method, params)
        return _ok(message)

    def _show(
        self, inbox: str, chat_id: int, message_id: int, method: str, params: dict[str, Any]
    ) -> None:
        """Show an attached bot's message to its customer, delivered after the delay."""
        customers = self.customers
        assert customers is not None
        receipt: Receipt = customers.received(
            Delivered(
                inbox=inbox,
                medium="telegram",
                address=f"+{chat_id}",
                text=shown_text(method, params),
                provider_id=f"{chat_id}:{message_id}",
            )
        )
        customers.spawn(report_delivery(customers, receipt, []))

    def _over_limit(self, chat_id: int, now: float) -> float | None:
        """Seconds until a send may go, when one now would break a limit; else book it."""
        checks: list[tuple[deque[float], float]] = []
        if self.global_rate is not None:
            checks.append((self._global_window, self.global_rate))
        if self.per_chat_rate is not None:
            checks.append((self._chat_windows[chat_id], self.per_chat_rate))
        waits = []
        for window, rate in checks:
            span = max(1.0, 1.0 / rate)  # a window long enough to hold one message
            allowed = max(1, round(rate * span))
            while window and now - window[0] >= span - self.slack:
                window.popleft()
            if len(window) >= allowed:
                waits.append(span - self.slack - (now - window[0]))
        if waits:
            return max(waits)
        for window, _ in checks:
            window.append(now)
        return None

    def _bot_user(self, bot: Bot) -> dict[str, Any]:
        return {
            "id": _bot_id(bot.token),
            "is_bot": True,
            "first_name": self.bot_name,
            "username": self.bot_username,
            "can_join_groups": bot.inbox is None,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _message(
        self, bot: Bot, chat_id: int, params: dict[str, Any], file_field: str | None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": self.next_message_id(chat_id),
            "from": {
                k: v
                for k, v in self._bot_user(bot).items()
                if k in ("id", "is_bot", "first_name", "username")
            },
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "date": int(time.time()),
        }
        if chat_id < 0:
            message["chat"]["title"] = "Fake group"
        if file_field is None:
            message["text"] = params["text"]
        else:
            file_id = f"BQACAgIAAxkBAAI{next(self._file_ids):08d}"
            unique = f"AgAD{file_id[-8:]}"
            if file_field == "photo":
                message["photo"] = [
                    {
                        "file_id": file_id + "s",
                        "file_unique_id": unique + "s",
                        "width": 90,
                        "height": 90,
                    },
                    {"file_id": file_id, "file_unique_id": unique, "width": 800, "height": 800},
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
        if isinstance(params.get("reply_markup"), dict):
            message["reply_markup"] = params["reply_markup"]
        return message

    def put_file(self, file_id: str, data: bytes) -> None:
        """A file a customer sent: getFile answers its size and path, and the
        download its bytes."""
        self.files[file_id] = data

    async def download(self, request: web.Request) -> web.Response:
        if self._bot(request.match_info["token"]) is None:
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        if path.startswith(f"{FILES_DIR}/"):
            data = self.files.get(path[len(FILES_DIR) + 1 :])
            if data is None:
                return web.Response(status=404, text="Not Found")
            return web.Response(body=data, content_type="application/octet-stream")
        return web.Response(body=f"file {path}".encode())


def _bot_id(token: str | None) -> int:
    if token and token.split(":", 1)[0].isdigit():
        return int(token.split(":", 1)[0])
    return 5000000001


def shown_text(method: str, params: dict[str, Any]) -> str:
    """What the customer's Telegram shows of a send: the text or caption, the file,
    and the inline keyboard's buttons."""
    file_field = SEND_METHODS[method]
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
    return text


def customer_update(
    update_id: int, message_id: int, user_id: int, name: str, text: str
) -> dict[str, Any]:
    """The Update of a customer's text message to the bot in their private chat."""
    first, _, last = (name or "Customer").partition(" ")
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first}
    chat: dict[str, Any] = {"id": user_id, "type": "private", "first_name": first}
    if last:
        user["last_name"] = last
        chat["last_name"] = last
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        },
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


async def bot_api_params(
    request: web.Request, uploads: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Bot API call's parameters from the query, a JSON body or a form; the bytes
    of uploaded files go to `uploads` (the parameter holds the file's name)."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
    elif request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField) and uploads is not None:
                uploads[key] = {
                    "filename": value.filename,
                    "content_type": value.content_type,
                    "data": value.file.read(),
                }
            params[key] = value if isinstance(value, str) else getattr(value, "filename", "file")
    for key in ("reply_markup", "allowed_updates"):
        if isinstance(params.get(key), str):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params
