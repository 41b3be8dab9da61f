"""The OpenAPI 3.1 document, built from the route table and its pydantic types."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from hub.api.base import SERVICE_ERROR_STATUS, Call, Route, RouteTable, shared_answers
from hub.api.schemas import ErrorOut
from hub.services.accounts import UnknownTeams
from hub.services.campaigns import CampaignError, CampaignStateError
from hub.services.canned import ShortcutTaken
from hub.services.contacts import IdentityTaken, InvalidContact
from hub.services.conversations import AssigneeCannotSee, InvalidChange, NotInConversation
from hub.services.outbox import OutboxError
from hub.services.paging import BadCursor
from hub.services.reminders import InvalidReminder, NoSuchReminder
from hub.services.send_later import InvalidSendAt, NoSuchMessage, NotScheduled

table = RouteTable()

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "invalid input: the body, the query, or a value the rules refuse",
    401: "no token or an invalid one (logging in: a wrong e-mail or password)",
    403: "no right to this (role, inbox access or CSRF)",
    404: "not found",
    409: "in conflict with what is stored (taken, or refused now)",
    413: "the body is too large",
    415: "the body is not of a type this route reads",
    422: "the change breaks an access rule",
    429: "too many failed logins; the message says when to retry",
    502: "the provider failed to answer (e.g. its template list); retry later",
    503: "the hub is starting or its store is unavailable; retry later",
}

Answer = int | type[Exception]

# A reply with files (hub.api.media_out): its form fields and `file` parts.
MULTIPART: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "optional when files are given"},
        "private": {"type": "string", "enum": ["true", "false"]},
        "subject": {"type": "string"},
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}

# What each route's handler answers beyond what every route declared like it
# answers (`shared_answers`: its role, query and body): the statuses it answers
# itself, and the service errors it lets through, answered as SERVICE_ERROR_STATUS
# says. By operationId (the handler's name). tests/api/test_openapi.py reads the
# handlers, and what they call, to hold this to what they do.
ANSWERS: dict[str, tuple[Answer, ...]] = {
    "login": (401, 429),
    "clear_lock": (404,),
    "create_agent": (400, 409, UnknownTeams),
    "patch_agent": (400, 404, 409, UnknownTeams),
    "create_team": (400,),
    "patch_team": (400, 404),
    "list_conversations": (403, BadCursor),
    "list_audit": (400, BadCursor),
    "get_conversation": (403, 404),
    "open_conversation": (403, 404, 422),
    "patch_conversation": (403, 404, InvalidChange, AssigneeCannotSee),
    "list_messages": (403, 404, NotInConversation),
    "post_message": (400, 403, 404, 409, 415, 422, 502, OutboxError, InvalidSendAt),
    "list_templates": (403, 404, 409, 502, BadCursor),
    "get_media": (403, 404),
    "patch_scheduled": (400, 403, 404, InvalidSendAt, NoSuchMessage, NotScheduled),
    "cancel_scheduled": (403, 404, NoSuchMessage, NotScheduled),
    "create_reminder": (403, 404, InvalidReminder),
    "list_conversation_reminders": (403, 404),
    "delete_reminder": (NoSuchReminder,),
    "take_over": (403, 404, 409),
    "put_availability": (404,),
    "import_contacts": (400, 413, 415),
    "list_contacts": (BadCursor,),
    "get_contact": (403, 404),
    "create_contact": (403, 404, InvalidContact, IdentityTaken),
    "patch_contact": (403, 404, InvalidContact, IdentityTaken),
    "merge_contact": (400, 403, 404),
    "websocket": (401, 403),
    "create_canned": (ShortcutTaken,),
    "patch_canned": (400, 404, ShortcutTaken),
    "delete_canned": (404,),
    "put_greetings": (422,),
    "list_campaigns": (BadCursor,),
    "create_campaign": (CampaignError,),
    "count_audience": (CampaignError,),
    "get_campaign": (404,),
    "start_campaign": (404, CampaignStateError, CampaignError),
    "pause_campaign": (404, CampaignStateError),
    "cancel_campaign": (404, CampaignStateError),
    "list_recipients": (404, BadCursor),
}


def error_statuses(route: Route) -> list[int]:
    """Every error status `route` can answer, in order."""
    statuses = shared_answers(route)
    for answer in ANSWERS.get(route.handler.__name__, ()):
        statuses.add(answer if isinstance(answer, int) else SERVICE_ERROR_STATUS[answer][0])
    return sorted(statuses)


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.query is not None:
        schema = route.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if route.websocket:
        params.append(
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}
        )
    return params


def build_document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI document of `routes`."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error_ref = _schema(ErrorOut, schemas)
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "parameters": _parameters(route),
            "responses": {},
        }
        if route.role is None:
            operation["security"] = []
        else:
            operation["x-role"] = route.role
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(route.body, schemas)}},
            }
            if route.multipart:  # the same fields as a form, with files
                operation["requestBody"]["content"]["multipart/form-data"] = {"schema": MULTIPART}
        ok: dict[str, Any] = {"description": "switching protocols" if route.websocket else "ok"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(route.response, schemas)}}
        status = "101" if route.websocket else str(route.status)
        operation["responses"][status] = ok
        for code in error_statuses(route):
            operation["responses"][str(code)] = {
                "description": ERRORS[code],
                "content": {"application/json": {"schema": error_ref}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Omnichannel hub API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "hub_session",
                    "description": "the web UI's session; state-changing requests also "
                    "need the X-CSRF-Token header (the hub_csrf cookie's value)",
                },
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }


@table.route("GET", "/api/openapi.json", summary="This document", role=None)
async def openapi(call: Call) -> dict[str, Any]:
    from hub.api import ROUTES

    return build_document(ROUTES)
