"""A provider that fails: answers 500, answers 429 with Retry-After, and does not
answer at all (the send times out). The dispatcher backs off between attempts,
waits at least as long as Retry-After asks, and after `dispatcher.max_attempts`
marks the message `failed` with the last reason.

Most of this is covered where each piece lives, one fault at a time:
tests/test_outbox.py::test_transient_500_is_retried_and_then_sent_on_the_second_attempt,
::test_429_is_retried_after_the_providers_retry_after_without_failing,
::test_gives_up_after_max_attempts_transient_failures,
::test_at_most_once_send_that_got_a_5xx_becomes_unknown_and_is_not_retried,
::test_at_most_once_send_that_got_a_429_is_retried_and_sent; and for a real
channel, tests/channels/test_twilio.py::test_a_429_is_retried_after_retry_after_and_then_sent
and ::test_unreachable_and_slow_twilio_are_transient (the adapter alone). What
was missing is a send that times out going through the dispatcher's retries,
and the three faults in a row on one message: that is here, against the Twilio
simulator (the one channel with a send timeout of its own, `send_timeout`).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.twilio.simulator import PUBLIC_URL, FakeTwilio
from hub.app import build_app
from hub.config import parse_settings
from hub.model import IdentityRef
from tests.conftest import hub_of
from tests.support.twilio_fixtures import twilio_inbox
from tests.support.waiting import eventually

AGENT = {"type": "agent", "id": "a1"}
SEND_TIMEOUT = 0.3
BACKOFF_BASE = 0.2


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio()
    await twilio.start()
    yield twilio
    twilio.delay = 0.0
    await twilio.stop()


@pytest.fixture
async def client(
    embedded_uri: str, db_name: str, tmp_path: Path, fake: FakeTwilio
) -> AsyncIterator[TestClient]:
    settings = parse_settings(
        {
            "server": {"public_url": PUBLIC_URL},
            "store": {"uri": embedded_uri, "database": db_name},
            "dispatcher": {
                "poll_interval": 0.05,
                "backoff_base": BACKOFF_BASE,
                "backoff_max": 2 * BACKOFF_BASE,
                "max_attempts": 4,
            },
            "events": {"poll_interval": 0.05},
            "inboxes": [twilio_inbox(fake.url, send_timeout=SEND_TIMEOUT, status_callback=False)],
        },
        source="<test>",
        base_dir=tmp_path,
    )
    async with TestClient(TestServer(build_app(settings))) as running:
        yield running


async def test_500_then_429_then_timeouts_back_off_honour_retry_after_and_fail_with_the_reason(
    client: TestClient, fake: FakeTwilio
) -> None:
    hub = hub_of(client)
    store, ingestor = hub.store, hub.ingestor
    assert store is not None and ingestor is not None
    conversation_id, _ = await ingestor.open_conversation(
        "tw", "sms", IdentityRef(kind="phone", value="+15551230001")
    )
    fake.fail_next(20500)  # attempt 1: 500
    fake.fail_next(20429, retry_after="0.6")  # attempt 2: 429, longer than any backoff
    queued = await hub.reply(conversation_id, text="are you there?", sender=AGENT)

    # Attempts 3 and 4: Twilio takes the request and does not answer in time.
    await eventually(lambda: _value(len(fake.requests)), lambda n: n >= 2)
    fake.delay = 3 * SEND_TIMEOUT

    async def message() -> dict[str, Any]:
        found = await store.messages.find_one({"_id": queued["_id"]})
        assert found is not None
        return found

    failed = await eventually(message, lambda m: m["status"] not in ("queued", "sending"))
    assert failed["status"] == "failed"
    assert failed["error"] == "gave up after 4 attempts: Twilio did not answer in time"
    assert await eventually(lambda: store.outbox.count_documents({}), lambda n: n == 0) == 0

    requests = fake.requests
    assert [r.get("status") for r in requests[:2]] == [500, 429]
    assert len(requests) == 4  # no fifth attempt
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(requests)]
    # Lower bounds only (what the dispatcher must wait), not speed measurements:
    # after the 500, at least half the first backoff; after the 429, what
    # Retry-After asked; after a timeout, the timeout and half the third backoff.
    assert gaps[0] >= BACKOFF_BASE / 2 - 0.01, gaps
    assert gaps[1] >= 0.6 - 0.01, gaps
    assert gaps[2] >= SEND_TIMEOUT + 2 * BACKOFF_BASE / 2 - 0.01, gaps


async def _value[T](value: T) -> T:
    return value
