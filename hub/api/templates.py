"""WhatsApp templates: an inbox's approved templates, and a template send checked
before it is queued (`hub.services.templates`).

Thin handlers: parse, authorise, call the service, shape the answer.
"""

from __future__ import annotations

from typing import Any

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.schemas import TemplateIn, TemplateList, TemplateQuery
from hub.ports import Channel, SendError
from hub.services import templates
from hub.services.paging import BadCursor, decode_cursor, encode_cursor

table = RouteTable()


def _channel(call: Call, inbox: str) -> Channel:
    channel = call.hub.adapters.get(inbox)
    if channel is None:
        raise not_found("inbox")
    return channel


def _provider_failed(error: SendError) -> ApiError:
    return ApiError(502, "provider_error", f"the provider's template list: {error.reason}")


@table.route(
    "GET",
    "/api/inboxes/{id}/templates",
    summary="A WhatsApp inbox's approved templates (from the provider, cached)",
    query=TemplateQuery,
    response=TemplateList,
)
async def list_templates(call: Call) -> dict[str, Any]:
    query: TemplateQuery = call.query
    inbox = call.param("id")
    if not call.me.sees(inbox):
        raise ApiError(403, "forbidden", f"you do not see inbox {inbox}")
    channel = _channel(call, inbox)
    try:
        items = await templates.approved(channel, query.medium)
    except templates.NoTemplates as error:
        raise ApiError(409, "no_templates", str(error)) from None
    except SendError as error:
        raise _provider_failed(error) from None
    start = 0
    if query.cursor is not None:
        _, offset = decode_cursor(query.cursor)
        if not offset.isdigit():
            raise BadCursor("the cursor is not one this list gave")
        start = int(offset)
    page = items[start : start + query.limit]
    end = start + len(page)
    next_cursor = encode_cursor(None, str(end)) if end < len(items) else None
    return {"items": [t.view() for t in page], "next_cursor": next_cursor}


async def template_send(
    call: Call, conversation: dict[str, Any], spec: TemplateIn
) -> tuple[dict[str, Any], str]:
    """(the outbound template, its filled body) for a template reply in
    `conversation`; 422 naming what is wrong with it."""
    channel = _channel(call, str(conversation.get("inbox")))
    medium = conversation.get("channel")
    try:
        return await templates.prepare(channel, medium, spec.name, spec.language, spec.parameters)
    except templates.NoTemplates as error:
        raise ApiError(422, "no_templates", f"template: {error}") from None
    except templates.TemplateRefused as error:
        raise ApiError(422, "unknown_template", f"template: {error}") from None
    except SendError as error:
        raise _provider_failed(error) from None
