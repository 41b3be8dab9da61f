"""What a bot is given for one customer message, and what it answers: actions.

An action is the JSON object of CONTRACT.md ("External bots"): `reply` (text and
buttons), `set_contact`, `add_labels`, `handoff`, `resolve`. Every kind of bot
answers in that shape; `parse_actions` checks an external bot's answer (also
Rasa's REST-channel list) and raises `BadAnswer` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_TEXT = 4096
MAX_BUTTONS = 10
MAX_ACTIONS = 20


class BotFailure(Exception):
    """A bot could not answer (unreachable, an error); the reason is logged and
    shown to agents in the thread."""


class BadAnswer(ValueError):
    """A bot's answer the hub cannot act on; the message says why."""


@dataclass
class TurnContext:
    """One customer message for a bot: the message, its conversation and contact
    as stored, the bot's state for the conversation (None: new to the bot)."""

    bot_id: str
    message: dict[str, Any]
    conversation: dict[str, Any]
    contact: dict[str, Any]
    state: dict[str, Any] | None
    now: datetime
    region: str = "US"
    # The conversation's last messages, oldest first (read on demand).
    history: Callable[[int], Coroutine[Any, Any, list[dict[str, Any]]]] | None = None


@dataclass
class Decision:
    """A bot's answer to one message: actions in order, and its next state for the
    conversation (None: none kept, the next message starts afresh)."""

    actions: list[dict[str, Any]]
    state: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplyAction(_Action):
    type: Literal["reply"]
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    buttons: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default=[], max_length=MAX_BUTTONS
    )


class Birthday(_Action):
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    year: int | None = Field(default=None, ge=1900, le=2100)


class SetContactAction(_Action):
    type: Literal["set_contact"]
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    birthday: Birthday | None = None
    locale: str | None = Field(default=None, max_length=35)
    attributes: dict[str, Annotated[str, Field(max_length=1000)]] | None = Field(
        default=None, max_length=50
    )


class AddLabelsAction(_Action):
    type: Literal["add_labels"]
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=20)


class HandoffAction(_Action):
    type: Literal["handoff"]
    reason: str | None = Field(default=None, max_length=500)


class ResolveAction(_Action):
    type: Literal["resolve"]


Action = Annotated[
    ReplyAction | SetContactAction | AddLabelsAction | HandoffAction | ResolveAction,
    Field(discriminator="type"),
]
_ACTIONS: TypeAdapter[list[Action]] = TypeAdapter(list[Action])
KNOWN = ("reply", "set_contact", "add_labels", "handoff", "resolve")


class _RasaButton(BaseModel):
    title: str
    payload: str | None = None


class _RasaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    recipient_id: str | None = None
    text: str | None = None
    buttons: list[_RasaButton] = []


_RASA: TypeAdapter[list[_RasaMessage]] = TypeAdapter(list[_RasaMessage])


def _problem(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(p) for p in item["loc"])
    return f"{where}: {item['msg']}" if where else item["msg"]


def parse_actions(answer: Any) -> list[dict[str, Any]]:
    """The actions of an external bot's JSON answer: `{"actions": [...]}`, or a
    Rasa REST-channel list of messages. BadAnswer when it is neither."""
    if isinstance(answer, list):
        return _from_rasa(answer)
    if not isinstance(answer, dict) or not isinstance(answer.get("actions"), list):
        raise BadAnswer('the answer is not {"actions": [...]} nor a Rasa list of messages')
    raw = answer["actions"]
    if len(raw) > MAX_ACTIONS:
        raise BadAnswer(f"more than {MAX_ACTIONS} actions")
    for index, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in KNOWN:
            raise BadAnswer(f"actions[{index}]: unknown action {kind!r}")
    try:
        actions = _ACTIONS.validate_python(raw)
    except ValidationError as error:
        raise BadAnswer(f"actions.{_problem(error)}") from None
    return [a.model_dump(exclude_none=True) for a in actions]


def _from_rasa(answer: list[Any]) -> list[dict[str, Any]]:
    if len(answer) > MAX_ACTIONS:
        raise BadAnswer(f"more than {MAX_ACTIONS} messages")
    try:
        messages = _RASA.validate_python(answer)
    except ValidationError as error:
        raise BadAnswer(f"not a Rasa answer: {_problem(error)}") from None
    actions: list[dict[str, Any]] = []
    for message in messages:
        if not message.text:
            continue  # images and custom payloads are not carried
        action: dict[str, Any] = {"type": "reply", "text": message.text[:MAX_TEXT]}
        titles = [b.title for b in message.buttons if b.title][:MAX_BUTTONS]
        if titles:
            action["buttons"] = titles
        actions.append(action)
    return actions
