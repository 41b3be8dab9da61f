"""Flow bots: a TOML file of named steps (CONTRACT.md, "Flow bots"), run inside the hub.

`load_flow` reads and checks a file; every error names the file, the step and the
problem, so `hub check` and `hub serve` stop on it. `FlowBot.decide` takes one
customer message and the conversation's flow state (kept in the store by the
runtime, so it survives a restart) and returns the actions and the next state;
it touches nothing itself.

How a flow runs:
- the customer's first message (of a conversation new to the bot) enters `start`
  (outside `[hours]`: `closed_text`, then a handoff); it never counts as a miss;
- a step says `say` (or asks `ask`), with its `options` offered after the text;
  then it waits for a choice (options), an answer (ask), or continues: `handoff`
  hands off after saying, `go` continues at another step (waiting there for a
  choice when that step offers options, without repeating its text; else saying it);
- a choice matches by its number, its label or a `match` word; an answer to an
  `ask` is checked by `validate` and kept by `save` (a contact field or
  `attributes.<name>`), then the flow goes on at `go` (or hands off by `handoff`);
- a `handoff_words` word anywhere hands off at once; `max_misses` unrecognised
  answers in a row hand off, a miss before that says `fallback` (or `retry`).
Matching ignores case, punctuation and surrounding spaces.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bots.actions import Decision, TurnContext
from hub.addresses import InvalidIdentity, normalize_email, normalize_phone
from hub.services.placeholders import PlaceholderError, fill, placeholder_names

# A text, or a table of texts by locale ({en = "...", ru = "..."}).
Text = str | dict[str, str]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONTACT_FIELDS = ("name", "email", "phone", "birthday", "locale")
DEFAULT_FALLBACK = "Sorry, I did not get that."
# Steps one message may pass through (a `go` chain); a flow whose chain is longer
# (a loop of `go` without a question) is an error found at load.
MAX_CHAIN = 20


class FlowError(ValueError):
    """A flow file problem: the message names the file, the step and what is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Option(_Model):
    label: Text
    match: list[str] = []
    go: str


class Step(_Model):
    say: Text | None = None
    ask: Text | None = None
    options: list[Option] = []
    go: str | None = None
    save: str | None = None
    check: Literal["email", "phone", "date", "text"] | None = Field(default=None, alias="validate")
    retry: Text | None = None
    handoff: str | None = None


class Hours(_Model):
    timezone: str
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = [
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
    ]
    open: str
    close: str
    closed_text: Text

    @field_validator("open", "close")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not a time of day such as '09:00'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use one such as 'Europe/Moscow')"
            ) from None
        return value

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        if DAYS[local.weekday()] not in self.days:
            return False
        opens, closes = (time.fromisoformat(self.open), time.fromisoformat(self.close))
        clock = local.time().replace(tzinfo=None)
        if opens <= closes:
            return opens <= clock < closes
        return clock >= opens or clock < closes  # open over midnight


class Flow(_Model):
    start: str
    handoff_words: list[str] = []
    max_misses: int = Field(default=2, ge=1, le=20)
    fallback: Text = DEFAULT_FALLBACK
    hours: Hours | None = None
    steps: dict[str, Step]


# -- loading --------------------------------------------------------------------------


def _where(loc: tuple[Any, ...]) -> tuple[str, str]:
    """(the step part, the key part) of a validation error's location."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "steps":
        step = f"steps.{parts[1]}"
        key = ""
        for part in parts[2:]:
            key += f"[{part}]" if part.isdigit() else ("." if key else "") + part
        return step, key
    key = ""
    for part in parts:
        key += f"[{part}]" if part.isdigit() else ("." if key else "") + part
    return "", key


def _check_text(value: Text | None, where: str) -> None:
    if value is None:
        return
    texts = [value] if isinstance(value, str) else list(value.values())
    if isinstance(value, dict):
        if not value:
            raise FlowError(f"{where}: an empty table of texts")
        for locale in value:
            if not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", locale):
                raise FlowError(f"{where}: {locale!r} is not a locale such as 'en' or 'ru'")
    for text in texts:
        if not text.strip():
            raise FlowError(f"{where}: an empty text")
        try:
            placeholder_names(text)
        except PlaceholderError as error:
            raise FlowError(f"{where}: {error}") from None


def _check_step(flow: Flow, name: str, step: Step, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise FlowError(f"{where}: a step name is 1-64 characters of A-Za-z0-9_-")
    if step.say is None and step.ask is None and step.handoff is None:
        raise FlowError(f"{where}: a step needs say, ask or handoff")
    if step.say is not None and step.ask is not None:
        raise FlowError(f"{where}: say and ask together (a step says or asks)")
    if step.ask is not None and step.options:
        raise FlowError(f"{where}: ask and options together (offer options with say)")
    if step.options and step.go is not None:
        raise FlowError(f"{where}: go and options together (each option has its own go)")
    if step.go is not None and step.handoff is not None:
        raise FlowError(f"{where}: go and handoff together")
    if step.options and step.handoff is not None:
        raise FlowError(f"{where}: handoff and options together")
    for key in ("save", "check", "retry"):
        if getattr(step, key) is not None and step.ask is None:
            shown = "validate" if key == "check" else key
            raise FlowError(f"{where}: {shown} needs ask (it is about the customer's answer)")
    if step.retry is not None and step.check is None:
        raise FlowError(f"{where}: retry needs validate")
    if step.save is not None:
        field = step.save
        if field.startswith("attributes."):
            if not re.fullmatch(r"attributes\.[\w -]{1,64}", field):
                raise FlowError(f"{where}: save: {field!r} is not attributes.<name>")
        elif field not in CONTACT_FIELDS:
            raise FlowError(
                f"{where}: save: {field!r} is not a contact field "
                f"({', '.join(CONTACT_FIELDS)}) or attributes.<name>"
            )
        if field in ("email", "phone", "birthday") and step.check != (
            "date" if field == "birthday" else field
        ):
            wanted = "date" if field == "birthday" else field
            raise FlowError(f'{where}: save = "{field}" needs validate = "{wanted}"')
    if len(step.options) > 10:
        raise FlowError(f"{where}: options: at most 10 (what a WhatsApp list holds)")
    targets = [("go", step.go)] + [(f"options[{i}].go", o.go) for i, o in enumerate(step.options)]
    for key, target in targets:
        if target is not None and target not in flow.steps:
            raise FlowError(f"{where}: {key}: no step {target!r}")
    for key in ("say", "ask", "retry"):
        _check_text(getattr(step, key), f"{where}: {key}")
    for index, option in enumerate(step.options):
        _check_text(option.label, f"{where}: options[{index}].label")
        if any(not normalize(word) for word in option.match):
            raise FlowError(f"{where}: options[{index}].match: an empty word")


def _check_chains(flow: Flow, source: str) -> None:
    """Every `go` chain of steps that only say ends: at options, a question, a
    handoff or a step without `go` (a loop would never wait for the customer)."""
    for name in flow.steps:
        seen: list[str] = []
        current = name
        while True:
            if current in seen:
                loop = " -> ".join([*seen[seen.index(current) :], current])
                raise FlowError(
                    f"{source}: steps.{name}: go: a loop of steps that never waits ({loop})"
                )
            seen.append(current)
            step = flow.steps[current]
            if step.ask is not None or step.options or step.handoff is not None:
                break
            if step.go is None or flow.steps[step.go].options:
                break
            current = step.go
        if len(seen) > MAX_CHAIN:
            raise FlowError(f"{source}: steps.{name}: go: a chain of more than {MAX_CHAIN} steps")


def parse_flow(data: dict[str, Any], source: str) -> Flow:
    """Check parsed TOML as a flow; FlowError names `source`, the step and the problem."""
    try:
        flow = Flow.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        where_step, key = _where(item["loc"])
        if item["type"] == "extra_forbidden":
            problem = f"{key}: unknown key"
        elif item["type"] == "missing":
            problem = f"{key}: required key is missing"
        else:
            problem = f"{key}: {item['msg']}"
        prefix = f"{where_step}: " if where_step else ""
        raise FlowError(f"{source}: {prefix}{problem}") from None
    if not flow.steps:
        raise FlowError(f"{source}: steps: a flow needs at least one step")
    if flow.start not in flow.steps:
        raise FlowError(f"{source}: start: no step {flow.start!r}")
    _check_text(flow.fallback, f"{source}: fallback")
    if flow.hours is not None:
        _check_text(flow.hours.closed_text, f"{source}: hours.closed_text")
    for index, word in enumerate(flow.handoff_words):
        if not normalize(word):
            raise FlowError(f"{source}: handoff_words[{index}]: an empty word")
    for name, step in flow.steps.items():
        _check_step(flow, name, step, f"{source}: steps.{name}")
    _check_chains(flow, source)
    return flow


def load_flow(path: str | Path) -> Flow:
    """Read and check the flow file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise FlowError(f"{file}: cannot read the flow file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise FlowError(f"{file}: not UTF-8 text (byte {error.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FlowError(f"{file}: not valid TOML: {error}") from None
    return parse_flow(data, str(file))


# -- matching ---------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, punctuation and symbols out, spaces collapsed and trimmed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    cleaned = "".join(
        c if unicodedata.category(c)[0] in "LN" else " "
        for c in folded.replace("\u0451", "\u0435")  # Russian yo matches ye
    )
    return " ".join(cleaned.split())


def _has_phrase(message: str, phrase: str) -> bool:
    """Whether the normalized `phrase` is the message or whole words of it; a
    single word of four letters or more also matches the words it begins
    ("price" prices, "оператор" оператора: endings change in many languages)."""
    if not phrase:
        return False
    if message == phrase or f" {phrase} " in f" {message} ":
        return True
    if " " in phrase or len(phrase) < 4:
        return False
    return any(word.startswith(phrase) for word in message.split())


def localized(text: Text, locale: str | None) -> str:
    """The text for the contact's locale ('ru', 'ru-RU'), else the table's first."""
    if isinstance(text, str):
        return text
    if locale:
        wanted = locale.replace("_", "-").lower()
        for key, value in text.items():
            if key.replace("_", "-").lower() == wanted:
                return value
        short = wanted.split("-")[0]
        for key, value in text.items():
            if key.replace("_", "-").lower().split("-")[0] == short:
                return value
    return next(iter(text.values()))


# -- running ----------------------------------------------------------------------------


def guess_locale(text: str) -> str | None:
    """The language a message is written in, as far as its letters tell: Cyrillic
    'ru', Latin 'en'; None when it has no letters ("2")."""
    cyrillic = latin = 0
    for char in text:
        if char.isalpha():
            if "\u0400" <= char <= "\u04ff":
                cyrillic += 1
            elif char.isascii():
                latin += 1
    if cyrillic > latin:
        return "ru"
    if latin:
        return "en"
    return None


@dataclass
class _Turn:
    flow: Flow
    contact: dict[str, Any]
    actions: list[dict[str, Any]]
    # The contact's locale, else the language the customer writes in.
    locale: str | None = None

    def text(self, text: Text) -> str:
        filled = fill(localized(text, self.locale), self.contact)
        if not (self.contact.get("name") or "").strip():
            filled = re.sub(r" +([!?.,])", r"\1", filled)  # "Hi {first_name}!" with no name
        return filled

    def labels(self, step: Step) -> list[str]:
        return [self.text(o.label) for o in step.options]

    def say(self, text: Text, step: Step | None = None) -> None:
        action: dict[str, Any] = {"type": "reply", "text": self.text(text)}
        offered = step
        if step is not None and not step.options and step.go is not None and step.say is not None:
            offered = self.flow.steps[step.go]  # the choices it goes on to wait for
        if offered is not None and offered.options:
            action["buttons"] = self.labels(offered)
        self.actions.append(action)

    def state(self, **fields: Any) -> dict[str, Any]:
        return {**fields, "locale": self.locale}

    def handoff(self, reason: str) -> None:
        self.actions.append({"type": "handoff", "reason": reason})

    def enter(self, name: str) -> dict[str, Any] | None:
        """Say step `name` and what follows it; the state to wait in (None: handed off)."""
        for _ in range(MAX_CHAIN + 1):
            step = self.flow.steps[name]
            if step.ask is not None:
                self.say(step.ask)
                return self.state(step=name, misses=0)
            if step.say is not None:
                self.say(step.say, step)
            if step.options:
                return self.state(step=name, misses=0)
            if step.handoff is not None:
                self.handoff(step.handoff)
                return None
            if step.go is None:
                return self.state(step=name, misses=0, ended=True)
            if self.flow.steps[step.go].options:
                # Wait there without repeating its text (its choices came with this one).
                return self.state(step=step.go, misses=0)
            name = step.go
        raise FlowError(f"steps.{name}: go: a chain of more than {MAX_CHAIN} steps")


def _choice(step: Step, turn: _Turn, message: dict[str, Any]) -> Option | None:
    button = message.get("button") or {}
    said = [str(message.get("text") or "")]
    said += [str(button[k]) for k in ("payload", "title") if button.get(k)]
    for raw in said:
        text = normalize(raw)
        if not text:
            continue
        for index, option in enumerate(step.options):
            if text == str(index + 1) or text == normalize(turn.text(option.label)):
                return option
        for option in step.options:
            labels = [option.label] if isinstance(option.label, str) else option.label.values()
            words = [normalize(w) for w in (*option.match, *labels)]
            if any(_has_phrase(text, w) for w in words):
                return option
    return None


def checked_answer(kind: str | None, raw: str, region: str = "US") -> Any:
    """The answer as it is kept, or None when it is not a valid `kind`."""
    text = raw.strip()
    if not text:
        return None
    if kind == "email":
        try:
            return normalize_email(text)
        except InvalidIdentity:
            return None
    if kind == "phone":
        try:
            return normalize_phone(text, region)
        except InvalidIdentity:
            return None
    if kind == "date":
        return _date(text)
    return text[:500]


def _date(text: str) -> dict[str, int] | None:
    patterns = [
        (r"(\d{4})-(\d{1,2})-(\d{1,2})", ("y", "m", "d")),
        (r"(\d{1,2})[./](\d{1,2})[./](\d{4})", ("d", "m", "y")),
        (r"(\d{1,2})[./](\d{1,2})", ("d", "m")),
    ]
    for pattern, order in patterns:
        match = re.fullmatch(pattern, text)
        if not match:
            continue
        parts = dict(zip(order, (int(g) for g in match.groups()), strict=True))
        try:
            date(parts.get("y", 2000), parts["m"], parts["d"])
        except ValueError:
            return None
        found = {"month": parts["m"], "day": parts["d"]}
        if "y" in parts:
            found["year"] = parts["y"]
        return found
    return None


def _saved(field: str, value: Any) -> dict[str, Any]:
    """The set_contact action that keeps `value` in `field`."""
    if field.startswith("attributes."):
        shown = value if isinstance(value, str) else "-".join(str(v) for v in value.values())
        return {"type": "set_contact", "attributes": {field.split(".", 1)[1]: shown}}
    return {"type": "set_contact", field: value}


class FlowBot:
    """A bot that runs a flow file (`kind = "flow"`)."""

    pure = True  # decide computes only (bots.runtime asks it before claiming the turn)

    def __init__(self, bot_id: str, flow: Flow) -> None:
        self.id = bot_id
        self.flow = flow

    @classmethod
    def from_settings(cls, settings: Any, **_: Any) -> FlowBot:
        return cls(settings.id, load_flow(settings.flow))

    async def decide(self, ctx: TurnContext) -> Decision:
        flow = self.flow
        message = ctx.message
        state = ctx.state
        locale = (
            ctx.contact.get("locale")
            or guess_locale(str(message.get("text") or ""))
            or (state or {}).get("locale")
        )
        turn = _Turn(flow, ctx.contact, [], str(locale) if locale else None)
        said = normalize(str(message.get("text") or ""))
        if any(_has_phrase(said, normalize(w)) for w in flow.handoff_words):
            turn.handoff("the customer asked for a person")
            return Decision(turn.actions, None)
        if state is None:  # the conversation is new to the bot: its first message
            if flow.hours is not None and not flow.hours.is_open(ctx.now):
                turn.say(flow.hours.closed_text)
                turn.handoff("outside opening hours")
                return Decision(turn.actions, None)
            return Decision(turn.actions, turn.enter(flow.start))
        name = str(state.get("step") or flow.start)
        step = flow.steps.get(name)
        if step is None or state.get("ended"):  # a flow that ended, or a step since removed
            return Decision(turn.actions, turn.enter(flow.start))
        misses = int(state.get("misses") or 0)
        if step.options:
            option = _choice(step, turn, message)
            if option is not None:
                return Decision(turn.actions, turn.enter(option.go))
            return self._miss(turn, step, name, misses, flow.fallback)
        if step.ask is not None:
            value = checked_answer(step.check, str(message.get("text") or ""), ctx.region)
            if value is None:
                return self._miss(turn, step, name, misses, step.retry or flow.fallback)
            if step.save is not None:
                turn.actions.append(_saved(step.save, value))
                if step.save == "locale" and isinstance(value, str):
                    turn.locale = value
            if step.handoff is not None:
                turn.handoff(step.handoff)
                return Decision(turn.actions, None)
            if step.go is None:
                return Decision(turn.actions, turn.state(step=name, misses=0, ended=True))
            return Decision(turn.actions, turn.enter(step.go))
        return Decision(turn.actions, turn.enter(flow.start))

    def _miss(self, turn: _Turn, step: Step, name: str, misses: int, text: Text) -> Decision:
        misses += 1
        if misses >= self.flow.max_misses:
            turn.handoff(f"the bot did not understand {misses} answers in a row")
            return Decision(turn.actions, None)
        turn.say(text, step)
        return Decision(turn.actions, turn.state(step=name, misses=misses))
