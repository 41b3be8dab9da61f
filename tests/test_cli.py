"""`hub check`: validates the config and reaches the store; exit 0 when all is well,
non-zero with a clear message otherwise (CONTRACT.md, "Commands")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from hub.store.embedded import EmbeddedStore
from hub.store.embedded_server import INFO_NAME

TIMEOUT = 60  # a bound on a hung command, not a measurement


def run_hub(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ)
    for name in ("HUB_CONFIG", "MONGODB_URI", "HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"):
        base.pop(name, None)
    base.update(env or {})
    return subprocess.run(  # noqa: S603  (our own interpreter and module)
        [sys.executable, "-m", "hub.cli", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_with_a_valid_config_reports_the_store_answering_and_exits_0(
    tmp_path: Path,
) -> None:
    (tmp_path / "hub.toml").write_text('[store]\ndatabase = "hubcheck"\ndata_dir = "state"\n')
    result = run_hub(tmp_path, "check", "--config", "hub.toml")
    assert result.returncode == 0, result.stderr
    assert "config hub.toml is valid" in result.stdout
    assert "store answers" in result.stdout
    assert str(tmp_path / "state") in result.stdout
    assert "database hubcheck" in result.stdout
    # It started the embedded store in the configured data_dir and stopped it again.
    assert (tmp_path / "state" / "hub.sqlite3").exists()
    assert not (tmp_path / "state" / INFO_NAME).exists()


async def test_check_uses_the_store_already_running_on_the_data_dir_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    running = EmbeddedStore(tmp_path / "state")
    await running.start()
    try:
        assert running.process is not None
        (tmp_path / "hub.toml").write_text('[store]\ndata_dir = "state"\n')
        result = run_hub(tmp_path, "check", "--config", "hub.toml")
        assert result.returncode == 0, result.stderr
        assert "store answers" in result.stdout
        assert running.process.returncode is None
        info = json.loads((tmp_path / "state" / INFO_NAME).read_text())
        assert info["pid"] == running.process.pid
    finally:
        await running.stop()


def test_check_honours_hub_config(tmp_path: Path) -> None:
    (tmp_path / "chosen.toml").write_text("[server]\nprot = 1\n")
    result = run_hub(tmp_path, "check", env={"HUB_CONFIG": "chosen.toml"})
    assert result.returncode != 0
    assert "chosen.toml: server.prot: unknown key" in result.stderr


def test_check_with_a_bad_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('[server]\nport = 8080\n\n[store]\ndatabse = "hub"\n')
    result = run_hub(tmp_path, "check", "--config", "hub.toml")
    assert result.returncode != 0
    assert "hub.toml: store.databse: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_with_a_missing_config_file_says_so(tmp_path: Path) -> None:
    result = run_hub(tmp_path, "check", "--config", "absent.toml")
    assert result.returncode != 0
    assert "absent.toml: cannot read the config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_against_a_closed_port_fails_clearly_without_showing_the_password(
    tmp_path: Path,
) -> None:
    port = closed_port()
    (tmp_path / "hub.toml").write_text(
        "[store]\n"
        f'uri = "mongodb://hubuser:pw-not-for-eyes@127.0.0.1:{port}/"\n'
        "server_selection_timeout_ms = 500\n"
    )
    result = run_hub(tmp_path, "check", "--config", "hub.toml")
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert "pw-not-for-eyes" not in result.stderr + result.stdout
    assert "store answers" not in result.stdout


def test_mongodb_uri_overrides_the_config_for_check(tmp_path: Path) -> None:
    port = closed_port()
    (tmp_path / "hub.toml").write_text(
        '[store]\ndata_dir = "state"\nserver_selection_timeout_ms = 500\n'
    )
    result = run_hub(
        tmp_path,
        "check",
        "--config",
        "hub.toml",
        env={"MONGODB_URI": f"mongodb://127.0.0.1:{port}/"},
    )
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    # No embedded store was started for the config's data_dir.
    assert not (tmp_path / "state").exists()


def test_serve_with_an_unreachable_store_exits_with_a_clear_message(tmp_path: Path) -> None:
    port = closed_port()
    (tmp_path / "hub.toml").write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n\n'
        "[store]\n"
        f'uri = "mongodb://hubuser:pw-not-for-eyes@127.0.0.1:{port}/"\n'
        "server_selection_timeout_ms = 500\n\n"
        '[logging]\nlevel = "ERROR"\n'
    )
    result = run_hub(tmp_path, "serve", "--config", "hub.toml")
    assert result.returncode == 1
    assert "hub: cannot serve: store" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "pw-not-for-eyes" not in result.stderr + result.stdout


def test_serve_with_a_bad_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('[server]\nhost = "127.0.0.1"\nport = -1\n')
    result = run_hub(tmp_path, "serve", "--config", "hub.toml")
    assert result.returncode != 0
    assert "hub.toml: server.port" in result.stderr
    assert "Traceback" not in result.stderr
    assert "inbox at" not in result.stdout
