"""`hub agents add` (CONTRACT.md, "Commands")."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from hub.services.accounts import Passwords

TIMEOUT = 60  # a bound on a hung command, not a measurement


def _run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HUB_CONFIG", "MONGODB_URI")}
    return subprocess.run(  # noqa: S603  (our own interpreter and module)
        [sys.executable, "-m", "hub.cli", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


async def test_agents_add_creates_an_agent_who_can_log_in(tmp_path, embedded_uri, db_name, store):
    (tmp_path / "hub.toml").write_text(f'[store]\nuri = "{embedded_uri}"\ndatabase = "{db_name}"\n')
    args = (
        "agents",
        "add",
        "--config",
        "hub.toml",
        "--email",
        "Boss@Example.com",
        "--name",
        "Boss",
    )
    env = {"NEW_PW": "s3cret-pass"}
    result = await asyncio.to_thread(
        _run, tmp_path, *args, "--role", "admin", "--password-env", "NEW_PW", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "boss@example.com" in result.stdout
    agent = await store.agents.find_one({"email": "boss@example.com"})
    assert agent is not None and agent["role"] == "admin" and agent["name"] == "Boss"
    assert await Passwords().verify(agent["password_hash"], "s3cret-pass")
    again = await asyncio.to_thread(
        _run, tmp_path, *args, "--role", "agent", "--password-env", "NEW_PW", env=env
    )
    assert again.returncode == 1
    assert "exists" in again.stderr
    empty = await asyncio.to_thread(
        _run, tmp_path, *args, "--role", "agent", "--password-env", "UNSET_PW_VAR", env={}
    )
    assert empty.returncode == 2
    assert await store.agents.count_documents({}) == 1
