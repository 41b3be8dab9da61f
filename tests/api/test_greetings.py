"""`GET/PUT /api/greetings`: the contract's shape, defaults with New Year and
8 March, admins write and everyone reads, bad input refused naming the field with
nothing changed, and `hub greetings run --date` as a real subprocess (catch-up,
never a repeat)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.services.greetings import DEFAULT_SETTINGS
from tests.api.conftest import hub, inbound, make_agent

KEYS = {"enabled", "local_hour", "quiet_hours", "default_timezone", "birthday", "holidays"}


def valid(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(DEFAULT_SETTINGS)
    body["enabled"] = True
    body.update(changes)
    return body


async def test_defaults_have_the_contract_shape_with_new_year_and_8_march(api):
    agent = await make_agent(api, "agent")
    resp = await api.get("/api/greetings", headers=agent.auth)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == KEYS
    assert body["enabled"] is False
    assert 0 <= body["local_hour"] <= 23
    assert set(body["quiet_hours"]) == {"start", "end"}
    assert body["default_timezone"] == "UTC"
    assert "en" in body["birthday"]["templates"]
    dates = {h["date"]: h["name"] for h in body["holidays"]}
    assert dates == {"01-01": "New Year", "03-08": "8 March"}
    for holiday in body["holidays"]:
        assert set(holiday) == {"date", "name", "templates"}


async def test_an_admin_replaces_them_and_every_agent_reads_them_back(api):
    admin = await make_agent(api, "admin")
    agent = await make_agent(api, "agent")
    body = valid(
        local_hour=9,
        quiet_hours={"start": "21:30", "end": "08:00"},
        default_timezone="Europe/Riga",
        birthday={"templates": {"en": "Happy birthday {first_name}", "lv": "Daudz laimes!"}},
        holidays=[{"date": "06-24", "name": "Jāņi", "templates": {"lv": "Līgo, {name}!"}}],
    )
    resp = await api.put("/api/greetings", json=body, headers=admin.auth)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == body
    read = await api.get("/api/greetings", headers=agent.auth)
    assert await read.json() == body


async def test_agents_and_supervisors_may_not_change_them(api):
    for role in ("agent", "supervisor"):
        someone = await make_agent(api, role)
        resp = await api.put("/api/greetings", json=valid(), headers=someone.auth)
        assert resp.status == 403, role
    assert (await api.get("/api/greetings")).status == 401


BAD = [
    ({"local_hour": 24}, "local_hour"),
    ({"local_hour": -1}, "local_hour"),
    ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
    ({"quiet_hours": {"start": "22:00", "end": "8"}}, "quiet_hours.end"),
    ({"default_timezone": "Mars/Olympus_Mons"}, "default_timezone"),
    ({"holidays": [{"date": "13-01", "name": "X", "templates": {"en": "x"}}]}, "holidays[0].date"),
    ({"holidays": [{"date": "02-30", "name": "X", "templates": {"en": "x"}}]}, "holidays[0].date"),
    (
        {"holidays": [{"date": "01-01", "name": "X", "templates": {"en": "Hi {nickname}"}}]},
        "holidays[0].templates.en",
    ),
    ({"birthday": {"templates": {"en": "Hi {first_name"}}}, "birthday.templates.en"),
    ({"birthday": {"templates": {}}}, "birthday.templates"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
async def test_bad_settings_are_refused_naming_the_field_and_nothing_changes(api, change, field):
    admin = await make_agent(api, "admin")
    before = await (await api.get("/api/greetings", headers=admin.auth)).json()
    resp = await api.put("/api/greetings", json=valid(**change), headers=admin.auth)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["message"].startswith(field + ":"), error
    assert await (await api.get("/api/greetings", headers=admin.auth)).json() == before


async def test_a_body_of_the_wrong_shape_is_400(api):
    admin = await make_agent(api, "admin")
    for body in (
        {**valid(), "extra": 1},
        {k: v for k, v in valid().items() if k != "holidays"},
        valid(enabled="yes"),
        valid(local_hour="10"),
    ):
        resp = await api.put("/api/greetings", json=body, headers=admin.auth)
        assert resp.status == 400, body


async def test_a_placeholder_naming_an_attribute_some_contact_has_is_accepted(api):
    admin = await make_agent(api, "admin")
    body = valid(birthday={"templates": {"en": "Hi {first_name} from {city}"}})
    resp = await api.put("/api/greetings", json=body, headers=admin.auth)
    assert resp.status == 422
    await inbound(api, "t1", "SMgr1", "+15550007001", "hi")
    store = hub(api).store
    assert store is not None
    riga = {"$set": {"attributes.city": "Riga"}}
    await store.contacts.update_one({"phones": "+15550007001"}, riga)
    resp = await api.put("/api/greetings", json=body, headers=admin.auth)
    assert resp.status == 200, await resp.text()


# -- hub greetings run --------------------------------------------------------------------


# The real `hub` entry point, in a process of its own; the test channel is
# registered first, as the tests' inbox uses it.
CLI = "import sys, tests.support.testchannel, hub.cli; sys.exit(hub.cli.main(sys.argv[1:]))"


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_CONFIG": str(config)}
    return subprocess.run(  # noqa: S603  (our own interpreter and module)
        [sys.executable, "-c", CLI, "greetings", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_hub_greetings_run_catches_up_a_date_once(api, embedded_uri, db_name, tmp_path):
    admin = await make_agent(api, "admin")
    body = valid(birthday={"templates": {"en": "Happy birthday, {first_name}!"}}, holidays=[])
    assert (await api.put("/api/greetings", json=body, headers=admin.auth)).status == 200
    store = hub(api).store
    assert store is not None
    for number, phone in enumerate(("+15550008001", "+15550008002")):
        await inbound(api, "t1", f"SMcli{number}", phone, "hello", ProfileName="Grace Hopper")
        await store.contacts.update_one(
            {"phones": phone}, {"$set": {"birthday": {"month": 3, "day": 14}}}
        )
    await store.contacts.update_one({"phones": "+15550008002"}, {"$set": {"timezone": "Nowhere/X"}})
    config = tmp_path / "hub.toml"
    config.write_text(
        f"""
[store]
uri = "{embedded_uri}"
database = "{db_name}"

[[inboxes]]
id = "t1"
channel = "testchan"
secret = "unused-secret-123"
"""
    )
    first = run_cli(config, "--date", "2026-03-14")
    assert first.returncode == 0, first.stderr
    assert "1 sent" in first.stdout
    assert "1 skipped" in first.stdout and "invalid time zone: 1" in first.stdout
    messages = await store.messages.find({"text": "Happy birthday, Grace!"}).to_list()
    assert len(messages) == 1
    second = run_cli(config, "--date", "2026-03-14")
    assert second.returncode == 0, second.stderr
    assert "0 sent" in second.stdout and "1 already sent" in second.stdout
    assert await store.messages.count_documents({"text": "Happy birthday, Grace!"}) == 1
    bad = run_cli(config, "--date", "2026-02-30")
    assert bad.returncode == 2
    assert "--date" in bad.stderr


# -- the contact's greeting fields --------------------------------------------------------


async def test_contact_patch_takes_birthday_time_zone_and_locale_and_refuses_bad_ones(api):
    admin = await make_agent(api, "admin")
    await inbound(api, "t1", "SMbd1", "+15550007101", "hi")
    store = hub(api).store
    assert store is not None
    contact = await store.contacts.find_one({"phones": "+15550007101"})
    assert contact is not None
    path = f"/api/contacts/{contact['_id']}"
    for bad in (
        {"birthday": {"month": 2, "day": 30}},
        {"birthday": {"month": 2, "day": 29, "year": 2001}},
        {"birthday": {"month": 13, "day": 1}},
        {"timezone": "Mars/Olympus_Mons"},
        {"locale": "not a locale!"},
    ):
        resp = await api.patch(path, json=bad, headers=admin.auth)
        assert resp.status == 400, (bad, await resp.text())
    good = {"birthday": {"month": 2, "day": 29}, "timezone": "Asia/Tokyo", "locale": "ja"}
    resp = await api.patch(path, json=good, headers=admin.auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["birthday"] == {"month": 2, "day": 29, "year": None}
    assert (body["timezone"], body["locale"]) == ("Asia/Tokyo", "ja")
