"""Greetings settings: `GET /api/greetings` (any agent reads them) and
`PUT /api/greetings` (admins replace them whole).

Thin handlers: the shape is checked here, the rules (hours, zones, dates,
placeholders) by `hub.services.greetings`, whose error names the field (422).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictBool, StrictInt

from hub.api.base import ApiError, Call, RouteTable
from hub.api.schemas import Input, Output
from hub.services.greetings import (
    GreetingSettingsError,
    load_greeting_settings,
    save_greeting_settings,
    settings_view,
)
from hub.store import Store

table = RouteTable()

Templates = Annotated[
    dict[str, Annotated[str, Field(max_length=2000)]],
    Field(description="text by locale (en, ru, pt-BR...); {first_name}, {name}, attributes"),
]


class QuietHours(Input):
    start: str = Field(description="HH:MM, local to the contact")
    end: str = Field(description="HH:MM; before start: the quiet hours span midnight")


class BirthdayGreeting(Input):
    templates: Templates


class Holiday(Input):
    date: str = Field(description="MM-DD")
    name: str = Field(max_length=100)
    templates: Templates


class GreetingsIn(Input):
    enabled: StrictBool
    local_hour: StrictInt = Field(description="0-23, in each contact's time zone")
    quiet_hours: QuietHours
    default_timezone: str = Field(description="IANA time zone, e.g. Europe/Berlin")
    birthday: BirthdayGreeting
    holidays: list[Holiday] = Field(max_length=100)


class GreetingsOut(Output):
    enabled: bool
    local_hour: int
    quiet_hours: dict[str, str]
    default_timezone: str
    birthday: dict[str, Any]
    holidays: list[dict[str, Any]]


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


@table.route(
    "GET",
    "/api/greetings",
    summary="The birthday and holiday greetings settings",
    response=GreetingsOut,
)
async def get_greetings(call: Call) -> dict[str, Any]:
    return settings_view(await load_greeting_settings(_store(call)))


@table.route(
    "PUT",
    "/api/greetings",
    summary="Replace the greetings settings (admins)",
    role="admin",
    body=GreetingsIn,
    response=GreetingsOut,
)
async def put_greetings(call: Call) -> dict[str, Any]:
    raw = call.body.model_dump()
    try:
        saved = await save_greeting_settings(_store(call), raw, agent_id=call.me.agent_id)
    except GreetingSettingsError as error:
        raise ApiError(422, "invalid", str(error)) from None
    await call.accounts.audit(call.me.agent_id, "greetings.updated")
    return settings_view(saved)
