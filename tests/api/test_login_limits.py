"""Login limits (security probe): an attempt is counted before its password is
checked, a known browser with the right password passes an account's or an
address's backoff, a trusted proxy's X-Forwarded-For names the client, the
backoff grows, and admins see and clear the limits."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub.api.base import API
from hub.app import build_app
from hub.config import Settings
from hub.services.accounts import Passwords
from tests.api.conftest import FAST_HASHER, PASSWORD, Client, accounts, hub, make_agent

DEVICE_COOKIE = "hub_device"


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _login(
    client: Client,
    email: str,
    password: str = PASSWORD,
    *,
    device: str | None = None,
    forwarded: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and Set-Cookie headers (by name) of one login; the test
    client's cookie jar is left empty, so a request sends only what it says."""
    headers = {}
    if device is not None:
        headers["Cookie"] = f"{DEVICE_COOKIE}={device}"
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    resp = await client.post(
        "/api/auth/login", json={"email": email, "password": password}, headers=headers
    )
    body = await resp.json()
    cookies = {c.split("=", 1)[0]: c for c in resp.headers.getall("Set-Cookie", [])}
    client.session.cookie_jar.clear()
    return resp.status, body, cookies


def _cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


async def _known_browser(client: Client, email: str) -> str:
    """Log `email` in once; the device cookie its browser is given."""
    status, _body, cookies = await _login(client, email)
    assert status == 200
    assert DEVICE_COOKIE in cookies, "a successful login marks the browser"
    return _cookie_value(cookies[DEVICE_COOKIE])


async def _agent(client: Client, email: str, role: str = "agent") -> dict[str, Any]:
    return await accounts(client).create_agent(
        email=email, name=email.split("@")[0].title(), role=role, password=PASSWORD
    )


def _with_server(settings: Settings, **server: Any) -> Settings:
    return dataclasses.replace(settings, server=settings.server.model_copy(update=server))


async def _client(settings: Settings) -> AsyncIterator[Client]:
    for name in ("HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        os.environ.pop(name, None)
    async with TestClient(TestServer(build_app(settings))) as client:
        accounts(client).passwords = Passwords(FAST_HASHER)
        yield client


@pytest.fixture
async def proxied(api_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    """The hub behind a trusted reverse proxy at 127.0.0.1 (the test client's address)."""
    async for client in _client(_with_server(api_settings(), trusted_proxies=["127.0.0.1"])):
        yield client


@pytest.fixture
async def https_api(api_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async for client in _client(_with_server(api_settings(), public_url="https://hub.example")):
        yield client


# -- counted before checked -----------------------------------------------------------------


async def test_concurrent_wrong_passwords_are_counted_before_they_are_checked(api, monkeypatch):
    """13 wrong passwords at once: only the account's limit (5) reach the password
    check, the rest and the right password sent in the same burst get 429."""
    await _agent(api, "burst@example.com")
    passwords = accounts(api).passwords
    check = passwords.verify
    gate = asyncio.Event()
    checking = 0

    async def gated(stored: str | None, password: str) -> bool:
        nonlocal checking
        checking += 1
        await gate.wait()
        return await check(stored, password)

    monkeypatch.setattr(passwords, "verify", gated)
    wrong = [asyncio.create_task(_login(api, "burst@example.com", "wrong")) for _ in range(13)]
    settled = await _until(lambda: checking + sum(t.done() for t in wrong) == 13)
    right = asyncio.create_task(_login(api, "burst@example.com"))
    settled = settled and await _until(
        lambda: checking + sum(t.done() for t in wrong) + right.done() == 14
    )
    gate.set()
    statuses = [status for status, _, _ in await asyncio.gather(*wrong)]
    right_status, right_body, _ = await right
    assert settled
    assert checking == 5
    assert sorted(statuses) == [401] * 5 + [429] * 8
    assert right_status == 429
    assert right_body["error"]["code"] == "too_many_attempts"
    assert await hub(api).store.tokens.count_documents({}) == 0


# -- known browsers ---------------------------------------------------------------------------


async def test_a_known_browser_with_the_right_password_passes_the_account_backoff(api):
    await _agent(api, "dee@example.com")
    device = await _known_browser(api, "dee@example.com")
    for _ in range(5):  # someone else, elsewhere, guessing
        assert (await _login(api, "dee@example.com", "wrong"))[0] == 401
    assert (await _login(api, "dee@example.com"))[0] == 429  # an unknown browser waits
    status, body, _ = await _login(api, "dee@example.com", device=device)
    assert status == 200
    assert body["token"]
    # A made-up or another account's device cookie is no known browser.
    assert (await _login(api, "dee@example.com", device="x" * 43))[0] == 429
    await _agent(api, "other@example.com")
    other_device = await _known_browser(api, "other@example.com")
    assert (await _login(api, "dee@example.com", device=other_device))[0] == 429


async def test_a_known_browser_has_its_own_limit_on_wrong_passwords(api):
    """A device cookie (stolen, say) does not give unlimited guesses: its wrong
    passwords back that browser off, and count against nobody else."""
    await _agent(api, "fin@example.com")
    device = await _known_browser(api, "fin@example.com")
    for _ in range(5):
        assert (await _login(api, "fin@example.com", "wrong", device=device))[0] == 401
    assert (await _login(api, "fin@example.com", device=device))[0] == 429
    assert (await _login(api, "fin@example.com"))[0] == 200  # another browser is not held


async def test_a_known_browser_passes_a_shared_address_that_is_backed_off(api):
    """Behind one address (a proxy, an office), a flood of failures does not keep
    out an agent whose browser has logged in before."""
    api.app[API].limiter.per_address = 3
    await _agent(api, "eve@example.com")
    device = await _known_browser(api, "eve@example.com")
    for n in range(3):
        assert (await _login(api, f"guess{n}@example.com", "wrong"))[0] == 401
    assert (await _login(api, "eve@example.com"))[0] == 429
    assert (await _login(api, "eve@example.com", device=device))[0] == 200


async def test_the_device_cookie_is_httponly_strict_for_login_only_and_secure_with_https(
    api, https_api
):
    for client, secure in ((api, False), (https_api, True)):
        email = f"gil{int(secure)}@example.com"
        await _agent(client, email)
        _status, _body, cookies = await _login(client, email)
        device = cookies[DEVICE_COOKIE]
        assert "HttpOnly" in device
        assert "SameSite=Strict" in device
        assert "Path=/api/auth/login" in device
        assert ("Secure" in device) is secure
        assert ("Secure" in cookies["hub_session"]) is secure
        stored = await hub(client).store.agents.find_one({"email": email})
        assert _cookie_value(device) not in str(stored)  # only its hash is kept


async def test_a_new_password_forgets_the_known_browsers(api):
    admin = await make_agent(api, "admin")
    agent = await _agent(api, "hal@example.com")
    device = await _known_browser(api, "hal@example.com")
    new = "another password 2"
    resp = await api.patch(
        f"/api/agents/{agent['_id']}", json={"password": new}, headers=admin.auth
    )
    assert resp.status == 200
    for _ in range(5):
        assert (await _login(api, "hal@example.com", "wrong"))[0] == 401
    assert (await _login(api, "hal@example.com", new, device=device))[0] == 429


# -- the client's address -----------------------------------------------------------------


async def test_a_trusted_proxy_names_the_client_in_x_forwarded_for(proxied):
    proxied.app[API].limiter.per_address = 3
    await _agent(proxied, "ivy@example.com")
    for n in range(3):
        status, *_ = await _login(
            proxied, f"guess{n}@example.com", "wrong", forwarded="203.0.113.5"
        )
        assert status == 401
    # The right-most address the trusted proxy did not add is the client's: what a
    # client writes to the left of it, or further trusted hops, change nothing.
    for forwarded in ("203.0.113.5", "198.51.100.9, 203.0.113.5", "203.0.113.5, 127.0.0.1"):
        assert (await _login(proxied, "ivy@example.com", forwarded=forwarded))[0] == 429
    # Another client behind the same proxy is not held by that one's failures.
    assert (await _login(proxied, "ivy@example.com", forwarded="203.0.113.6"))[0] == 200
    failed = await hub(proxied).store.audit.find({"action": "login.failed"}).to_list()
    assert {doc["address"] for doc in failed} == {"203.0.113.5"}


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(api):
    api.app[API].limiter.per_address = 3
    await _agent(api, "jo@example.com")
    for n in range(3):
        forwarded = f"203.0.113.{n}"
        assert (await _login(api, f"guess{n}@example.com", "wrong", forwarded=forwarded))[0] == 401
    assert (await _login(api, "jo@example.com", forwarded="203.0.113.99"))[0] == 429


# -- admins see and clear limits --------------------------------------------------------------


async def test_an_admin_sees_and_clears_a_backed_off_account(api):
    admin = await make_agent(api, "admin")
    await _agent(api, "kim@example.com")
    for _ in range(5):
        assert (await _login(api, "kim@example.com", "wrong"))[0] == 401
    assert (await _login(api, "kim@example.com"))[0] == 429
    resp = await api.get("/api/auth/locks", headers=admin.auth)
    assert resp.status == 200
    items = (await resp.json())["items"]
    account = next(i for i in items if i["kind"] == "account")
    assert account["subject"] == "kim@example.com"
    assert account["retry_after"] > 0
    assert account["locked_until"]
    address = next(i for i in items if i["kind"] == "address")
    assert address["subject"] == "127.0.0.1"
    assert address["failures"] == 5
    assert address["locked_until"] is None
    cleared = await api.delete(f"/api/auth/locks/{account['id']}", headers=admin.auth)
    assert cleared.status == 200
    audit = await hub(api).store.audit.find_one({"action": "login.lock_cleared"})
    assert audit["agent_id"] == admin.id
    assert audit["target"] == account["id"]
    assert audit["subject"] == "kim@example.com"
    assert (await _login(api, "kim@example.com"))[0] == 200
    after = (await (await api.get("/api/auth/locks", headers=admin.auth)).json())["items"]
    assert all(i["kind"] != "account" for i in after)
    again = await api.delete(f"/api/auth/locks/{account['id']}", headers=admin.auth)
    assert again.status == 404


async def test_only_an_admin_sees_or_clears_login_limits(api):
    await _agent(api, "lee@example.com")
    for _ in range(5):
        await _login(api, "lee@example.com", "wrong")
    admin = await make_agent(api, "admin")
    (lock,) = [
        i
        for i in (await (await api.get("/api/auth/locks", headers=admin.auth)).json())["items"]
        if i["kind"] == "account"
    ]
    for role in ("agent", "supervisor"):
        who = await make_agent(api, role)
        assert (await api.get("/api/auth/locks", headers=who.auth)).status == 403
        resp = await api.delete(f"/api/auth/locks/{lock['id']}", headers=who.auth)
        assert resp.status == 403
    assert (await _login(api, "lee@example.com"))[0] == 429


# -- the backoff ----------------------------------------------------------------------------


async def test_the_backoff_doubles_up_to_its_longest_and_then_lets_the_right_password_in(api):
    limiter = api.app[API].limiter
    now = [1000.0]
    limiter.clock = lambda: now[0]
    limiter.backoff = 60.0
    limiter.lockout = 200.0
    limiter.per_address = 1000  # only the account's backoff here
    await _agent(api, "max@example.com")
    for expected in (60, 120, 200, 200):
        for _ in range(5):
            assert (await _login(api, "max@example.com", "wrong"))[0] == 401
        status, body, _ = await _login(api, "max@example.com")
        assert status == 429
        assert f"try again in {expected} s" in body["error"]["message"]
        now[0] += expected - 1
        assert (await _login(api, "max@example.com"))[0] == 429
        now[0] += 1
    assert (await _login(api, "max@example.com"))[0] == 200


def test_the_client_address_is_the_peer_or_what_a_trusted_proxy_says():
    from hub.api.auth import client_address

    trusted = ["10.0.0.1", "10.0.0.2", "::1"]
    cases = [
        # (peer, X-Forwarded-For headers, client)
        ("198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # peer not a proxy: no belief
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.5, 10.0.0.2"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1", "203.0.113.5"], "203.0.113.5"),  # headers in order
        ("10.0.0.1", ["203.0.113.5:4711"], "203.0.113.5"),
        ("10.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::1", ["2001:db8::7"], "2001:db8::7"),
        ("::ffff:10.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1, not-an-address"], "10.0.0.1"),
        ("10.0.0.1", ["10.0.0.2"], "10.0.0.1"),  # only proxies: the peer
        (None, ["203.0.113.5"], "unknown"),
    ]
    for peer, forwarded, client in cases:
        assert client_address(peer, forwarded, trusted) == client, (peer, forwarded)


def test_an_ipv6_client_is_limited_by_its_64():
    from hub.services.accounts import LoginLimiter, TooManyAttempts

    limiter = LoginLimiter(per_address=2)
    for n in range(2):
        attempt = limiter.start(f"a{n}@example.com", f"2001:db8:1:2::{n + 1}")
        limiter.finish(attempt, False)
    with pytest.raises(TooManyAttempts):
        limiter.start("b@example.com", "2001:db8:1:2:ffff::9")
    limiter.finish(limiter.start("b@example.com", "2001:db8:1:3::1"), True)
    assert [lock.subject for lock in limiter.locks() if lock.kind == "address"] == [
        "2001:db8:1:2::/64"
    ]
