"""The OpenAPI 3.1 document, built from the route table and its pydantic types."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from hub.api.base import Call, Route, RouteTable
from hub.api.schemas import ErrorOut

table = RouteTable()

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "invalid input",
    "401": "no or an invalid token",
    "403": "no right to this (role, inbox access or CSRF)",
    "404": "not found",
}


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
        ok: dict[str, Any] = {"description": "switching protocols" if route.websocket else "ok"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(route.response, schemas)}}
        status = "101" if route.websocket else str(route.status)
        operation["responses"][status] = ok
        for code, text in ERRORS.items():
            operation["responses"][code] = {
                "description": text,
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
