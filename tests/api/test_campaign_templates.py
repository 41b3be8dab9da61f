"""A WhatsApp campaign through a real WhatsApp Cloud inbox and its simulator: the
template is checked against the inbox's approved list at creation (unknown name,
language or parameter count: 422, nothing stored), and each recipient gets the
approved template with their own parameter, outside the 24-hour window too."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.whatsapp.simulator import FakeWhatsApp
from hub.api.base import API
from hub.app import build_app
from hub.config import parse_settings
from hub.services.accounts import Passwords
from hub.services.contacts import new_contact_doc
from scheduler.campaigns import CampaignJob
from tests.api.conftest import FAST_HASHER, Client, hub, make_agent
from tests.support.waiting import eventually

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def wa() -> AsyncIterator[FakeWhatsApp]:
    sim = FakeWhatsApp()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def api(
    embedded_uri: str, db_name: str, tmp_path: Path, wa: FakeWhatsApp
) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    data: dict[str, Any] = {
        "store": {"uri": embedded_uri, "database": db_name},
        "dispatcher": {"poll_interval": 0.05, "backoff_base": 0.05, "backoff_max": 0.2},
        "events": {"poll_interval": 0.05},
        "scheduler": {"enabled": False},
        "inboxes": [
            {
                "id": "wa",
                "channel": "whatsapp",
                "phone_number_id": wa.phone_number_id,
                "access_token": wa.access_token,
                "app_secret": "wa-app-secret-0123456789abcdef",
                "verify_token": "wa-verify-token-42",
                "api_base": wa.url,
                "business_account_id": wa.business_account_id,
            },
        ],
    }
    app = build_app(parse_settings(data, source="<test>", base_dir=tmp_path))
    async with TestClient(TestServer(app)) as client:
        accounts = client.app[API].accounts
        assert accounts is not None
        accounts.passwords = Passwords(FAST_HASHER)
        yield client


def body(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "Shipping news",
        "audience": {"labels": ["buyers"], "channels": ["whatsapp"]},
        "message": {"template": template},
        "quiet_hours": {"start": "00:00", "end": "00:00"},
    }


async def test_an_unapproved_template_is_refused_at_creation(api: Client) -> None:
    boss = await make_agent(api, "supervisor")
    store = hub(api).store
    assert store is not None
    await store.contacts.insert_one(
        new_contact_doc("c1", name="Ann", phones=["+15550001111"], labels=["buyers"])
    )
    for template, words in [
        ({"name": "spring_offer", "language": "en_US"}, "no approved template 'spring_offer'"),
        ({"name": "order_update", "language": "fr_FR"}, "not approved in 'fr_FR'"),
        ({"name": "order_update", "language": "en_US"}, "takes 1 parameter(s)"),
    ]:
        resp = await api.post("/api/campaigns", json=body(template), headers=boss.auth)
        assert resp.status == 422, await resp.text()
        assert words in (await resp.json())["error"]["message"]
    assert await store.campaigns.count_documents({}) == 0


async def test_each_recipient_gets_the_approved_template_with_their_parameter(
    api: Client, wa: FakeWhatsApp
) -> None:
    boss = await make_agent(api, "supervisor")
    store = hub(api).store
    assert store is not None
    await store.contacts.insert_many(
        [
            new_contact_doc(
                f"c{i}",
                name=f"Buyer {i}",
                phones=[f"+1555000{i:04d}"],
                labels=["buyers"],
                attributes={"order": f"A-{i}"},
            )
            for i in range(3)
        ]
    )
    template = {"name": "order_update", "language": "en_US", "parameters": ["{order}"]}
    resp = await api.post("/api/campaigns", json=body(template), headers=boss.auth)
    assert resp.status == 201, await resp.text()
    cid = (await resp.json())["id"]
    assert (await api.post(f"/api/campaigns/{cid}/start", headers=boss.auth)).status == 200
    job = CampaignJob(hub(api))

    async def sent() -> int:
        await job.run(NOON)
        return len(wa.sent)

    await eventually(sent, lambda n: n >= 3)
    await asyncio.sleep(0.2)
    assert len(wa.sent) == 3
    got = sorted(
        m["template"]["components"][0]["parameters"][0]["text"] for m in wa.sent
    )
    assert got == ["A-0", "A-1", "A-2"]
    assert {m["template"]["name"] for m in wa.sent} == {"order_update"}
    # The thread shows what the customer got: the template's filled body.
    message = await store.messages.find_one({"campaign_id": cid})
    assert message is not None and "has shipped" in str(message.get("text"))
