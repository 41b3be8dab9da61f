"""A simulated IP-PBX for the sandbox: the signed call events (`CONTRACT.md`) a PBX
posts to the hub when a customer calls its number, hangs up, or leaves a voicemail.

A PBX has no API the hub calls, so this simulator serves no routes: the sandbox
attaches its `pbx` inboxes (each is one phone line, `NUMBER`), and the customer side
(`call`, `hang_up`) posts `call.started`, then `recording.ready` (with the
voicemail) and `call.missed`, each signed with the inbox's secret (`X-Signature`).
`event` and `signed` build them for anyone else driving the webhook.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.base import ChannelSettings
from channels.pbx import PbxSettings
from channels.signing import HEADER, sign
from channels.simulation import (
    Customer,
    Customers,
    Handed,
    LineOffer,
    PhoneCall,
    Place,
    Simulator,
)

NUMBER = "+15550100001"  # the number a customer calls


def event(name: str, call_id: str, caller: str, called: str = NUMBER) -> dict[str, Any]:
    """A call event of an incoming call, as the PBX posts it."""
    return {
        "event": name,
        "call_id": call_id,
        "from": caller,
        "to": called,
        "direction": "in",
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def signed(secret: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the PBX's POST of `payload`."""
    body = json.dumps(payload).encode()
    return body, {"Content-Type": "application/json", HEADER: sign(secret, body)}


@dataclass
class FakePbx(Simulator):
    customers: Customers | None = None  # the sandbox's customer side
    inboxes: dict[str, PbxSettings] = field(default_factory=dict)

    @classmethod
    def for_sandbox(cls, customers: Customers) -> FakePbx:
        return cls(customers=customers)

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        assert isinstance(settings, PbxSettings)
        self.inboxes[inbox] = settings
        return settings

    def lines(self, inbox: str) -> list[LineOffer]:
        return [LineOffer("voice", f"Call {NUMBER} (PBX)", NUMBER)]

    async def _to_hub(self, inbox: str, payload: dict[str, Any]) -> tuple[int, str]:
        assert self.customers is not None
        body, headers = signed(self.inboxes[inbox].secret, payload)
        return await self.customers.post(self.customers.webhook_url(inbox), body, headers)

    async def call(self, inbox: str, caller: Customer) -> PhoneCall:
        call_id = "sbx-" + secrets.token_hex(8)
        status, answer = await self._to_hub(inbox, event("call.started", call_id, caller.address))
        return PhoneCall(
            id=call_id,
            inbox=inbox,
            caller=caller,
            handed=Handed(status, answer, provider_id=call_id),
            heard=["(the PBX rings the agents)"],
            voicemail=True,
        )

    async def hang_up(
        self, call: PhoneCall, *, voicemail: bool, duration: int, recording_url: str
    ) -> bool:
        address = call.caller.address
        if voicemail:
            ready = event("recording.ready", call.id, address)
            ready["recording_url"] = recording_url
            ready["duration"] = duration
            await self._to_hub(call.inbox, ready)
        await self._to_hub(call.inbox, event("call.missed", call.id, address))
        return voicemail
