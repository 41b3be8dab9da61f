"""The graceful stop's bound: however a part of the hub hangs while stopping, the
hub exits 2 x server.shutdown_timeout + 5 s after SIGTERM (the grace period the
deployment files give it, tests/test_deploy.py), and says so in its log.

A stop that goes well (requests and sends in flight finish, the inbox leases
are handed to another hub at once) is tested with real processes in
tests/multihub/test_two_hubs.py::test_graceful_stop_of_the_lease_holder_hands_the_inbox_over_at_once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import pytest

from hub.config import Settings
from hub.server import run_forever, stop_budget
from hub.services.dispatcher import Dispatcher


async def test_a_stop_that_hangs_is_cut_off_at_the_budget(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(server={"port": 0, "shutdown_timeout": 0.5})
    budget = stop_budget(settings.server)
    assert budget == 6.0

    async def hang(self: Dispatcher, grace: float = 10.0) -> None:
        await asyncio.sleep(3600)  # a part that never finishes stopping

    monkeypatch.setattr(Dispatcher, "stop", hang)
    ready = asyncio.Event()
    serving = asyncio.create_task(run_forever(settings, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="hub.server"):
        os.kill(os.getpid(), signal.SIGTERM)  # run_forever's handler takes it
        await asyncio.wait_for(serving, budget + 10)
    took = loop.time() - started
    assert budget <= took < budget + 2, f"stopped after {took:.2f} s"
    assert "graceful stop cut short" in caplog.text
