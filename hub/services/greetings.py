"""Greetings settings (one document in `settings`), a contact's time zone and
quiet hours: what the greeting job (`scheduler.greetings`) and campaigns share.

`GET/PUT /api/greetings` read and replace the settings; `load_greeting_settings`
is what the jobs read. `contact_timezone` is the contact's own `timezone`, else
the zone of its phone number's country, else the settings' `default_timezone`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

from hub.model import utcnow
from hub.services.placeholders import BUILTIN, PlaceholderError, placeholder_names
from hub.store import Store

SETTINGS_ID = "greetings"

DEFAULT_SETTINGS: dict[str, Any] = {
    "enabled": False,
    "local_hour": 10,
    "quiet_hours": {"start": "21:00", "end": "09:00"},
    "default_timezone": "UTC",
    "birthday": {
        "templates": {
            "en": "Happy birthday, {first_name}! All the best from all of us.",
            "ru": "С днём рождения, {first_name}! Всего самого доброго.",  # noqa: RUF001
        }
    },
    "holidays": [
        {
            "date": "01-01",
            "name": "New Year",
            "templates": {
                "en": "Happy New Year, {first_name}!",
                "ru": "С Новым годом, {first_name}!",  # noqa: RUF001
            },
        },
        {
            "date": "03-08",
            "name": "8 March",
            "templates": {
                "en": "Happy International Women's Day, {first_name}!",
                "ru": "С 8 Марта, {first_name}!",  # noqa: RUF001
            },
        },
    ],
}

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MMDD = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
MAX_HOLIDAYS = 100
MAX_TEMPLATE = 2000


class GreetingSettingsError(ValueError):
    """A greetings settings document that cannot be used; `field` names the path."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class InvalidTimezone(ValueError):
    """A contact's own `timezone` is not a known IANA zone."""


@dataclass(frozen=True)
class Holiday:
    month: int
    day: int
    name: str
    templates: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.month:02d}-{self.day:02d}"


@dataclass(frozen=True)
class GreetingSettings:
    enabled: bool
    local_hour: int
    quiet_start: time
    quiet_end: time
    default_timezone: ZoneInfo
    birthday_templates: dict[str, str]
    holidays: tuple[Holiday, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def in_quiet_hours(self, local: datetime) -> bool:
        return in_quiet_hours(local.timetz().replace(tzinfo=None), self.quiet_start, self.quiet_end)

    def quiet_until(self, local: datetime) -> datetime:
        """When the quiet hours holding `local` end (`local` itself when not quiet)."""
        return quiet_until(local, self.quiet_start, self.quiet_end)


def in_quiet_hours(moment: time, start: time, end: time) -> bool:
    """Whether a local time of day falls in [start, end) (which may span midnight;
    start == end: no quiet hours)."""
    if start == end:
        return False
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def quiet_until(local: datetime, start: time, end: time) -> datetime:
    """The first local instant at or after `local` outside [start, end)."""
    if not in_quiet_hours(local.time(), start, end):
        return local
    day = local.date()
    if start > end and local.time() >= start:
        day = day + timedelta(days=1)
    wall = datetime.combine(day, end)
    return wall.replace(tzinfo=local.tzinfo)


def parse_hhmm(value: Any, field_name: str) -> time:
    if not isinstance(value, str) or not (match := _HHMM.match(value)):
        raise GreetingSettingsError(field_name, f"expected HH:MM (00:00-23:59), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def parse_zone(value: Any, field_name: str) -> ZoneInfo:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise GreetingSettingsError(field_name, f"expected an IANA time zone, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise GreetingSettingsError(field_name, f"unknown time zone {value!r}") from None


def _templates(value: Any, field_name: str, known: frozenset[str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise GreetingSettingsError(field_name, "expected an object {locale: text}, not empty")
    out: dict[str, str] = {}
    for locale, text in value.items():
        where = f"{field_name}.{locale}"
        if not isinstance(locale, str) or not _LOCALE.match(locale):
            raise GreetingSettingsError(where, f"not a locale (e.g. en, ru, pt-BR): {locale!r}")
        if not isinstance(text, str) or not text.strip():
            raise GreetingSettingsError(where, "expected a non-empty text")
        if len(text) > MAX_TEMPLATE:
            raise GreetingSettingsError(where, f"longer than {MAX_TEMPLATE} characters")
        try:
            names = placeholder_names(text)
        except PlaceholderError as error:
            raise GreetingSettingsError(where, str(error)) from None
        for name in names:
            if name not in BUILTIN and name not in known:
                raise GreetingSettingsError(
                    where,
                    f"unknown placeholder {{{name}}} (use {{first_name}}, {{name}} "
                    "or an attribute some contact has)",
                )
        out[locale] = text
    return out


def parse_settings(raw: Any, known_attributes: frozenset[str] = frozenset()) -> GreetingSettings:
    """Check a whole settings document (the contract's shape); GreetingSettingsError
    names the first field that is wrong. `known_attributes` are the attribute names
    placeholders may use besides `first_name` and `name`."""
    if not isinstance(raw, Mapping):
        raise GreetingSettingsError("body", "expected a JSON object")
    allowed = set(DEFAULT_SETTINGS)
    for key in raw:
        if key not in allowed:
            raise GreetingSettingsError(str(key), "unknown field")
    for key in allowed:
        if key not in raw:
            raise GreetingSettingsError(key, "missing")
    enabled = raw["enabled"]
    if not isinstance(enabled, bool):
        raise GreetingSettingsError("enabled", "expected true or false")
    hour = raw["local_hour"]
    if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
        raise GreetingSettingsError("local_hour", f"expected an hour 0-23, got {hour!r}")
    quiet = raw["quiet_hours"]
    if not isinstance(quiet, Mapping) or set(quiet) != {"start", "end"}:
        raise GreetingSettingsError("quiet_hours", 'expected {"start": "HH:MM", "end": "HH:MM"}')
    start = parse_hhmm(quiet["start"], "quiet_hours.start")
    end = parse_hhmm(quiet["end"], "quiet_hours.end")
    zone = parse_zone(raw["default_timezone"], "default_timezone")
    birthday = raw["birthday"]
    if not isinstance(birthday, Mapping) or set(birthday) != {"templates"}:
        raise GreetingSettingsError("birthday", 'expected {"templates": {locale: text}}')
    birthday_templates = _templates(birthday["templates"], "birthday.templates", known_attributes)
    holidays_raw = raw["holidays"]
    if not isinstance(holidays_raw, list) or len(holidays_raw) > MAX_HOLIDAYS:
        raise GreetingSettingsError("holidays", f"expected a list of at most {MAX_HOLIDAYS}")
    holidays: list[Holiday] = []
    seen: set[str] = set()
    for index, item in enumerate(holidays_raw):
        where = f"holidays[{index}]"
        if not isinstance(item, Mapping) or set(item) != {"date", "name", "templates"}:
            raise GreetingSettingsError(where, 'expected {"date": "MM-DD", "name", "templates"}')
        when = item["date"]
        match = _MMDD.match(when) if isinstance(when, str) else None
        if match is None:
            raise GreetingSettingsError(f"{where}.date", f"expected MM-DD, got {when!r}")
        month, day = int(match.group(1)), int(match.group(2))
        try:
            date(2000, month, day)  # a leap year: 02-29 is a date
        except ValueError:
            raise GreetingSettingsError(f"{where}.date", f"no such day: {when!r}") from None
        if when in seen:
            raise GreetingSettingsError(f"{where}.date", f"two holidays on {when}")
        seen.add(when)
        name = item["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise GreetingSettingsError(f"{where}.name", "expected a name (1-100 characters)")
        templates = _templates(item["templates"], f"{where}.templates", known_attributes)
        holidays.append(Holiday(month, day, name.strip(), templates))
    view = {
        "enabled": enabled,
        "local_hour": hour,
        "quiet_hours": {"start": quiet["start"], "end": quiet["end"]},
        "default_timezone": raw["default_timezone"],
        "birthday": {"templates": birthday_templates},
        "holidays": [
            {"date": h.key, "name": h.name, "templates": h.templates} for h in holidays
        ],
    }
    return GreetingSettings(
        enabled=enabled,
        local_hour=hour,
        quiet_start=start,
        quiet_end=end,
        default_timezone=zone,
        birthday_templates=birthday_templates,
        holidays=tuple(holidays),
        raw=view,
    )


def default_settings() -> GreetingSettings:
    return parse_settings(copy.deepcopy(DEFAULT_SETTINGS))


async def load_greeting_settings(store: Store) -> GreetingSettings:
    """The greetings settings in the store, or the defaults when none were saved."""
    doc = await store.settings.find_one({"_id": SETTINGS_ID})
    if doc is None:
        return default_settings()
    raw = {k: v for k, v in doc.items() if k in DEFAULT_SETTINGS}
    try:
        # Saved ones were checked when saved; attributes may have gone since.
        return parse_settings(raw, _ANY_ATTRIBUTE)
    except GreetingSettingsError:
        return default_settings()


class _AnyName(frozenset[str]):
    def __contains__(self, item: object) -> bool:
        return True


_ANY_ATTRIBUTE = _AnyName()


async def known_attributes(store: Store, names: set[str]) -> frozenset[str]:
    """Those of `names` that at least one contact has as an attribute."""
    found = set()
    for name in names:
        if name in BUILTIN or not re.match(r"^[\w -]{1,64}$", name):
            continue
        if await store.contacts.find_one({f"attributes.{name}": {"$exists": True}}, {"_id": 1}):
            found.add(name)
    return frozenset(found)


def _all_placeholders(raw: Any) -> set[str]:
    names: set[str] = set()
    texts: list[Any] = []
    if isinstance(raw, Mapping):
        birthday = raw.get("birthday")
        if isinstance(birthday, Mapping) and isinstance(birthday.get("templates"), Mapping):
            texts += list(birthday["templates"].values())
        for item in raw.get("holidays") or []:
            if isinstance(item, Mapping) and isinstance(item.get("templates"), Mapping):
                texts += list(item["templates"].values())
    for text in texts:
        if isinstance(text, str):
            with contextlib.suppress(PlaceholderError):
                names.update(placeholder_names(text))
    return names


async def save_greeting_settings(
    store: Store, raw: Any, *, agent_id: str | None = None
) -> GreetingSettings:
    """Check and store new settings (GreetingSettingsError: nothing changed). Greetings
    planned but not sent yet are planned again with them at the job's next run."""
    known = await known_attributes(store, _all_placeholders(raw))
    parsed = parse_settings(raw, known)
    doc = dict(parsed.raw)
    doc["updated_at"] = utcnow()
    doc["updated_by"] = agent_id
    await store.settings.replace_one({"_id": SETTINGS_ID}, doc, upsert=True)
    await store.greetings_sent.delete_many({"status": "planned"})
    await store.settings.delete_many({"_id": {"$regex": "^greetings-plan:"}})
    return parsed


def settings_view(settings: GreetingSettings) -> dict[str, Any]:
    return copy.deepcopy(settings.raw)


def contact_timezone(contact: Mapping[str, Any], default: ZoneInfo) -> ZoneInfo:
    """The contact's time zone: its own `timezone` (InvalidTimezone when that is not
    a known zone), else the zone of its first phone number's country when the number
    tells one (or several among which `default` is), else `default`."""
    own = contact.get("timezone")
    if own:
        if not isinstance(own, str) or len(own) > 64:
            raise InvalidTimezone(f"not a time zone: {own!r}")
        try:
            return _zone(own)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidTimezone(f"unknown time zone {own!r}") from None
    for phone in contact.get("phones") or []:
        guessed = phone_zone(phone, default)
        if guessed is not None:
            return guessed
    return default


@functools.lru_cache(maxsize=1024)
def _zone(key: str) -> ZoneInfo:
    """A zone by its name, kept: ZoneInfo keeps only the last few it made, and a
    day's planning asks for a few dozen zones 100,000 times (reading the zone
    file again each time one was dropped)."""
    return ZoneInfo(key)


def phone_zone(phone: Any, default: ZoneInfo) -> ZoneInfo | None:
    """The zone a phone number's country (or area) tells, if it tells one."""
    if not isinstance(phone, str):
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    names = [
        n for n in phone_timezones.time_zones_for_number(number) if n != "Etc/Unknown"
    ]
    if not names:
        return None
    if len(names) > 1 and default.key in names:
        return default
    region = phonenumbers.region_code_for_number(number)
    preferred = COUNTRY_MAIN_ZONE.get(region or "")
    if len(names) > 1 and preferred in names:
        return ZoneInfo(preferred)
    try:
        return ZoneInfo(names[0])
    except (ZoneInfoNotFoundError, ValueError):
        return None


# Countries spanning several zones whose numbers do not tell the region: the zone
# most of their people live in (the number's first listed zone is alphabetical).
COUNTRY_MAIN_ZONE: dict[str, str] = {
    "RU": "Europe/Moscow",
    "KZ": "Asia/Almaty",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "US": "America/New_York",
    "MX": "America/Mexico_City",
    "ID": "Asia/Jakarta",
    "CN": "Asia/Shanghai",
    "UA": "Europe/Kyiv",
    "CL": "America/Santiago",
    "AR": "America/Argentina/Buenos_Aires",
}
