"""Addresses as the hub keeps them: phone numbers in E.164, e-mail addresses
lower-cased. Pure functions, shared by the channels (which normalise at the
edge) and the contact services.
"""

from __future__ import annotations

import functools
import unicodedata

import phonenumbers

from hub.model import IdentityRef


class InvalidIdentity(ValueError):
    pass


@functools.lru_cache(maxsize=65536)
def normalize_phone(raw: str, default_region: str = "US") -> str:
    """Return `raw` as E.164 (`+15551234567`), or raise InvalidIdentity.

    Remembered per input (parsing is a tenth of the hub's CPU per inbound
    message, and the same customers write again and again); a refusal is not."""
    text = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sip:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    text = text.split("@", 1)[0]
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as error:
        raise InvalidIdentity(f"not a phone number: {raw!r}") from error
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentity(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    text = raw.strip()
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1 : -1]
    text = text.strip().lower()
    local, at, domain = text.partition("@")
    labels = domain.split(".")
    if (
        not at
        or not local
        or "@" in domain
        or len(labels) < 2
        or not all(labels)
        or any(c.isspace() or c in "<>" or unicodedata.category(c) == "Cc" for c in text)
    ):
        raise InvalidIdentity(f"not an e-mail address: {raw!r}")
    return text


def phone_ref(raw: str, default_region: str, name: str | None = None) -> IdentityRef:
    return IdentityRef(kind="phone", value=normalize_phone(raw, default_region), name=name)


def email_ref(raw: str, name: str | None = None) -> IdentityRef:
    return IdentityRef(kind="email", value=normalize_email(raw), name=name)
