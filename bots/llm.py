"""The AI assistant (`kind = "llm"`): any OpenAI-compatible chat-completions
endpoint (`POST {api_base}/chat/completions`), answering from the business's
knowledge files only, in the customer's language.

The knowledge files (Markdown or text) are read once, when the hub starts (a
missing one is a config error naming it), and given to the model in the system
prompt with the rules: answer only from them, in the customer's language, and
answer exactly `HANDOFF` when they do not hold the answer or the customer wants a
person. The assistant hands the conversation to people when the model says so,
when the customer asks for a person (HANDOFF_WORDS), or when the endpoint fails
(unreachable, an error, a timeout, an answer not in the API's shape).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bots.actions import MAX_TEXT, BotFailure, Decision, TurnContext
from bots.flow import _has_phrase, normalize

if TYPE_CHECKING:
    from hub.services.runtime import Hub
    from hub.settings import LlmBotSettings

log = logging.getLogger("hub.bots.llm")

HANDOFF = "HANDOFF"
# Words that ask for a person, in the languages the hub's customers most write in.
HANDOFF_WORDS = (
    "agent", "operator", "human", "real person", "manager", "talk to someone",
    "оператор", "человек", "менеджер", "живой человек", "консультант",
    "humano", "mensch", "mitarbeiter", "opérateur", "conseiller",
)  # fmt: skip
HISTORY = 12  # messages of the conversation the model sees, the newest last
MAX_KNOWLEDGE = 200_000  # characters of knowledge given to the model at most
MAX_ANSWER = 256 * 1024

PROMPT = """You are the customer assistant of a business, writing to one of its customers \
in a chat. Follow these rules strictly:
1. Answer ONLY from the KNOWLEDGE below. Do not use anything else you know, do not guess, \
do not invent prices, times, links or promises.
2. Answer in the language of the customer's last message.
3. Be short and friendly: a few sentences, plain text, no Markdown.
4. If the KNOWLEDGE does not answer the question, or the customer asks for a person, \
complains or needs something only a person can do, answer exactly {handoff} and nothing else.

KNOWLEDGE:
{knowledge}"""


def read_knowledge(paths: list[str]) -> str:
    """The knowledge files' text, each under its file name (OSError if one is missing)."""
    parts = []
    for name in paths:
        text = Path(name).read_text(encoding="utf-8")
        parts.append(f"## {Path(name).name}\n\n{text.strip()}")
    return "\n\n".join(parts)[:MAX_KNOWLEDGE]


class LlmBot:
    """An assistant answering through a chat-completions endpoint."""

    def __init__(
        self,
        bot_id: str,
        api_base: str,
        model: str,
        api_key: str,
        knowledge: str,
        timeout: float,
        session: Any,
    ) -> None:
        self.id = bot_id
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.system = PROMPT.format(handoff=HANDOFF, knowledge=knowledge or "(none)")
        self.timeout = timeout
        self._session = session  # () -> aiohttp.ClientSession

    @classmethod
    def from_settings(cls, settings: LlmBotSettings, *, hub: Hub) -> LlmBot:
        def session() -> aiohttp.ClientSession:
            assert hub.http is not None
            return hub.http

        return cls(
            settings.id,
            settings.api_base,
            settings.model,
            settings.api_key,
            read_knowledge(settings.knowledge),
            settings.timeout_seconds,
            session,
        )

    async def decide(self, ctx: TurnContext) -> Decision:
        said = normalize(str(ctx.message.get("text") or ""))
        if any(_has_phrase(said, normalize(word)) for word in HANDOFF_WORDS):
            return Decision([{"type": "handoff", "reason": "the customer asked for a person"}])
        answer = await self._complete(await self._messages(ctx))
        if not answer or HANDOFF in answer.upper().replace(" ", ""):
            reason = "the assistant has no answer in its knowledge"
            return Decision([{"type": "handoff", "reason": reason}])
        return Decision([{"type": "reply", "text": answer[:MAX_TEXT]}])

    async def _messages(self, ctx: TurnContext) -> list[dict[str, str]]:
        history = await ctx.history(HISTORY) if ctx.history is not None else []
        # The message answered comes last (a provider's time, to the second, may
        # sort it before the bot's previous answer).
        history = [m for m in history if m.get("_id") != ctx.message.get("_id")]
        history.append(ctx.message)
        messages = [{"role": "system", "content": self.system}]
        for doc in history:
            text = str(doc.get("text") or "").strip()
            if not text or doc.get("kind") in ("note", "event"):
                continue
            role = "user" if doc.get("direction") == "in" else "assistant"
            messages.append({"role": role, "content": text})
        return messages

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {"model": self.model, "messages": messages, "temperature": 0.2}
        try:
            async with self._session().post(
                self.url,
                data=json.dumps(body, ensure_ascii=False).encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if response.status != 200:
                    raise BotFailure(f"the model endpoint answered {response.status}")
                raw = await response.content.read(MAX_ANSWER + 1)
        except TimeoutError:
            raise BotFailure(
                f"the model endpoint did not answer within {self.timeout:g} s"
            ) from None
        except aiohttp.ClientError as error:
            raise BotFailure(f"cannot reach the model endpoint ({type(error).__name__})") from None
        if len(raw) > MAX_ANSWER:
            raise BotFailure("the model's answer is too large")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BotFailure("the model endpoint's answer is not a chat completion") from None
        if not isinstance(content, str):
            raise BotFailure("the model endpoint's answer is not a chat completion")
        return content.strip()
