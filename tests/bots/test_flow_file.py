"""Flow files and `[[bots]]` config: an error names the file, the step and the
problem, and stops `hub check` and `hub serve`; the flow's matching, locales,
hours and placeholders."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bots.actions import TurnContext
from bots.flow import FlowBot, FlowError, Hours, load_flow, normalize, parse_flow
from hub.config import ConfigError, parse_settings
from tests.bots.conftest import SHOP_FLOW
from tests.test_cli import run_hub

TELEGRAM = {
    "id": "tg",
    "channel": "telegram",
    "token": "123456789:AAE-flow-test-token_0123456789abcdef",
    "secret_token": "flow-test-secret",
}

GOOD = """
start = "menu"
[steps.menu]
say = "Choose"
options = [{ label = "Prices", match = ["price"], go = "prices" }]
[steps.prices]
say = "Coffee 3 EUR."
go = "menu"
"""


def flow_error(text: str, tmp_path: Path) -> str:
    file = tmp_path / "flow.toml"
    file.write_text(text)
    with pytest.raises(FlowError) as caught:
        load_flow(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: "), message
    return message[len(f"{file}: ") :]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            GOOD.replace('go = "prices"', 'go = "pricez"'),
            "steps.menu: options[0].go: no step 'pricez'",
        ),
        (GOOD.replace('go = "menu"', 'go = "nowhere"'), "steps.prices: go: no step 'nowhere'"),
        (GOOD.replace('start = "menu"', 'start = "begin"'), "start: no step 'begin'"),
        (GOOD + 'colour = "red"\n', "steps.prices: colour: unknown key"),
        (GOOD.replace('say = "Coffee 3 EUR."', 'sai = "Coffee"'), "steps.prices: sai: unknown key"),
        (
            GOOD + '[steps.mail]\nask = "E-mail?"\nsave = "email"\nvalidate = "emial"\n',
            "steps.mail: validate: Input should be 'email', 'phone', 'date' or 'text'",
        ),
        (
            GOOD + '[steps.mail]\nask = "E-mail?"\nsave = "shoe_size"\n',
            "steps.mail: save: 'shoe_size' is not a contact field",
        ),
        (
            GOOD + '[steps.mail]\nask = "E-mail?"\nsave = "email"\n',
            'steps.mail: save = "email" needs validate = "email"',
        ),
        (GOOD + "[steps.empty]\n", "steps.empty: a step needs say, ask or handoff"),
        (
            GOOD + '[steps.a]\nsay = "A"\ngo = "b"\n[steps.b]\nsay = "B"\ngo = "a"\n',
            "steps.a: go: a loop of steps that never waits (a -> b -> a)",
        ),
        (GOOD + '[steps.x]\nsay = "Hi {first_name"\n', "steps.x: say: "),
        (GOOD.replace('say = "Choose"', 'say = { en = "" }'), "steps.menu: say: an empty text"),
        (
            GOOD + '[hours]\ntimezone = "Mars/Olympus"\nopen = "09:00"\nclose = "18:00"\n'
            'closed_text = "Closed"\n',
            "hours.timezone: Value error, unknown time zone 'Mars/Olympus'",
        ),
        ("start = \n", "not valid TOML"),
    ],
)
def test_a_flow_file_error_names_the_file_the_step_and_the_problem(
    text: str, problem: str, tmp_path: Path
) -> None:
    assert problem in flow_error(text, tmp_path)


def test_the_shipped_shop_flow_loads() -> None:
    flow = load_flow(SHOP_FLOW)
    assert flow.start == "menu" and len(flow.steps["menu"].options) == 4


def config(tmp_path: Path, bots: list[dict[str, Any]]) -> Any:
    return parse_settings(
        {"inboxes": [TELEGRAM], "bots": bots}, source="hub.toml", base_dir=tmp_path
    )


def test_bot_config_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "flow.toml").write_text(GOOD)
    cases = [
        ({"id": "b", "kind": "robot"}, "hub.toml: bots[0].kind: unknown kind 'robot'"),
        (
            {"id": "b", "kind": "flow", "flow": "flow.toml", "colour": 1},
            "bots[0].colour: unknown key",
        ),
        ({"id": "b", "kind": "flow"}, "hub.toml: bots[0].flow: required key is missing"),
        ({"id": "b", "kind": "flow", "flow": "flow.toml", "inboxes": ["xx"]}, "no inbox 'xx'"),
        ({"id": "b", "kind": "http", "url": "ftp://x", "secret": "s3cret-value"}, "bots[0].url"),
        (
            {"id": "b", "kind": "llm", "api_base": "http://127.0.0.1:1/v1", "model": "m",
             "knowledge": ["faq.md"]},
            "hub.toml: bots[0].knowledge[0]: no such file",
        ),
    ]  # fmt: skip
    for bot, message in cases:
        with pytest.raises(ConfigError) as caught:
            config(tmp_path, [bot])
        assert message in str(caught.value), (bot, str(caught.value))
    two = [
        {"id": "a", "kind": "flow", "flow": "flow.toml", "inboxes": ["tg"]},
        {"id": "b", "kind": "flow", "flow": "flow.toml", "inboxes": ["tg"]},
    ]
    with pytest.raises(
        ConfigError, match=r"bots\[1\].inboxes\[0\]: inbox 'tg' already has bot 'a'"
    ):
        config(tmp_path, two)


def test_secrets_of_bots_are_redacted(tmp_path: Path) -> None:
    settings = config(
        tmp_path,
        [
            {"id": "h", "kind": "http", "url": "http://127.0.0.1:1/", "secret": "bot-secret-123",
             "inboxes": ["tg"]},
            {"id": "l", "kind": "llm", "api_base": "http://127.0.0.1:1/v1", "model": "m",
             "api_key": "sk-llm-key-456"},
        ],
    )  # fmt: skip
    assert {"bot-secret-123", "sk-llm-key-456"} <= settings.secrets


def test_hub_check_stops_on_a_flow_error_naming_file_step_and_problem(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shop.toml").write_text(GOOD.replace('go = "menu"', 'go = "nowhere"'))
    (tmp_path / "hub.toml").write_text(
        "[[inboxes]]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in TELEGRAM.items())
        + '\n[[bots]]\nid = "shop"\nkind = "flow"\ninboxes = ["tg"]\nflow = "flows/shop.toml"\n'
    )
    result = run_hub(tmp_path, "check", "--config", "hub.toml")
    assert result.returncode != 0
    assert "hub.toml: bots[0].flow: " in result.stderr
    assert "flows/shop.toml: steps.prices: go: no step 'nowhere'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_hub(tmp_path, "serve", "--config", "hub.toml")
    assert result.returncode != 0
    assert "flows/shop.toml: steps.prices: go: no step 'nowhere'" in result.stderr


def test_matching_ignores_case_punctuation_and_spaces() -> None:
    assert normalize("  PRICES, please!! ") == "prices please"
    assert normalize("«Оператор»?") == "оператор"


async def decide(flow_text: str, text: str, state: Any = None, **contact: Any) -> Any:
    import tomllib

    bot = FlowBot("b", parse_flow(tomllib.loads(flow_text), "flow.toml"))
    ctx = TurnContext(
        bot_id="b",
        message={"_id": "m", "text": text},
        conversation={"_id": "c"},
        contact=contact,
        state=state,
        now=datetime(2026, 12, 7, 12, 0, tzinfo=UTC),  # a Monday, 15:00 in Moscow
    )
    return await bot.decide(ctx)


async def test_hours_closed_text_then_a_handoff() -> None:
    flow = GOOD + (
        '[hours]\ntimezone = "Europe/Moscow"\ndays = ["sat", "sun"]\nopen = "09:00"\n'
        'close = "18:00"\nclosed_text = { en = "Closed now.", ru = "Сейчас закрыто." }\n'
    )
    decision = await decide(flow, "привет")
    assert decision.actions == [
        {"type": "reply", "text": "Сейчас закрыто."},
        {"type": "handoff", "reason": "outside opening hours"},
    ]
    open_now = Hours(timezone="Europe/Moscow", open="09:00", close="18:00", closed_text="x")
    assert open_now.is_open(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    assert not open_now.is_open(datetime(2026, 12, 7, 16, 0, tzinfo=UTC))


async def test_texts_by_the_contacts_locale_and_placeholders() -> None:
    flow = GOOD.replace(
        'say = "Choose"', 'say = { en = "Hi {first_name}", ru = "Привет, {first_name}" }'
    )
    decision = await decide(flow, "hello", name="Анна Петрова", locale="ru-RU")
    assert decision.actions[0]["text"] == "Привет, Анна"
    assert decision.actions[0]["buttons"] == ["Prices"]
    decision = await decide(flow, "hello", name="Ann")
    assert decision.actions[0]["text"] == "Hi Ann"
