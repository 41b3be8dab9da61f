"""Contacts as CSV: import with merges and rejections, export, the round trip,
and `hub contacts import` (issue 4, point 6)."""

from __future__ import annotations

import asyncio
import csv
import io

import hub.api.contacts_io as contacts_io_api
from hub.cli import main
from tests.api.conftest import hub, make_agent

A = "+15551230001"
B = "+15551230002"
C = "+15551230003"

GOOD_AND_BAD = (
    "Name,Phone,Email,Telegram,Birthday,Timezone,Locale,Labels,Plan,Company\n"
    f"Ann Lee,(555) 123-0001,,,,Europe/Paris,,vip,gold,ACME\n"  # line 2: merges into Ann
    f"Bo,{B},Bo@Example.com,bo_tg,1990-05-17,America/New_York,en-US,a; b ;a,silver,\n"  # 3
    "Cy,,cy@example.com,,02-29,,,,,\n"  # 4: created, birthday without a year
    "Bad Phone,12,,,,,,,,\n"  # 5
    "Bad Mail,,not-an-email,,,,,,,\n"  # 6
    f"Bad Day,{C},,,1990-02-30,,,,,\n"  # 7
    f"Bad Zone,{C},,,,Mars/Olympus,,,,\n"  # 8
    "Nobody,,,,,,,,,\n"  # 9: no identity
    "\n"  # blank lines are skipped
    "Bo Again,,bo@example.com,,,,,c,,\n"  # 11: merges into Bo, created above
)


async def _post_csv(api, who, text, content_type="text/csv"):
    headers = {**(who.auth if who else {}), "Content-Type": content_type}
    return await api.post("/api/contacts/import", data=text.encode(), headers=headers)


async def test_import_creates_merges_and_rejects_rows_with_reasons(api):
    boss = await make_agent(api, "supervisor")
    resp = await api.post(
        "/api/contacts",
        json={"name": "Ann", "phones": [A], "labels": ["old"], "attributes": {"plan": "free"}},
        headers=boss.auth,
    )
    ann_id = (await resp.json())["id"]
    resp = await _post_csv(api, boss, GOOD_AND_BAD)
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    assert (report["rows"], report["created"], report["merged"], report["rejected"]) == (
        9,
        2,
        2,
        5,
    )
    reasons = {r["row"]: r["reason"] for r in report["reasons"]}
    assert set(reasons) == {5, 6, 7, 8, 9}
    assert "phone" in reasons[5] and "'12'" in reasons[5]
    assert "e-mail" in reasons[6]
    assert "birthday" in reasons[7]
    assert "Mars/Olympus" in reasons[8]
    assert "no phone, email or telegram" in reasons[9]

    store = hub(api).store
    assert await store.contacts.count_documents({}) == 3
    ann = await store.contacts.find_one({"_id": ann_id})
    assert ann["name"] == "Ann Lee"
    assert ann["timezone"] == "Europe/Paris"
    assert ann["labels"] == ["old", "vip"]
    assert ann["attributes"] == {"plan": "gold", "company": "ACME"}
    owner = await store.identities.find_one({"_id": "email:bo@example.com"})
    bo = await store.contacts.find_one({"_id": owner["contact_id"]})
    assert bo["name"] == "Bo Again"
    assert bo["phones"] == [B] and bo["emails"] == ["bo@example.com"]
    assert bo["telegram"] == "bo_tg"
    assert bo["birthday"] == {"month": 5, "day": 17, "year": 1990}
    assert (bo["timezone"], bo["locale"]) == ("America/New_York", "en-US")
    assert bo["labels"] == ["a", "b", "c"]
    assert bo["attributes"] == {"plan": "silver"}
    for key in (f"phone:{B}", "telegram:bo_tg"):
        assert (await store.identities.find_one({"_id": key}))["contact_id"] == bo["_id"]
    owner = await store.identities.find_one({"_id": "email:cy@example.com"})
    cy = await store.contacts.find_one({"_id": owner["contact_id"]})
    assert cy["birthday"] == {"month": 2, "day": 29, "year": None}
    # the rejected rows wrote nothing
    assert await store.identities.find_one({"_id": f"phone:{C}"}) is None


async def test_a_row_whose_identities_belong_to_two_contacts_is_rejected(api):
    boss = await make_agent(api, "admin")
    for body in ({"phones": [A]}, {"emails": ["x@example.com"]}):
        assert (await api.post("/api/contacts", json=body, headers=boss.auth)).status == 201
    resp = await _post_csv(api, boss, f"phone,email,name\n{A},x@example.com,Both\n")
    report = await resp.json()
    assert (report["created"], report["merged"], report["rejected"]) == (0, 0, 1)
    assert "different contacts" in report["reasons"][0]["reason"]
    assert await hub(api).store.contacts.count_documents({"name": "Both"}) == 0


async def test_import_refuses_bad_bodies(api, monkeypatch):
    boss = await make_agent(api, "supervisor")
    assert (await _post_csv(api, boss, "phone\n" + A, "application/json")).status == 415
    assert (await _post_csv(api, boss, "")).status == 400
    assert (await _post_csv(api, boss, "phone,phone\n1,2\n")).status == 400
    bad = await api.post(
        "/api/contacts/import",
        data=b"name,phone\n\xff\xfe,1\n",
        headers={**boss.auth, "Content-Type": "text/csv"},
    )
    assert bad.status == 400
    monkeypatch.setattr(contacts_io_api, "MAX_IMPORT_BYTES", 64)
    resp = await _post_csv(api, boss, "phone\n" + "\n".join([A] * 20))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await hub(api).store.contacts.count_documents({}) == 0


async def test_agents_get_403_strangers_401_and_nothing_is_imported(api):
    agent = await make_agent(api)
    text = f"name,phone\nEve,{A}\n"
    assert (await _post_csv(api, None, text)).status == 401
    assert (await _post_csv(api, agent, text)).status == 403
    assert (await api.get("/api/contacts/export")).status == 401
    assert (await api.get("/api/contacts/export", headers=agent.auth)).status == 403
    assert await hub(api).store.contacts.count_documents({}) == 0


async def test_export_then_import_round_trips_as_merges(api):
    boss = await make_agent(api, "supervisor")
    bodies = [
        {
            "name": '=HYPERLINK("http://evil")',
            "phones": [A, B],
            "emails": ["ann@example.com"],
            "birthday": {"month": 12, "day": 1, "year": 1980},
            "timezone": "Asia/Tokyo",
            "locale": "ja",
            "labels": ["vip", "-neg"],
            "attributes": {"plan": "gold", "note": "@home"},
        },
        {"name": "Cy", "emails": ["cy@example.com"], "birthday": {"month": 7, "day": 4}},
    ]
    for body in bodies:
        assert (await api.post("/api/contacts", json=body, headers=boss.auth)).status == 201
    resp = await api.get("/api/contacts/export", headers=boss.auth)
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    text = await resp.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "name",
        "phone",
        "email",
        "telegram",
        "birthday",
        "timezone",
        "locale",
        "labels",
        "note",
        "plan",
    ]
    assert rows[0]["name"] == '\'=HYPERLINK("http://evil")'  # not a formula in a spreadsheet
    assert rows[0]["phone"] == f"{A};{B}"
    assert rows[0]["birthday"] == "1980-12-01"
    assert rows[0]["note"] == "'@home"
    assert rows[1]["birthday"] == "07-04"

    store = hub(api).store
    before = {d["_id"]: d async for d in store.contacts.find({})}
    report = await (await _post_csv(api, boss, text)).json()
    assert (report["created"], report["merged"], report["rejected"]) == (0, 2, 0)
    after = {d["_id"]: d async for d in store.contacts.find({})}
    assert after == before


async def test_cli_imports_a_file_with_a_progress_bar(
    tmp_path, embedded_uri, db_name, store, capsys
):
    config = tmp_path / "hub.toml"
    config.write_text(f'[store]\nuri = "{embedded_uri}"\ndatabase = "{db_name}"\n')
    lines = ["name,phone,email"] + [f"P{i},+1555123{i:04d},p{i}@example.com" for i in range(30)]
    lines.append("Bad,,nope")
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join(lines) + "\n")
    code = await asyncio.to_thread(main, ["contacts", "import", str(path), "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "31 row(s): 30 created, 0 merged, 1 rejected" in out
    assert "line 32:" in out and "nope" in out
    assert "importing [" in err and "31/31" in err
    assert await store.contacts.count_documents({}) == 30
    again = await asyncio.to_thread(
        main, ["contacts", "import", str(path), "--config", str(config)]
    )
    assert again == 0
    assert "0 created, 30 merged, 1 rejected" in capsys.readouterr().out


async def test_cli_exits_non_zero_on_a_missing_or_unreadable_file(tmp_path, capsys):
    config = tmp_path / "hub.toml"
    config.write_text('[store]\nuri = "mongodb://127.0.0.1:1"\n')
    args = ["contacts", "import", str(tmp_path / "missing.csv"), "--config", str(config)]
    assert await asyncio.to_thread(main, args) == 2
    assert "cannot read" in capsys.readouterr().err
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00bad")
    args[2] = str(binary)
    assert await asyncio.to_thread(main, args) == 2
    assert "cannot read" in capsys.readouterr().err
