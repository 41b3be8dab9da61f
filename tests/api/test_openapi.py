"""`GET /api/openapi.json`: every API route, with schemas from the same types."""

from __future__ import annotations

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
