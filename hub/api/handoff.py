"""Taking a bot's conversation over, and an agent's own availability.

Thin handlers over `hub.services.handoff` and `hub.services.availability`.
"""

from __future__ import annotations

from typing import Any

from hub.api.base import ApiError, Call, RouteTable, not_found
from hub.api.conversations import visible_conversation
from hub.api.schemas import AgentOut, AvailabilityIn, ConversationOut
from hub.services import handoff
from hub.services.accounts import agent_view
from hub.services.availability import set_availability

table = RouteTable()


@table.route(
    "POST",
    "/api/conversations/{id}/takeover",
    summary="Take a bot's conversation over: open, the bot stops, assigned to you",
    response=ConversationOut,
)
async def take_over(call: Call) -> dict[str, Any]:
    conversation_id = call.param("id")
    await visible_conversation(call, conversation_id)
    view = await handoff.take_over(call.hub, conversation_id, call.me.agent_id)
    if view is None:
        raise ApiError(409, "conflict", "no bot serves this conversation (taken over already?)")
    return view


@table.route(
    "PUT",
    "/api/agents/me/availability",
    summary="Set your availability: online (round robin may assign to you), busy or offline",
    body=AvailabilityIn,
    response=AgentOut,
)
async def put_availability(call: Call) -> dict[str, Any]:
    body: AvailabilityIn = call.body
    assert call.hub.store is not None
    if not await set_availability(call.hub.store, call.me.agent_id, body.availability):
        raise not_found("agent")
    return agent_view({**call.me.agent, "availability": body.availability})
