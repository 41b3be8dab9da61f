"""External bots over HTTP (`kind = "http"`, CONTRACT.md "External bots").

For each new inbound message the hub POSTs the JSON event to the bot's `url`,
signed: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the
secret>`, and `X-Hub-Delivery: <message id>` (the same on every retry). Each
attempt waits up to `timeout_seconds`; a timeout, a refused connection or a 5xx
is tried again twice, 1 s and then 2 s later (three attempts). The answer (2xx)
is `{"actions": [...]}` or a Rasa REST-channel list (`bots.actions.parse_actions`).
Anything else (4xx, still failing, not JSON, larger than MAX_ANSWER, an unknown
action) raises `BotFailure`: the runtime hands the conversation to people.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from bots.actions import BadAnswer, BotFailure, Decision, TurnContext, parse_actions
from hub.shapes import iso, message_view

if TYPE_CHECKING:
    from hub.services.runtime import Hub
    from hub.settings import HttpBotSettings

log = logging.getLogger("hub.bots.http")

MAX_ANSWER = 64 * 1024  # bytes of an answer read at most
RETRY_DELAYS = (1.0, 2.0)  # before the second and the third attempt


def signature(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_body(ctx: TurnContext) -> dict[str, Any]:
    """The JSON the bot is sent for one message (CONTRACT.md)."""
    conversation, contact, message = ctx.conversation, ctx.contact, ctx.message
    view = message_view(message)
    return {
        "event": "message.created",
        "bot": ctx.bot_id,
        "conversation": {
            "id": str(conversation["_id"]),
            "inbox": conversation.get("inbox"),
            "channel": conversation.get("channel"),
            "status": conversation.get("status"),
            "labels": list(conversation.get("labels") or []),
        },
        "contact": {
            "id": str(contact.get("_id") or conversation.get("contact_id")),
            "name": contact.get("name"),
            "phones": list(contact.get("phones") or []),
            "emails": list(contact.get("emails") or []),
            "locale": contact.get("locale"),
            "timezone": contact.get("timezone"),
            "labels": list(contact.get("labels") or []),
            "attributes": dict(contact.get("attributes") or {}),
        },
        "message": {
            "id": view["id"],
            "text": view["text"],
            "kind": view["kind"],
            "attachments": view["attachments"],
            "created_at": iso(message.get("created_at")),
        },
    }


class HttpBot:
    """A bot served elsewhere, spoken to over signed HTTP."""

    def __init__(
        self,
        bot_id: str,
        url: str,
        secret: str,
        timeout: float,
        session: Any,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.id = bot_id
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._session = session  # () -> aiohttp.ClientSession
        self.retry_delays = retry_delays

    @classmethod
    def from_settings(cls, settings: HttpBotSettings, *, hub: Hub) -> HttpBot:
        def session() -> aiohttp.ClientSession:
            assert hub.http is not None
            return hub.http

        return cls(settings.id, settings.url, settings.secret, settings.timeout_seconds, session)

    async def decide(self, ctx: TurnContext) -> Decision:
        body = json.dumps(event_body(ctx), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "omnichannel-hub",
            "X-Hub-Signature-256": signature(self.secret, body),
            "X-Hub-Delivery": str(ctx.message["_id"]),
        }
        conversation_id = str(ctx.conversation["_id"])
        problem = ""
        for attempt, delay in enumerate((0.0, *self.retry_delays), start=1):
            if delay:
                await asyncio.sleep(delay)
            try:
                status, raw = await self._post(body, headers)
            except TimeoutError:
                problem = f"no answer within {self.timeout:g} s"
            except aiohttp.ClientError as error:
                problem = f"cannot reach it ({type(error).__name__})"
            else:
                if status >= 500:
                    problem = f"it answered {status}"
                elif status >= 300:
                    raise BotFailure(f"it answered {status}")
                else:
                    return Decision(self._actions(raw))
            log.info(
                "bot attempt failed",
                extra={"bot": self.id, "conversation_id": conversation_id, "attempt": attempt,
                       "error": problem},
            )
        raise BotFailure(f"{problem} after {1 + len(self.retry_delays)} attempts")

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes | None]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self._session().post(
            self.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            if response.status >= 300:
                return response.status, None
            raw = await response.content.read(MAX_ANSWER + 1)
            return response.status, raw

    def _actions(self, raw: bytes | None) -> list[dict[str, Any]]:
        if raw is None or not raw.strip():
            return []  # 204, or an empty 200: nothing to do
        if len(raw) > MAX_ANSWER:
            raise BadAnswer(f"the answer is larger than {MAX_ANSWER // 1024} KiB")
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadAnswer("the answer is not JSON") from None
        return parse_actions(answer)
