"""Placeholders in texts sent to a contact: `{first_name}`, `{name}` and the
contact's attributes (`{city}`). Used by greetings (and open to campaigns)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

BUILTIN = frozenset({"first_name", "name"})
_NAME = re.compile(r"^[\w -]{1,64}$")


class PlaceholderError(ValueError):
    """A text whose placeholders cannot be read (an unclosed brace, `{}`...)."""


def placeholder_names(text: str) -> list[str]:
    """The placeholders a text uses, in order; PlaceholderError if it is malformed.
    `{{` and `}}` are literal braces."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise PlaceholderError(f"{error} in {text!r}") from None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if not field_name or spec or conversion or not _NAME.match(field_name):
            raise PlaceholderError(f"malformed placeholder {{{field_name}}} in {text!r}")
        names.append(field_name)
    return names


def first_name(name: str | None) -> str:
    return (name or "").strip().split(" ")[0] if name else ""


def fill(text: str, contact: Mapping[str, Any]) -> str:
    """The text with the contact's values in its placeholders (an attribute the
    contact lacks becomes empty). A malformed text is returned as it is."""
    name = str(contact.get("name") or "").strip()
    attributes = contact.get("attributes") or {}
    values: dict[str, str] = {}
    try:
        names = placeholder_names(text)
    except PlaceholderError:
        return text
    for field_name in names:
        if field_name == "first_name":
            values[field_name] = first_name(name)
        elif field_name == "name":
            values[field_name] = name
        else:
            value = attributes.get(field_name) if isinstance(attributes, Mapping) else None
            values[field_name] = "" if value is None else str(value)
    return text.format_map(values)
