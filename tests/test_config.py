"""The config file: TOML validated into typed settings, with errors that name the
file, the key and what is wrong (CONTRACT.md, "Config file")."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hub.config import ConfigError, Settings, load_settings, parse_settings

# The contract's example, limited to what exists today: the server and store
# sections as written there, and inboxes on the test channel.
CONTRACT_EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8080
public_url = "http://127.0.0.1:8080"  # the base URL providers call (Twilio signs it)

[store]
uri = ""            # MongoDB URI; empty: the embedded store
database = "hub"
data_dir = "var"    # relative to this file

[[inboxes]]
id = "site"
channel = "testchan"
secret = "${HUB_TEST_FORM_SECRET}"     # ${VAR} reads the environment
api_base = "http://127.0.0.1:9"

[[inboxes]]
id = "pbx"
channel = "testchan"
secret = "pbx-secret-value"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HUB_CONFIG", "MONGODB_URI", "HUB_TEST_FORM_SECRET", "HUB_TEST_MISSING"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_no_file_gives_the_defaults_with_data_dir_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.source == "<defaults>"
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.store.uri == ""
    assert settings.store.database == "hub"
    assert settings.data_dir == (tmp_path / "var").resolve()
    assert settings.identity.default_region == "US"
    assert settings.inboxes == ()
    assert settings.public_url == "http://127.0.0.1:8080"


def test_contract_example_server_and_store_keys_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TEST_FORM_SECRET", "form-secret-from-env")
    path = write(tmp_path, CONTRACT_EXAMPLE)
    settings = load_settings(path)
    assert settings.source == str(path)
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.public_url == "http://127.0.0.1:8080"
    assert (settings.store.uri, settings.store.database) == ("", "hub")
    assert settings.data_dir == (tmp_path / "var").resolve()
    assert [(i.id, i.channel) for i in settings.inboxes] == [
        ("site", "testchan"),
        ("pbx", "testchan"),
    ]
    site = settings.inbox("site")
    assert site is not None
    assert site.settings.secret == "form-secret-from-env"  # type: ignore[attr-defined]
    assert site.settings.api_base == "http://127.0.0.1:9"  # type: ignore[attr-defined]
    assert settings.inbox("nope") is None


def test_public_url_drops_a_trailing_slash(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[server]\npublic_url = "https://hub.example.com/"\n'))
    assert settings.public_url == "https://hub.example.com"


def test_env_reference_is_expanded_inside_a_longer_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TEST_FORM_SECRET", "middle")
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "a"
        channel = "testchan"
        secret = "pre-${HUB_TEST_FORM_SECRET}-post"
        """,
    )
    (inbox,) = load_settings(path).inboxes
    assert inbox.settings.secret == "pre-middle-post"  # type: ignore[attr-defined]


def test_env_reference_can_fill_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TEST_FORM_SECRET", "8181")
    path = write(tmp_path, '[server]\nport = "${HUB_TEST_FORM_SECRET}"\n')
    assert load_settings(path).server.port == 8181


def test_missing_env_variable_names_the_file_the_key_and_the_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "a"
        channel = "testchan"
        secret = "${HUB_TEST_MISSING}"
        """,
    )
    message = config_error(path)
    assert str(path) in message
    assert "inboxes[0].secret" in message
    assert "HUB_TEST_MISSING" in message


def test_hub_config_names_the_file_when_no_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[server]\nport = 9123\n", name="from-env.toml")
    monkeypatch.setenv("HUB_CONFIG", str(path))
    settings = load_settings()
    assert settings.server.port == 9123
    assert settings.source == str(path)


def test_explicit_path_wins_over_hub_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(tmp_path, "[server]\nport = 9123\n", name="env.toml")
    arg_file = write(tmp_path, "[server]\nport = 9124\n", name="arg.toml")
    monkeypatch.setenv("HUB_CONFIG", str(env_file))
    assert load_settings(arg_file).server.port == 9124


def test_mongodb_uri_overrides_store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[store]\nuri = "mongodb://127.0.0.1:1/"\n')
    assert load_settings(path).store.uri == "mongodb://127.0.0.1:1/"
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:2/?replicaSet=rs0")
    settings = load_settings(path)
    assert settings.store.uri == "mongodb://127.0.0.1:2/?replicaSet=rs0"
    # The URI may carry a password: it is redacted from logs like any secret.
    assert "mongodb://127.0.0.1:2/?replicaSet=rs0" in settings.secrets


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'colour = "blue"\n')
    message = config_error(path)
    assert str(path) in message
    assert "colour: unknown key" in message


def test_unknown_key_in_a_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 8080\n")
    message = config_error(path)
    assert str(path) in message
    assert "server.prot: unknown key" in message


def test_unknown_key_inside_an_inbox_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "a"
        channel = "testchan"
        secret = "long-enough"

        [[inboxes]]
        id = "b"
        channel = "testchan"
        secret = "long-enough"
        scret = "typo"
        """,
    )
    message = config_error(path)
    assert str(path) in message
    assert "inboxes[1].scret: unknown key" in message


def test_invalid_value_names_the_key_and_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 70000\n")
    message = config_error(path)
    assert "server.port" in message
    assert "65535" in message


def test_invalid_channel_setting_names_the_inbox_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "a"
        channel = "testchan"
        secret = "short"
        """,
    )
    message = config_error(path)
    assert "inboxes[0].secret" in message
    assert "at least 8 characters" in message


def test_unknown_channel_is_named_with_the_available_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "a"
        channel = "carrier-pigeon"
        """,
    )
    message = config_error(path)
    assert str(path) in message
    assert "inboxes[0].channel" in message
    assert "carrier-pigeon" in message
    assert "available:" in message
    assert "testchan" in message


def test_missing_channel_is_reported_as_a_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[inboxes]]\nid = "a"\n')
    message = config_error(path)
    assert "inboxes[0].channel: required key is missing" in message
    assert "available: " in message and "testchan" in message and "twilio" in message


def test_missing_or_malformed_inbox_id_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[[inboxes]]\nchannel = "testchan"\nsecret = "long-enough"\n')
    assert "inboxes[0].id" in config_error(path)
    path = write(
        tmp_path, '[[inboxes]]\nid = "has space"\nchannel = "testchan"\nsecret = "long-enough"\n'
    )
    assert "inboxes[0].id" in config_error(path)


def test_duplicate_inbox_ids_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[inboxes]]
        id = "same"
        channel = "testchan"
        secret = "long-enough"

        [[inboxes]]
        id = "same"
        channel = "testchan"
        secret = "long-enough"
        """,
    )
    message = config_error(path)
    assert str(path) in message
    assert "inboxes[1].id" in message
    assert "duplicate" in message
    assert "'same'" in message


def test_invalid_toml_names_the_file_and_the_position(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "127.0.0.1\n')
    message = config_error(path)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 2" in message


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = config_error(path)
    assert str(path) in message
    assert "cannot read" in message


def test_directory_instead_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path)
    assert str(tmp_path) in message
    assert "cannot read" in message


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[server]\nhost = "caf\xe9"\n'.encode("latin-1"))
    message = config_error(path)
    assert str(path) in message
    assert "UTF-8" in message


def test_relative_data_dir_is_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(conf_dir, '[store]\ndata_dir = "state/db"\n')
    assert load_settings(path).data_dir == (conf_dir / "state" / "db").resolve()
    # Also when the file itself is named by a relative path.
    assert load_settings("../etc/hub.toml").data_dir == (conf_dir / "state" / "db").resolve()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    path = write(tmp_path, f'[store]\ndata_dir = "{target}"\n')
    assert load_settings(path).data_dir == target.resolve()


def test_secrets_marked_by_the_channel_and_from_the_environment_are_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TEST_FORM_SECRET", "form-secret-from-env")
    settings = load_settings(write(tmp_path, CONTRACT_EXAMPLE))
    assert "form-secret-from-env" in settings.secrets
    assert "pbx-secret-value" in settings.secrets
    # Settings not marked secret stay out.
    assert "http://127.0.0.1:9" not in settings.secrets


def test_password_in_the_store_uri_is_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nuri = "mongodb://hub:p%40ss-word@db.internal:27017/"\n')
    settings = load_settings(path)
    assert "p%40ss-word" in settings.secrets
    assert "p@ss-word" in settings.secrets
    assert settings.store.uri == "mongodb://hub:p%40ss-word@db.internal:27017/"


def test_parse_settings_reports_its_source_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^<mine>: logging\.level"):
        parse_settings({"logging": {"level": "LOUD"}}, source="<mine>", base_dir=tmp_path)
    settings = parse_settings({"identity": {"default_region": "gb"}}, base_dir=tmp_path)
    assert isinstance(settings, Settings)
    assert settings.identity.default_region == "GB"
