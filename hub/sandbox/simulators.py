"""The sandbox's own simulators of the providers whose channel package has none yet
(`ChannelAdapter.simulator`): a PBX.
Each `Legacy` is a `channels.simulation.Simulator` for one of those channels, driven
by the sandbox like the channels' own; they move to their channel packages one by
one.

- PBX: signed call events posted to the inbox's webhook.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from channels.base import ChannelSettings
from channels.pbx import PbxSettings
from channels.signing import sign as hub_sign
from channels.simulation import (
    Customer,
    Handed,
    LineOffer,
    PhoneCall,
    Place,
    Simulator,
)

if TYPE_CHECKING:
    from hub.sandbox.core import Sandbox

LEGACY_CHANNELS = ("pbx",)
PBX_NUMBER = "+15550100001"


class Legacy(Simulator):
    """The sandbox's own simulator of one channel (one of `LEGACY_CHANNELS`)."""

    def __init__(self, sandbox: Sandbox, channel: str) -> None:
        self.sandbox = sandbox
        self.channel = channel
        self.settings: dict[str, ChannelSettings] = {}  # by inbox

    # -- the sandbox's side --------------------------------------------------------------

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        self.settings[inbox] = settings
        return settings

    def lines(self, inbox: str) -> list[LineOffer]:
        s = self.settings[inbox]
        if isinstance(s, PbxSettings):
            return [LineOffer("voice", f"Call {PBX_NUMBER} (PBX)", PBX_NUMBER)]
        return []

    # -- the customer's side ------------------------------------------------------------

    async def _post_pbx(self, inbox: str, event: dict[str, Any]) -> tuple[int, str]:
        settings = self.settings[inbox]
        assert isinstance(settings, PbxSettings)
        body = json.dumps(event).encode()
        return await self.sandbox.post(
            self.sandbox.webhook_url(inbox),
            body,
            {"Content-Type": "application/json", "X-Signature": hub_sign(settings.secret, body)},
        )

    def _pbx_event(self, call: PhoneCall, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "call_id": call.id,
            "from": call.caller.address,
            "to": PBX_NUMBER,
            "direction": "in",
            "at": _now(),
        }

    async def call(self, inbox: str, caller: Customer) -> PhoneCall:
        call = PhoneCall(
            id="sbx-" + secrets.token_hex(8),
            inbox=inbox,
            caller=caller,
            handed=Handed(0, ""),
            heard=["(the PBX rings the agents)"],
            voicemail=True,
        )
        status, answer = await self._post_pbx(inbox, self._pbx_event(call, "call.started"))
        call.handed = Handed(status, answer, provider_id=call.id)
        return call

    async def hang_up(
        self, call: PhoneCall, *, voicemail: bool, duration: int, recording_url: str
    ) -> bool:
        if voicemail:
            event = self._pbx_event(call, "recording.ready")
            event["recording_url"] = recording_url
            event["duration"] = duration
            await self._post_pbx(call.inbox, event)
        await self._post_pbx(call.inbox, self._pbx_event(call, "call.missed"))
        return voicemail


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
