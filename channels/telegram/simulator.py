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
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Methods that post a message into a chat, and the field of Message their file goes in.
SEND_METHODS: dict[str, str | None] = {
    "sendMessage": None,
    "sendPhoto": "photo",
    "sendDocument": "document",
    "sendVideo": "video",
    "sendAudio": "audio",
    "sendVoice": "voice",
    "sendAnimation": "animation",
}
BLOCKED = "Forbidden: bot was blocked by the user"


@dataclass
class Failure:
    status: int
    description: str
    method: str | None = None  # None: whichever method comes next
    retry_after: int | None = None


@dataclass
class FakeTelegram:
    token: str | None = None  # None: any token is accepted
    per_chat_rate: float | None = 1.0
    global_rate: float | None = 30.0
    slack: float = 0.02
    delay: float = 0.0  # seconds before each answer (a slow network)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    rejected_429: int = 0
    blocked: set[int] = field(default_factory=set)
    failures: deque[Failure] = field(default_factory=deque)
    webhook: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    runner: web.AppRunner | None = None
    _global_window: deque[float] = field(default_factory=deque)
    _chat_windows: defaultdict[int, deque[float]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    _message_ids: defaultdict[int, itertools.count[int]] = field(
        default_factory=lambda: defaultdict(lambda: itertools.count(1))
    )
    _file_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

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

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self.download)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def bot_id(self) -> int:
        if self.token and self.token.split(":", 1)[0].isdigit():
            return int(self.token.split(":", 1)[0])
        return 5000000001

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        method = request.match_info["method"]
        params = await bot_api_params(request)
        record: dict[str, Any] = {
            "method": method,
            "chat_id": _int_or_none(params.get("chat_id")),
            "params": params,
            "at": time.monotonic(),
            "token": request.match_info["token"],
        }
        self.requests.append(record)
        response = self._answer(method, params, record)
        record["status"] = response.status
        return response

    def _answer(self, method: str, params: dict[str, Any], record: dict[str, Any]) -> web.Response:
        if self.token is not None and record["token"] != self.token:
            return _error(401, "Unauthorized")
        failure = self._take_failure(method)
        if failure is not None:
            if failure.status == 429:
                self.rejected_429 += 1
            return _error(failure.status, failure.description, failure.retry_after)
        if method in SEND_METHODS:
            return self._send(method, params, record)
        if method == "getMe":
            return _ok(self._bot_user())
        if method == "setWebhook":
            if "url" not in params:
                return _error(400, "Bad Request: bad webhook: URL is empty")
            self.webhook = dict(params)
            return _ok(True, description="Webhook was set")
        if method == "deleteWebhook":
            self.webhook = {}
            return _ok(True, description="Webhook was deleted")
        if method == "answerCallbackQuery":
            if not params.get("callback_query_id"):
                return _error(400, "Bad Request: query is too old and response timeout expired")
            return _ok(True)
        if method == "getFile":
            file_id = params.get("file_id")
            if not file_id:
                return _error(400, "Bad Request: invalid file_id")
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

    def _send(self, method: str, params: dict[str, Any], record: dict[str, Any]) -> web.Response:
        chat_id = record["chat_id"]
        if chat_id is None:
            return _error(400, "Bad Request: chat_id is empty")
        file_field = SEND_METHODS[method]
        if file_field is None and not params.get("text"):
            return _error(400, "Bad Request: message text is empty")
        if file_field is not None and not params.get(file_field):
            return _error(400, f"Bad Request: there is no {file_field} in the request")
        if chat_id in self.blocked:
            return _error(403, BLOCKED)
        wait = self._over_limit(chat_id, record["at"])
        if wait is not None:
            self.rejected_429 += 1
            retry_after = max(1, math.ceil(wait))
            return _error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        message = self._message(chat_id, params, file_field)
        self.sent.append(
            {
                "method": method,
                "chat_id": chat_id,
                "params": params,
                "at": record["at"],
                "message_id": message["message_id"],
            }
        )
        return _ok(message)

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

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Fake Support",
            "username": "fake_support_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _message(
        self, chat_id: int, params: dict[str, Any], file_field: str | None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": next(self._message_ids[chat_id]),
            "from": {
                k: v
                for k, v in self._bot_user().items()
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
            else:
                message[file_field] = {"file_id": file_id, "file_unique_id": unique}
            if params.get("caption"):
                message["caption"] = params["caption"]
        if isinstance(params.get("reply_markup"), dict):
            message["reply_markup"] = params["reply_markup"]
        return message

    async def download(self, request: web.Request) -> web.Response:
        if self.token is not None and request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        return web.Response(body=f"file {request.match_info['path']}".encode())


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


async def bot_api_params(request: web.Request) -> dict[str, Any]:
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
