"""Fuzzing (issue "Hardening"): what the fuzz modules share.

Each module runs one hub for all its examples (a module-scoped app on the
session's embedded store, in a database of its own that is dropped at the end),
so Hypothesis spends its time on inputs, not on start-ups.

Hypothesis profiles, chosen with HUB_FUZZ_PROFILE:

- `ci` (the default): a fixed number of examples per route, derandomized, so a
  run is reproducible and CI fails only when the code changed, not by luck;
- `deep`: random and ten times as many examples, for a developer hunting bugs
  (`HUB_FUZZ_PROFILE=deep ./dev test tests/fuzz`); its failures print a seed.

Neither keeps an example database, and Hypothesis' own caches go to a temporary
directory, never to `.hypothesis/` in the work tree.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from pymongo import AsyncMongoClient

from hub.app import build_app
from hub.config import Settings, parse_settings

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hub-fuzz-hypothesis")

# Examples per route (or per API operation) in the `ci` profile.
CI_EXAMPLES = 60

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("deep", max_examples=CI_EXAMPLES * 10, **_COMMON)
PROFILE = os.environ.get("HUB_FUZZ_PROFILE", "ci")
FUZZ = settings.get_profile(PROFILE)


def examples(share: float = 1.0) -> int:
    """The profile's examples per test, scaled by `share` (at least 10)."""
    return max(10, round(FUZZ.max_examples * share))


Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
async def module_db(embedded_uri: str) -> AsyncIterator[str]:
    """A database of the module's own on the session's store, dropped after it."""
    name = "fz" + secrets.token_hex(6)
    yield name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(embedded_uri)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def module_settings(
    embedded_uri: str, module_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings for a hub on the module's database, with the module's inboxes."""
    base_dir = tmp_path_factory.mktemp("fuzz")

    def make(inboxes: list[dict[str, Any]], **sections: dict[str, Any]) -> Settings:
        data: dict[str, Any] = {
            "store": {"uri": embedded_uri, "database": module_db},
            "dispatcher": {"poll_interval": 0.2, "backoff_base": 0.2, "backoff_max": 1.0},
            "events": {"poll_interval": 0.2},
            "inboxes": inboxes,
        }
        data.update(sections)
        return parse_settings(data, source="<fuzz>", base_dir=base_dir)

    return make


async def running(settings_: Settings) -> TestClient[web.Request, web.Application]:
    """A started test client of a hub built from `settings_` (close it with `.close()`)."""
    client: Client = TestClient(TestServer(build_app(settings_)))
    await client.start_server()
    return client
