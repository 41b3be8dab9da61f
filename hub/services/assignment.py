"""Auto-assignment: the inbox key `assignment` ("none" or "round_robin").

With `round_robin`, a conversation handed to people (`hub.services.handoff`) and a
new conversation with people (an inbox without a bot) is assigned, in turn, to one
of the agents who

- may see the inbox (any role),
- are `online` (their availability, `hub.services.availability`),
- have an inbox WebSocket open, in any hub process (`hub.services.presence`),
- and have fewer open conversations assigned than their `capacity` (null: no limit).

The turn is kept in the store (the `assignment` collection, one document per inbox
holding the agent assigned last), changed by compare-and-set, so two hub
processes assigning at once give consecutive agents, never the same turn twice.
Nobody eligible: the conversation stays unassigned, seen by all who see the inbox.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from hub.model import Event
from hub.ports import BotHook
from hub.services import presence
from hub.services.accounts import Accounts
from hub.services.conversations import view_of
from hub.store import Store

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger("hub.assignment")

MODES = ("none", "round_robin")
CAS_ATTEMPTS = 8


def mode_of(hub: Hub, inbox: str | None) -> str:
    config = hub.settings.inbox(str(inbox)) if inbox else None
    return str(getattr(config, "assignment", "none")) if config is not None else "none"


async def eligible(store: Store, inbox: str) -> list[str]:
    """The ids of the agents a conversation of `inbox` may go to now, sorted."""
    agents = await store.agents.find(
        {"active": {"$ne": False}, "availability": {"$nin": ["busy", "offline"]}},
        {"role": 1, "inboxes": 1, "teams": 1, "capacity": 1},
    ).to_list(1000)
    # Who has a socket open first (one read): only they are worth the rest.
    connected = await presence.connected(store, [str(a["_id"]) for a in agents])
    accounts = Accounts(store)
    chosen = []
    for agent in agents:
        agent_id = str(agent["_id"])
        if agent_id not in connected:
            continue
        inboxes = await accounts.visible_inboxes(agent)
        if inboxes is not None and inbox not in inboxes:
            continue
        capacity = agent.get("capacity")
        if isinstance(capacity, int) and capacity >= 0:
            load = await store.conversations.count_documents(
                {"assignee_id": agent_id, "status": "open"}, limit=capacity
            )
            if load >= capacity:
                continue
        chosen.append(agent_id)
    return sorted(chosen)


async def next_in_turn(store: Store, inbox: str) -> str | None:
    """Take the turn: the eligible agent after the one assigned last in `inbox`
    (kept in the store), or None when nobody is eligible."""
    for _ in range(CAS_ATTEMPTS):
        candidates = await eligible(store, inbox)
        if not candidates:
            return None
        turn = await store.assignment.find_one({"_id": inbox})
        last = None if turn is None else turn.get("last")
        pick = next((a for a in candidates if last is not None and a > last), candidates[0])
        if turn is None:
            try:
                await store.assignment.insert_one({"_id": inbox, "last": pick})
            except DuplicateKeyError:
                continue  # another process took the first turn
            return pick
        taken = await store.assignment.update_one(
            {"_id": inbox, "last": last}, {"$set": {"last": pick}}
        )
        if taken.matched_count:
            return pick
    log.warning("round robin: the turn kept changing; left unassigned", extra={"inbox": inbox})
    return None


async def assign(hub: Hub, conversation: dict[str, Any]) -> str | None:
    """Assign `conversation` by its inbox's `assignment` when it is with people
    (`bot` null) and unassigned; returns the agent it went to, or None."""
    if conversation.get("assignee_id") or conversation.get("bot"):
        return None
    inbox = conversation.get("inbox")
    if mode_of(hub, inbox) != "round_robin":
        return None
    store = hub.store
    assert store is not None
    agent_id = await next_in_turn(store, str(inbox))
    if agent_id is None:
        return None
    done = await store.conversations.update_one(
        {"_id": conversation["_id"], "assignee_id": None, "bot": None},
        {"$set": {"assignee_id": agent_id}},
    )
    if not done.matched_count:
        return None  # assigned or taken by a bot meanwhile
    log.info(
        "conversation assigned",
        extra={"conversation_id": conversation["_id"], "inbox": inbox, "agent": agent_id},
    )
    return agent_id


async def assign_inbound(hub: Hub, message: dict[str, Any]) -> str | None:
    """After a new inbound message: a conversation with people (no bot) in a
    round-robin inbox that nobody has is assigned now (`conversation.updated`).
    Costs nothing in an inbox without round robin."""
    if mode_of(hub, message.get("inbox")) != "round_robin":
        return None
    store, events = hub.store, hub.events
    assert store is not None and events is not None
    conversation = await store.conversations.find_one({"_id": message["conversation_id"]})
    if conversation is None or conversation.get("status") != "open":
        return None
    agent_id = await assign(hub, conversation)
    if agent_id is not None:
        fresh = await store.conversations.find_one({"_id": conversation["_id"]}) or conversation
        view = await view_of(store, fresh)
        await events.publish([Event("conversation.updated", {**view, "changed_by": None})])
    return agent_id


class AssigningHook:
    """The hub's bot hook with round-robin assignment of new conversations with
    people after it (`hub.ports.BotHook`): wraps whatever bot hook ingest has."""

    def __init__(self, hub: Hub, inner: BotHook) -> None:
        self.hub = hub
        self.inner = inner

    async def on_inbound(self, message: dict[str, Any], conversation: dict[str, Any]) -> None:
        try:
            await self.inner.on_inbound(message, conversation)
        finally:
            try:
                await assign_inbound(self.hub, message)
            except Exception:
                log.exception(
                    "round-robin assignment failed",
                    extra={"conversation_id": message.get("conversation_id")},
                )
