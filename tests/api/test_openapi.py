"""`GET /api/openapi.json`: every API route, with schemas from the same types."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable
from typing import Any

import pytest

from hub.api import ROUTES
from hub.api.base import SERVICE_ERROR_STATUS, ApiError, Route
from hub.api.openapi import build_document
from hub.api.schemas import ConversationOut, MessageOut
from tests.api.conftest import conversation_of, inbound, make_agent


async def test_openapi_lists_every_api_route_of_the_app(api):
    resp = await api.get("/api/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert len(served) >= 15
    schemas = doc["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(doc):
        assert ref.split("/")[-1] in schemas, ref
    patch = doc["paths"]["/api/conversations/{id}"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/ConversationPatch")
    assert "snooze_until" in schemas["ConversationPatch"]["properties"]
    params = {p["name"] for p in doc["paths"]["/api/conversations"]["get"]["parameters"]}
    assert {"status", "inbox", "assignee", "q", "limit", "cursor"} <= params


async def test_answers_match_the_documented_types(api):
    conv = await conversation_of(api, await inbound(api, "t1", "SMo1", "+15551230001", "x"))
    agent = await make_agent(api, "admin")
    listed = await (await api.get("/api/conversations", headers=agent.auth)).json()
    ConversationOut.model_validate(listed["items"][0])
    messages = await (
        await api.get(f"/api/conversations/{conv}/messages", headers=agent.auth)
    ).json()
    MessageOut.model_validate(messages["items"][0])


# -- every status a route answers is documented ---------------------------------------------
#
# What a route can answer, found independently of the document: what the shared
# handler does for its declaration (make_handler), and what the handler's own code
# answers, found by reading it and everything it calls in the hub's API and
# services: the `ApiError`s it makes, and the service errors raised on the way,
# answered as SERVICE_ERROR_STATUS says.

SAFE = {"GET", "HEAD", "OPTIONS"}


def _function(obj: Any) -> Callable[..., Any] | None:
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if isinstance(obj, property):
        obj = obj.fget
    if inspect.isfunction(obj) and obj.__module__.startswith(("hub.api", "hub.services")):
        return obj
    return None


def _class_of(annotation: Any) -> type | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and arg.__module__.startswith("hub."):
            return arg
    return None


def _hints(owner: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(owner)
    except Exception:  # an annotation only a type checker can resolve
        return {}


class Answers:
    """What a function can answer: ApiError statuses and service errors raised,
    through everything it calls in hub.api and hub.services."""

    def __init__(self) -> None:
        self.statuses: set[int] = set()
        self.raised: set[type[BaseException]] = set()
        self.seen: set[Callable[..., Any]] = set()

    def read(self, fn: Callable[..., Any], owner: type | None = None) -> None:
        if fn in self.seen:
            return
        self.seen.add(fn)
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        params = _hints(fn)
        scope = fn.__globals__
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                kind = scope.get(target.id) if isinstance(target, ast.Name) else None
                if isinstance(kind, type) and issubclass(kind, BaseException):
                    self.raised.add(kind)
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and scope.get(node.func.id) is ApiError:
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, int):
                    self.statuses.add(first.value)
                else:  # a status chosen at run time: every status the function names
                    self.statuses |= {
                        c.value
                        for c in ast.walk(tree)
                        if isinstance(c, ast.Constant)
                        and isinstance(c.value, int)
                        and 400 <= c.value < 600
                    }
                continue
            callee, callee_owner = self._resolve(node.func, scope, params, owner)
            if callee is not None:
                self.read(callee, callee_owner)

    def _type(self, expr: ast.expr, params: dict[str, Any], owner: type | None) -> type | None:
        if isinstance(expr, ast.Name):
            if expr.id == "self":
                return owner
            return _class_of(params.get(expr.id))
        if isinstance(expr, ast.Attribute):
            base = self._type(expr.value, params, owner)
            if base is not None:
                return _class_of(_hints(base).get(expr.attr))
        return None

    def _resolve(
        self, func: ast.expr, scope: dict[str, Any], params: dict[str, Any], owner: type | None
    ) -> tuple[Callable[..., Any] | None, type | None]:
        if isinstance(func, ast.Name):
            return _function(scope.get(func.id)), None
        if not isinstance(func, ast.Attribute):
            return None, None
        if isinstance(func.value, ast.Name) and inspect.ismodule(scope.get(func.value.id)):
            return _function(getattr(scope[func.value.id], func.attr, None)), None
        cls = self._type(func.value, params, owner)
        if cls is None:
            return None, None
        return _function(inspect.getattr_static(cls, func.attr, None)), cls


def answerable(route: Route) -> set[int]:
    """Every error status `route` can answer."""
    statuses = {503}  # the hub starting, or its store unavailable (the app's middleware)
    if route.role is not None:
        statuses.add(401)
        if route.role != "agent" or route.method not in SAFE:
            statuses.add(403)  # a role above every agent's, or a cookie without CSRF
    if route.query is not None:
        statuses.add(400)
    if route.body is not None:
        statuses |= {400, 413}
    found = Answers()
    found.read(route.handler)
    statuses |= found.statuses
    for raised in found.raised:
        for kind, (status, _code) in SERVICE_ERROR_STATUS.items():
            if issubclass(raised, kind):
                statuses.add(status)
    return statuses


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_the_document_lists_every_status_a_route_can_answer_and_no_other(route):
    operation = build_document(ROUTES)["paths"][route.path][route.method.lower()]
    documented = {int(status) for status in operation["responses"]}
    success = 101 if route.websocket else route.status
    assert documented - {success} == answerable(route)
    for status, answer in operation["responses"].items():
        if int(status) >= 400:
            assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


def test_the_reading_of_handlers_finds_what_they_answer():
    # The analysis above is what keeps the document honest; it must see through
    # the handlers to the services (a module's function, a method of the hub or
    # the accounts, a helper of the handler's own module).
    by_name = {route.handler.__name__: route for route in ROUTES}
    assert {409, 413, 415, 429} <= set().union(*(answerable(r) for r in ROUTES))
    assert 429 in answerable(by_name["login"])
    assert {413, 415} <= answerable(by_name["import_contacts"])
    assert 409 in answerable(by_name["post_message"])  # call.hub.reply -> OutboxError
    assert 409 in answerable(by_name["create_canned"])  # canned.create -> ShortcutTaken
    assert 409 in answerable(by_name["create_contact"])  # contacts.create -> IdentityTaken
    assert 422 in answerable(by_name["patch_conversation"])  # AssigneeCannotSee
    assert 400 in answerable(by_name["patch_agent"])  # call.accounts.update_agent -> UnknownTeams
    assert 404 in answerable(by_name["get_conversation"])  # visible_conversation
    assert 404 not in answerable(by_name["list_conversations"])
