"""docs/configuration.md against the code: every key the config accepts is documented
in its own section, and every TOML example on the page loads."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import hub.config
from channels import channel_class, known_channels
from hub.config import Settings, parse_settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# The keys of an `[[inboxes]]` table that are the hub's, not the channel's.
INBOX_KEYS = ("id", "channel", "assignment", "first_response", "escalate_after")

# Values for the variables the page's examples read with ${VAR}; any other gets
# DEFAULT_ENV, which passes every secret's checks but a bot token's.
ENV_VALUES = {"TELEGRAM_BOT_TOKEN": "123456789:AAE-doc-test-token_0123456789abcdef"}
DEFAULT_ENV = "doc-test-secret-0123456789"


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(doc: str, marker: str) -> str:
    """The text under the heading that contains `marker`, up to the next heading of
    the same or a higher level."""
    lines = doc.splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"(#+)\s", line)
        if heading and marker in line:
            level = len(heading.group(1))
            body = []
            for later in lines[start + 1 :]:
                other = re.match(r"(#+)\s", later)
                if other and len(other.group(1)) <= level:
                    break
                body.append(later)
            return "\n".join(body)
    raise AssertionError(f"{DOC.name}: no heading with {marker} (one section per config section)")


def _models(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The pydantic models an annotation holds, each with whether it is a list of them
    (a TOML array of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        return [(model, True) for arg in args for model, _ in _models(arg)]
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _models(arg)]
    return []


def _model_keys(model: type[BaseModel], path: str, array: bool) -> Iterator[tuple[str, str]]:
    """(section marker, key) for every field of `model` and of the models it nests."""
    marker = f"`[[{path}]]`" if array else f"`[{path}]`"
    for name, info in model.model_fields.items():
        key = info.alias or name
        nested = _models(info.annotation)
        if nested:
            for child, child_array in nested:
                yield from _model_keys(child, f"{path}.{key}", child_array)
        else:
            yield marker, key


def hub_keys() -> list[tuple[str, str]]:
    """The keys of the hub's own sections: the pydantic models hub.config.Settings
    holds, walked recursively (nested models are sections of their own), and those
    of the model the raw file is validated with, when hub.config has one."""
    hints = typing.get_type_hints(Settings)  # in the module that defines Settings
    keys: list[tuple[str, str]] = []
    for item in dataclasses.fields(Settings):
        for model, array in _models(hints[item.name]):
            keys.extend(_model_keys(model, item.name, array))
    raw = getattr(hub.config, "_RawConfig", None)
    if isinstance(raw, type) and issubclass(raw, BaseModel):
        for name, info in raw.model_fields.items():
            for model, array in _models(info.annotation):
                keys.extend(_model_keys(model, info.alias or name, array))
    return list(dict.fromkeys(keys))


def channel_keys() -> list[tuple[str, str]]:
    """The keys of every registered channel's Settings, by channel. Channels the test
    suite registers for itself (defined under tests/) are not the product's."""
    keys: list[tuple[str, str]] = []
    for name in known_channels():
        cls = channel_class(name)
        assert cls is not None, name
        if cls.__module__.split(".")[0] == "tests":
            continue
        marker = f'`channel = "{name}"`'
        for field, info in cls.Settings.model_fields.items():
            keys.append((marker, info.alias or field))
    return keys


def _missing(keys: list[tuple[str, str]]) -> list[str]:
    doc = _doc()
    missing = []
    for marker, key in keys:
        if f"`{key}`" not in _section(doc, marker):
            missing.append(f"{key} (under the heading {marker})")
    return missing


def test_the_walk_finds_the_sections_and_channels() -> None:
    """A guard on the test itself: an empty walk would pass anything."""
    markers = {marker for marker, _ in hub_keys()}
    assert {"`[server]`", "`[store]`", "`[dispatcher]`", "`[sandbox]`"} <= markers
    channels = {marker for marker, _ in channel_keys()}
    assert '`channel = "twilio"`' in channels
    assert len(channels) >= 6


def test_every_hub_setting_is_documented() -> None:
    missing = _missing(hub_keys())
    assert not missing, f"{DOC.name} lacks these config keys: " + ", ".join(missing)


def test_every_channel_setting_is_documented() -> None:
    missing = _missing(channel_keys())
    assert not missing, f"{DOC.name} lacks these inbox keys: " + ", ".join(missing)


def test_the_inbox_keys_are_documented() -> None:
    section = _section(_doc(), "`[[inboxes]]`")
    for key in INBOX_KEYS:
        assert f"`{key}`" in section, key
    for name in known_channels():
        cls = channel_class(name)
        if cls is not None and cls.__module__.split(".")[0] != "tests":
            assert f"`{name}`" in section, f"channel {name} is not named under [[inboxes]]"


def _toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", _doc(), flags=re.S | re.M)


def test_the_examples_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tomllib

    blocks = _toml_blocks()
    assert blocks, f"{DOC.name} has no TOML example"
    monkeypatch.delenv("MONGODB_URI", raising=False)
    for block in blocks:
        for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block):
            monkeypatch.setenv(name, ENV_VALUES.get(name, DEFAULT_ENV))
        settings = parse_settings(tomllib.loads(block), source=DOC.name, base_dir=tmp_path)
        assert settings.inboxes, "every example configures at least one inbox"
