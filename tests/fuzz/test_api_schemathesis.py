"""Fuzzing the agents' API from its own OpenAPI document (issue "Hardening").

Schemathesis reads `GET /api/openapi.json` from a running hub (a real server
on 127.0.0.1) and, for every operation, generates requests that fit the
document (positive) and requests that break it (negative). They are sent with
an admin's bearer token, so every role check is passed and the handlers are
reached. Operations that take an `{id}` are also given the ids of things that
exist (a conversation, a contact, a team, another agent, a canned response),
so the handlers go past their 404.

Left out, because they would end the token's own session or account: `POST
/api/auth/logout` (closes the session), and `PATCH /api/agents/{id}` on the
admin's own id (would deactivate or demote it). Everything else, deletes and
merges included, is fair game: the hub is the module's own.

The assertion: no 5xx (except a known defect, tests/fuzz/defects.py), and the
answer conforms to the document: its status is one the operation declares,
and a JSON body matches the declared schema.

Schemathesis' client is synchronous (requests): each operation's examples run
in a worker thread while the hub serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from hub.api import ROUTES
from hub.api.base import API
from hub.api.openapi import build_document
from hub.services.accounts import Passwords
from tests.conftest import SECRET, post_inbound
from tests.fuzz.conftest import FUZZ, examples, running
from tests.fuzz.defects import check_status, collecting, is_error_shape
from tests.fuzz.strategies import mutated_text_lines, nasty_text, weighted
from tests.support.fakeprovider import FakeProvider

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery 1"
# Cheap argon2 parameters: agents are created and logged in by the hundred.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

# (method, path) of the operations never called, and why.
EXCLUDED = {
    ("POST", "/api/auth/logout"): "ends the admin token's own session",
}
# Every operation of the document, as "METHOD /path" (pytest ids), read from the
# route table the document is built from.
OPERATIONS = [
    f"{method.upper()} {path}"
    for path, operations in build_document(ROUTES)["paths"].items()
    for method in operations
]
# Which seeded thing an operation's {id} names, by path prefix.
ID_KIND = {
    "/api/agents/": "agent",
    "/api/teams/": "team",
    "/api/conversations/": "conversation",
    "/api/contacts/": "contact",
    "/api/canned/": "canned",
}


@dataclass
class ApiUnderTest:
    client: Client
    base_url: str
    token: str
    admin_id: str
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
async def api(module_settings) -> AsyncIterator[ApiUnderTest]:
    with pytest.MonkeyPatch.context() as env:
        # The admin is the test's own, not one the environment would create.
        env.delenv("HUB_ADMIN_EMAIL", raising=False)
        env.delenv("HUB_ADMIN_PASSWORD", raising=False)
        async for under_test in _api(module_settings):
            yield under_test


async def _api(module_settings: Any) -> AsyncIterator[ApiUnderTest]:
    provider = FakeProvider()
    await provider.start()
    base = {"channel": "testchan", "secret": SECRET, "api_base": provider.url, "rate": 500.0}
    inboxes = [
        {**base, "id": "t1"},
        {**base, "id": "t2"},
        {**base, "id": "w", "medium": "whatsapp", "refuse_replies": "the window is closed"},
    ]
    client = await running(module_settings(inboxes))
    try:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        admin = await accounts.create_agent(
            email="admin@example.com", name="Admin", role="admin", password=PASSWORD
        )
        other = await accounts.create_agent(
            email="agent@example.com", name="Agent", role="agent", password=PASSWORD
        )
        resp = await client.post(
            "/api/auth/login", json={"email": "admin@example.com", "password": PASSWORD}
        )
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["token"]
        client.session.cookie_jar.clear()
        under_test = ApiUnderTest(
            client, str(client.make_url("")).rstrip("/"), token, str(admin["_id"])
        )
        await seed(under_test, other_agent=str(other["_id"]))
        with collecting():
            yield under_test
    finally:
        await client.close()
        await provider.stop()


async def seed(api: ApiUnderTest, *, other_agent: str) -> None:
    """Things for the operations' {id} to name: a conversation with its contact,
    a team, another agent, a canned response."""
    client, headers = api.client, api.headers
    for n, (inbox, sender) in enumerate([("t1", "+15551230001"), ("t2", "+15551230002")]):
        resp = await post_inbound(client, inbox, MessageSid=f"SM{n}", From=sender, Body="Hello")
        assert resp.status == 200, await resp.text()
    resp = await client.get("/api/conversations", headers=headers)
    assert resp.status == 200, await resp.text()
    items = (await resp.json())["items"]
    conversations = [item["id"] for item in items]
    contacts = [item["contact"]["id"] for item in items]
    assert len(conversations) == 2
    resp = await client.post(
        "/api/teams", json={"name": "Sales", "inboxes": ["t1"]}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    team = (await resp.json())["id"]
    resp = await client.post(
        "/api/canned", json={"shortcut": "hello", "text": "Hello!"}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    api.ids = {
        "conversation": conversations,
        "contact": contacts,
        "team": [team],
        "agent": [other_agent],
        "canned": ["hello"],
    }


# -- the run ---------------------------------------------------------------------------------


def id_kind(path: str) -> str | None:
    if "{id}" not in path:
        return None
    return next((kind for prefix, kind in ID_KIND.items() if path.startswith(prefix)), None)


EMAILS = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(lambda n: f"agent{n}@example.com"),
    st.emails(),
)


def repairs(ids: dict[str, list[str]]) -> dict[str, st.SearchStrategy[Any]]:
    """Values the document cannot say are valid (an address, an inbox or a team
    that exists), put into half the positive bodies so they get past validation."""
    return {
        "email": EMAILS,
        "emails": st.lists(EMAILS, max_size=2),
        "phones": st.lists(
            st.sampled_from(["+15551230003", "+442071838750", "555-123-0004", "+15551230001"]),
            max_size=2,
        ),
        "inboxes": st.lists(st.sampled_from(["t1", "t2", "w"]), max_size=3),
        "teams": st.lists(st.sampled_from(ids["team"]), max_size=2),
        "assignee_id": st.sampled_from(ids["agent"]),
        "other_id": st.sampled_from(ids["contact"]),
        "timezone": st.sampled_from(["Europe/Paris", "UTC", "America/New_York"]),
    }


@st.composite
def repaired(draw: st.DrawFn, strategy: st.SearchStrategy[Any], ids: dict[str, list[str]]) -> Any:
    case = draw(strategy)
    if isinstance(case.body, dict) and draw(st.booleans()):
        for key, values in repairs(ids).items():
            if key in case.body:
                case.body[key] = draw(values)
    return case


def cases(operation: Any, path: str, ids: dict[str, list[str]]) -> st.SearchStrategy[Any]:
    """The operation's cases: fitting the document (half of them repaired, see
    `repairs`) and not, and with the ids of things that exist."""
    queries = [p for p in operation.iter_parameters() if p.location == "query"]
    has_input = "{" in path or bool(queries) or bool(operation.body)
    choices: list[tuple[int, st.SearchStrategy[Any]]] = [
        (2, repaired(operation.as_strategy(GenerationMode.POSITIVE), ids))
    ]
    if has_input:
        choices.append((2, operation.as_strategy(GenerationMode.NEGATIVE)))
    known = ids.get(id_kind(path) or "", [])
    if known:
        choices.append(
            (
                3,
                st.sampled_from(known).flatmap(
                    lambda value: repaired(
                        operation.as_strategy(
                            GenerationMode.POSITIVE, path_parameters={"id": value}
                        ),
                        ids,
                    )
                ),
            )
        )
        if queries or operation.body:  # with the id fixed, a body or a query to break
            choices.append(
                (
                    2,
                    st.sampled_from(known).flatmap(
                        lambda value: operation.as_strategy(
                            GenerationMode.NEGATIVE, path_parameters={"id": value}
                        )
                    ),
                )
            )
    return weighted(*choices)


def run_operation(api: ApiUnderTest, schema: Any, method: str, path: str, n: int) -> Counter[int]:
    """Send `n` cases of one operation and check every answer (in a worker thread);
    the count of each status answered."""
    operation = schema[path][method]
    answered: Counter[int] = Counter()

    @settings(
        FUZZ,
        max_examples=n,
        suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.too_slow],
    )
    @given(case=cases(operation, path, api.ids))
    def send(case: Any) -> None:
        if (method, path) == ("PATCH", "/api/agents/{id}") and (case.path_parameters or {}).get(
            "id"
        ) == api.admin_id:
            reject()  # the admin's own account: deactivating it would end the run
        response = case.call(base_url=api.base_url, headers=api.headers, timeout=30)
        answered[response.status_code] += 1
        shown = f"{case.as_curl_command(headers=api.headers)} -> {response.status_code}: " + (
            response.content[:300].decode("utf-8", "replace")
        )
        check_status(response.status_code, shown)
        content_type = ",".join(response.headers.get("content-type", []))
        if 400 <= response.status_code < 500 and "application/json" in content_type:
            assert is_error_shape(response.json()), f"not the API's error shape: {shown}"
        try:
            case.validate_response(
                response,
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
                headers=api.headers,
            )
        except BaseExceptionGroup as failures:  # schemathesis' FailureGroup: a plain failure
            raise AssertionError(f"{failures}\n{shown}") from None

    send()
    return answered


@pytest.fixture(scope="module")
async def schema(api: ApiUnderTest) -> Any:
    """The hub's own document, as it serves it."""
    resp = await api.client.get("/api/openapi.json")
    assert resp.status == 200, await resp.text()
    return schemathesis.openapi.from_dict(await resp.json())


async def test_the_document_lists_every_operation_fuzzed(schema) -> None:
    served = sorted(f"{r.ok().method.upper()} {r.ok().path}" for r in schema.get_all_operations())
    assert served == sorted(OPERATIONS)


# Schemathesis draws some values with `random`, which Hypothesis only warns about.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_operation(api, schema, operation) -> None:
    method, path = operation.split(" ", 1)
    if (method, path) in EXCLUDED:
        pytest.skip(EXCLUDED[(method, path)])
    answered = await asyncio.to_thread(run_operation, api, schema, method, path, examples(0.5))
    print(operation, dict(sorted(answered.items())))  # shown with -s: how deep the cases got
    assert answered, "no case was sent"


# -- the contacts import: a CSV body, which the document names but cannot describe ----------

CSV_HEADER = "name,phone,email,telegram,birthday,timezone,locale,labels,company"
CSV_ROWS = (
    "Ada Lovelace,+15551230010,ada@example.com,,1815-12-10,Europe/London,en-GB,vip,Analytical",
    'Grace Hopper,555-123-0011,grace@example.org,12345,12-09,America/New_York,en,"a,b",Navy',
    ",+15551230001,,,,,,,",
    "Katherine,,katherine@example.org,,,,fr_FR,,",
)
CSV_TEXT = "\r\n".join((CSV_HEADER, *CSV_ROWS)) + "\r\n"


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


CSV_BODIES = weighted(
    (3, mutated_text_lines(CSV_TEXT)),
    (
        2,
        st.lists(st.lists(nasty_text(), min_size=1, max_size=10), min_size=1, max_size=6).map(
            lambda rows: CSV_HEADER + "\r\n" + csv_text(rows)
        ),
    ),
    (1, st.lists(st.lists(nasty_text(), max_size=10), max_size=6).map(csv_text)),
)


@settings(FUZZ, max_examples=examples(0.5))
@given(text=CSV_BODIES, bom=st.booleans())
async def test_contacts_import_csv(api, text, bom) -> None:
    """`POST /api/contacts/import` takes text/csv, which the document cannot
    describe (schemathesis only sends it the wrong type, a 415)."""
    body = ("\ufeff" if bom else "").encode() + text.encode("utf-8", "surrogatepass")
    headers = {**api.headers, "Content-Type": "text/csv"}
    resp = await api.client.post("/api/contacts/import", data=body, headers=headers)
    answer = await resp.read()
    event(f"answered {resp.status}")
    shown = f"import {body[:300]!r} -> {resp.status}: {answer[:300]!r}"
    check_status(resp.status, shown)
    assert resp.status in (200, 400, 413), shown
    if resp.status >= 400:
        assert is_error_shape(json.loads(answer)), shown
