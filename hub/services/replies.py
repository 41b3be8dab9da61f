"""Replies: every outbound message a person, a bot, a campaign or the system
sends in a conversation is queued here, in the outbox, and sent by the dispatcher."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from hub.model import Attachment, ButtonReply, IdentityRef
from hub.ports import Channel
from hub.services.contacts import opted_out_of
from hub.services.events import Events
from hub.services.ingest import Ingestor
from hub.services.outbox import OutboxError, enqueue
from hub.store import Store

log = logging.getLogger("hub.replies")

OPTED_OUT_SMS = (
    "the contact opted out of SMS (it sent a stop word): carriers block texts to it "
    "until it sends a start word"
)


class Replies:
    """Queue replies in conversations, by the reply rules of each inbox's channel."""

    def __init__(
        self,
        store: Store,
        events: Events,
        ingestor: Ingestor,
        channels: Mapping[str, Channel],
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.events = events
        self.ingestor = ingestor
        self.channels = channels
        self.on_queued = on_queued  # wakes the dispatcher

    async def reply(
        self,
        conversation_id: str,
        *,
        text: str | None,
        sender: dict[str, Any],
        template: dict[str, Any] | None = None,
        buttons: list[ButtonReply] | None = None,
        attachments: list[Attachment] | None = None,
        subject: str | None = None,
        at_most_once: bool = False,
        campaign_id: str | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Queue an outbound message in a conversation (an agent's reply, a bot's, a
        campaign's); raise OutboxError when it cannot be sent there now."""
        conversation = await self.store.conversations.find_one(
            {"_id": conversation_id},
            {"inbox": 1, "last_inbound_at": 1, "channel": 1, "contact_id": 1},
        )
        if conversation is None:
            raise OutboxError(f"no conversation {conversation_id}")
        channel = self.channels.get(str(conversation["inbox"]))
        if channel is None:
            raise OutboxError(f"inbox {conversation['inbox']} is not configured")
        refusal = channel.reply_refusal_on(
            conversation.get("channel"), conversation.get("last_inbound_at"), bool(template)
        )
        if refusal:
            raise OutboxError(refusal)
        # Carriers block texts to a number that sent STOP: refuse up front.
        sms = conversation.get("channel") == "sms" and sender.get("type") != "system"
        if sms and await opted_out_of(self.store, str(conversation.get("contact_id")), "sms"):
            raise OutboxError(OPTED_OUT_SMS)
        doc = await enqueue(
            self.store,
            self.events,
            conversation_id=conversation_id,
            text=text,
            sender=sender,
            template=template,
            buttons=buttons,
            attachments=attachments,
            subject=subject,
            at_most_once=at_most_once,
            campaign_id=campaign_id,
            key=key,
        )
        self.on_queued()
        return doc

    async def send_text(
        self, inbox: str, medium: str, ref: IdentityRef, text: str, *, key: str | None = None
    ) -> str | None:
        """Queue a text from the system to `ref` (opening the conversation); None
        when the contact opted out of `medium`. With a `key`, once per key: safe to
        call again on every retry of the webhook that asks for it."""
        if inbox not in self.channels:
            raise ValueError(f"no inbox {inbox!r} is configured")
        conv_id, contact_id = await self.ingestor.open_conversation(inbox, medium, ref)
        if await opted_out_of(self.store, contact_id, medium):
            log.info("not sent: the contact opted out", extra={"inbox": inbox, "medium": medium})
            return None
        doc = await self.reply(conv_id, text=text, sender={"type": "system", "id": None}, key=key)
        return str(doc["_id"])
