"""The running hub: health, readiness, metrics, graceful shutdown and logs
(issue 2, points 9 and 10)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from hub.app import build_app
from hub.logs import setup_logging
from hub.services.outbox import enqueue
from hub.services.runtime import HUB
from tests.conftest import SECRET, hub_of, post_inbound, signed_form
from tests.support.waiting import eventually, next_event, of_type

NUMBER = "+15551230001"


# -- health and readiness ----------------------------------------------------------------


async def test_healthz_answers_200(hub_client):
    resp = await hub_client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_status_page_lists_each_inbox_with_its_webhook_url(hub_client):
    resp = await hub_client.get("/status")
    assert resp.status == 200
    page = await resp.text()
    hub = hub_of(hub_client)
    for inbox in hub.settings.inboxes:
        assert f"{hub.settings.public_url}/webhooks/{inbox.channel}/{inbox.id}" in page
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_status_page_escapes_what_it_shows():
    from hub.status_page import status_page

    page = status_page([("<script>x</script>", "testchan", ["http://h/<b>"])], "embedded")
    assert "<script>x" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>" not in page


async def test_readyz_is_200_with_the_store_up_and_503_when_it_is_down(
    make_settings, private_store
):
    settings = make_settings(store={"uri": private_store.uri, "server_selection_timeout_ms": 500})
    async with TestClient(TestServer(build_app(settings))) as client:
        up = await client.get("/readyz")
        assert up.status == 200

        await private_store.stop()

        down = await client.get("/readyz")
        assert down.status == 503
        assert (await down.json())["status"] == "store unreachable"
        # Liveness does not depend on the store: the process is alive.
        assert (await client.get("/healthz")).status == 200


# -- metrics --------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_hub_on_the_embedded_default_restarts_a_store_child_that_died(
    make_settings, tmp_path
):
    import os
    import signal

    settings = make_settings(store={"uri": ""})  # the embedded store in tmp_path/var
    app = build_app(settings)
    async with TestClient(TestServer(app)) as client:
        hub = hub_of(client)
        assert hub.store is not None and hub.store.embedded is not None
        before = await post_inbound(client, MessageSid="m1", From=NUMBER, Body="before")
        assert before.status == 200
        process = hub.store.embedded.process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await eventually(ready, deadline=30)
        assert await hub.store.messages.count_documents({"text": "before"}) == 1
        after = await post_inbound(client, MessageSid="m2", From=NUMBER, Body="after")
        assert after.status == 200


async def test_metrics_count_inbound_messages_per_channel_and_ingest_latency(hub_client):
    resp = await post_inbound(hub_client, MessageSid="SMm1", From=NUMBER, Body="count me")
    assert resp.status == 200
    await post_inbound(hub_client, MessageSid="SMm1", From=NUMBER, Body="count me")  # a retry

    page = await hub_client.get("/metrics")

    assert page.status == 200
    assert page.content_type == "text/plain"
    text = await page.text()
    assert 'hub_messages_in_total{channel="sms"} 1.0' in text
    values = samples(text)  # and the whole page parses as Prometheus text
    assert values[("hub_messages_in_total", (("channel", "sms"),))] == 1.0
    assert values[("hub_messages_duplicate_total", (("channel", "sms"),))] == 1.0
    assert values[("hub_ingest_seconds_count", ())] == 2.0
    assert values[("hub_ingest_seconds_bucket", (("le", "+Inf"),))] == 2.0
    assert ("hub_outbox_depth", ()) in values
    assert values[("hub_store_commands", ())] > 0


async def test_metrics_count_sent_messages_and_send_errors(hub_client, provider):
    hub = hub_of(hub_client)
    resp = await post_inbound(hub_client, MessageSid="SMm2", From=NUMBER, Body="hi")
    message = await hub.store.messages.find_one({"_id": (await resp.json())["id"]})
    provider.fail_next(400, "invalid", "bad recipient")
    for text in ("refused", "accepted"):
        doc = await enqueue(
            hub.store,
            hub.events,
            conversation_id=message["conversation_id"],
            text=text,
            sender={"type": "agent", "id": "a1"},
        )
        hub.dispatcher.wake()
        await eventually(
            lambda doc=doc: hub.store.messages.find_one({"_id": doc["_id"]}),
            lambda m: m["status"] in ("sent", "failed"),
        )

    values = samples(await (await hub_client.get("/metrics")).text())

    assert values[("hub_messages_out_total", (("channel", "sms"),))] == 1.0
    key = ("hub_send_errors_total", (("channel", "sms"), ("kind", "permanent")))
    assert values[key] == 1.0


# -- graceful shutdown ---------------------------------------------------------------------


async def test_shutdown_finishes_in_flight_webhooks_and_every_200_is_stored(make_settings, store):
    """Webhooks being handled when shutdown begins still reach ingest, are
    answered 200 and are stored; the hub stops taking new connections."""
    app = build_app(make_settings())
    runner = web.AppRunner(app, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/testchan/t1"
    adapter = app[HUB].adapters["t1"]
    adapter.hold = asyncio.Event()
    in_flight = 20

    async def deliver(session: aiohttp.ClientSession, n: int) -> int | None:
        body, headers = signed_form(
            {"MessageSid": f"SMg{n:03d}", "From": f"+1555400{n:04d}", "Body": f"m{n}"}
        )
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError:
            return None

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(deliver(session, n)) for n in range(in_flight)]
        await eventually(lambda: asyncio.sleep(0, adapter.held), lambda n: n == in_flight)
        cleanup = asyncio.create_task(runner.cleanup())
        await eventually(lambda: asyncio.sleep(0, runner.sites), lambda s: not s)
        assert await deliver(session, 999) is None  # shutdown has begun: refused
        adapter.hold.set()
        statuses = await asyncio.gather(*tasks)
        await cleanup

    assert statuses == [200] * in_flight
    stored = {m["provider_id"] async for m in store.messages.find()}
    assert stored == {f"SMg{n:03d}" for n in range(in_flight)}


async def test_stopping_the_dispatcher_lets_an_in_flight_send_finish_and_record(
    hub_client, provider
):
    hub = hub_of(hub_client)
    provider.delay = 0.5
    resp = await post_inbound(hub_client, MessageSid="SMs1", From=NUMBER, Body="hi")
    message = await hub.store.messages.find_one({"_id": (await resp.json())["id"]})
    doc = await enqueue(
        hub.store,
        hub.events,
        conversation_id=message["conversation_id"],
        text="slow provider",
        sender={"type": "agent", "id": "a1"},
    )
    sub = hub.bus.subscribe()
    hub.dispatcher.wake()
    await next_event(sub, of_type("message.updated", id=doc["_id"], status="sending"))

    await hub.dispatcher.stop()

    finished = await hub.store.messages.find_one({"_id": doc["_id"]})
    assert finished["status"] == "sent"
    assert finished["provider_id"] == provider.sent[0]["id"]
    assert await hub.store.outbox.count_documents({}) == 0


# -- logs ----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiohttp.access", "pymongo")}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        # pytest adds and removes its own capture handlers around each phase.
        if not type(handler).__module__.startswith("_pytest") and handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def log_everything_secret(secret: str) -> None:
    log = logging.getLogger("hub.test")
    log.info(
        "connecting with %s now",
        secret,
        extra={
            "authorization": "Bearer xyz",
            "header": "sent Bearer abc.DEF-123 upstream",
            "nested": {"password": "hunter22", "note": f"key={secret}"},
            "api_key": "k-98765",
            "inbox": "t1",
            "count": 3,
        },
    )
    try:
        raise RuntimeError(f"provider refused {secret}")
    except RuntimeError:
        log.exception("send failed")


LEAKS = ("xyz", "abc.DEF-123", "hunter22", "k-98765")


def test_json_logs_redact_secrets_auth_headers_and_sensitive_keys(restore_logging):
    stream = io.StringIO()
    setup_logging("INFO", "json", {"s3cr3t-value"}, stream=stream)

    log_everything_secret("s3cr3t-value")

    output = stream.getvalue()
    for leak in ("s3cr3t-value", *LEAKS):
        assert leak not in output, leak
    first, second = (json.loads(line) for line in output.splitlines())
    assert first["msg"] == "connecting with *** now"
    assert first["level"] == "info"
    assert first["logger"] == "hub.test"
    assert first["authorization"] == "***"
    assert first["header"] == "sent Bearer *** upstream"
    assert first["nested"] == {"password": "***", "note": "key=***"}
    assert first["inbox"] == "t1"
    assert first["count"] == 3
    assert second["level"] == "error"
    assert "RuntimeError: provider refused ***" in second["exc"]


def test_text_logs_redact_the_same(restore_logging):
    stream = io.StringIO()
    setup_logging("INFO", "text", {"s3cr3t-value"}, stream=stream)
    log_everything_secret("s3cr3t-value")
    output = stream.getvalue()
    assert "connecting with *** now" in output
    for leak in ("s3cr3t-value", *LEAKS):
        assert leak not in output, leak


def test_logs_redact_the_channel_secrets_named_by_the_config(restore_logging, make_settings):
    settings = make_settings()
    assert SECRET in settings.secrets
    stream = io.StringIO()
    setup_logging("INFO", "json", settings.secrets, stream=stream)
    logging.getLogger("hub.test").warning("signature check used %s", SECRET)
    (entry,) = (json.loads(line) for line in stream.getvalue().splitlines())
    assert SECRET not in stream.getvalue()
    assert entry["msg"] == "signature check used ***"


def test_debug_lines_are_dropped_below_the_configured_level(restore_logging):
    stream = io.StringIO()
    setup_logging("WARNING", "json", (), stream=stream)
    logging.getLogger("hub.test").info("not shown")
    logging.getLogger("hub.test").warning("shown")
    messages: list[Any] = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert messages == ["shown"]
