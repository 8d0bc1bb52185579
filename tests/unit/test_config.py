"""Settings: defaults, environment, flags, one-line errors naming the setting, and the CLI."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs
import pytest

from nexus_actors.cli import main
from nexus_actors.config import Config, settings_table
from nexus_actors.errors import ConfigError


def test_no_sources_gives_the_documented_defaults() -> None:
    config = Config.from_sources({}, {})
    assert config == Config()
    assert config.port == 5000
    assert config.heartbeat_interval == 30.0
    assert config.heartbeat_timeout == 10.0
    assert config.host_grace == 15.0
    assert config.hibernation_timeout == 600.0
    assert config.cursor_tick_hz == 20.0
    assert config.max_message_bytes == 65536
    assert config.max_players == 16
    assert config.log_level == "info"


def test_environment_variables_set_values_with_their_types() -> None:
    config = Config.from_sources({}, {
        "PORT": "6001", "NEXUS_HEARTBEAT_INTERVAL": "2.5", "NEXUS_HOST_GRACE": "0",
        "NEXUS_MAX_PLAYERS": " 4 ", "LOG_LEVEL": "DEBUG", "NEXUS_HOST": "127.0.0.1",
    })
    assert config.port == 6001
    assert config.heartbeat_interval == 2.5
    assert config.host_grace == 0.0
    assert config.max_players == 4
    assert config.log_level == "debug"
    assert config.host == "127.0.0.1"


def test_flags_win_over_the_environment() -> None:
    config = Config.from_sources({"port": "7000", "max_players": None},
                                 {"PORT": "6000", "NEXUS_MAX_PLAYERS": "3"})
    assert config.port == 7000
    assert config.max_players == 3


def test_a_flag_hides_a_bad_environment_value_for_the_same_setting() -> None:
    assert Config.from_sources({"port": "7000"}, {"PORT": "abc"}).port == 7000


def test_keyword_overrides_win_over_everything() -> None:
    config = Config.from_sources({"port": "7000"}, {"PORT": "6000"}, port=1234)
    assert config.port == 1234


def test_blank_environment_values_are_ignored() -> None:
    config = Config.from_sources({}, {"PORT": "", "NEXUS_HEARTBEAT_INTERVAL": "   ",
                                      "LOG_LEVEL": ""})
    assert config == Config()


def test_unrelated_environment_variables_are_ignored() -> None:
    assert Config.from_sources({}, {"HOME": "/root", "NEXUS_UNKNOWN": "x"}) == Config()


@pytest.mark.parametrize(("env", "value"), [
    ("NEXUS_HEARTBEAT_INTERVAL", "abc"),
    ("NEXUS_HEARTBEAT_INTERVAL", "0"),
    ("NEXUS_HEARTBEAT_INTERVAL", "-1"),
    ("NEXUS_HEARTBEAT_INTERVAL", "nan"),
    ("NEXUS_HEARTBEAT_INTERVAL", "inf"),
    ("NEXUS_HEARTBEAT_TIMEOUT", "0"),
    ("NEXUS_HOST_GRACE", "-0.5"),
    ("NEXUS_HIBERNATION_TIMEOUT", "soon"),
    ("NEXUS_CURSOR_TICK_HZ", "0"),
    ("NEXUS_CURSOR_TICK_HZ", "1001"),
    ("NEXUS_MAX_MESSAGE_BYTES", "100"),
    ("NEXUS_MAX_PLAYERS", "0"),
    ("NEXUS_MAX_PLAYERS", "2.5"),
    ("PORT", "70000"),
    ("PORT", "-1"),
    ("PORT", "http"),
    ("PORT", "80\n80"),
    ("LOG_LEVEL", "loud"),
    ("NEXUS_LOG_FORMAT", "xml"),
    ("CORS_ORIGIN", "table.example.com"),
    ("CORS_ORIGIN", "https://table.example.com/play"),
    ("CORS_ORIGIN", "ftp://table.example.com"),
    ("NEXUS_TRUSTED_PROXIES", "10.0.0.0/33"),
    ("NEXUS_TRUSTED_PROXIES", "proxy.internal"),
    ("NEXUS_NODE_ID", "two words"),
    ("NEXUS_NODE_ID", "x" * 101),
    ("NEXUS_LEASE_TTL", "0.5"),
    ("NEXUS_ADVERTISE_URL", "http://10.0.0.5:5000"),
    ("NEXUS_ADVERTISE_URL", "10.0.0.5:5000"),
])
def test_every_bad_value_fails_with_one_line_naming_the_setting(env: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_sources({}, {env: value})
    message = caught.value.message
    assert env in message
    assert repr(value) in message
    assert "\n" not in message


def test_a_bad_flag_is_named_by_its_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_sources({"heartbeat_timeout": "-3"}, {})
    assert "--heartbeat-timeout" in caught.value.message
    assert "\n" not in caught.value.message


def test_a_blank_flag_is_an_error_not_a_default() -> None:
    with pytest.raises(ConfigError, match="--port"):
        Config.from_sources({"port": ""}, {})


def test_boundary_values_are_accepted() -> None:
    config = Config.from_sources({}, {"PORT": "0", "NEXUS_CURSOR_TICK_HZ": "1000",
                                      "NEXUS_MAX_MESSAGE_BYTES": "256"})
    assert (config.port, config.cursor_tick_hz, config.max_message_bytes) == (0, 1000.0, 256)
    assert Config.from_sources({}, {"PORT": "65535"}).port == 65535


def test_settings_table_lists_every_setting_with_env_flag_and_default() -> None:
    table = settings_table().splitlines()
    settings = Config.settings()
    assert len(table) == 2 + len(settings)
    for row, (_name, meta, default) in zip(table[2:], settings, strict=True):
        assert f"`{meta.env}`" in row
        assert f"`{meta.flag}`" in row
        assert (f"`{default}`" if default is not None else "| unset") in row
        assert meta.help in row


def test_every_config_field_is_a_setting() -> None:
    assert [name for name, _, _ in Config.settings()] == [f.name for f in attrs.fields(Config)]


def test_cli_serve_with_a_bad_environment_exits_2_with_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEXUS_HEARTBEAT_INTERVAL", "abc")
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "NEXUS_HEARTBEAT_INTERVAL" in lines[0]
    assert captured.out == ""


def test_cli_serve_with_a_bad_flag_exits_2_naming_the_flag(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PORT", raising=False)
    assert main(["serve", "--port", "70000"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "--port" in lines[0]


def test_cli_settings_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    assert capsys.readouterr().out == settings_table() + "\n"


def test_configuration_doc_shows_the_current_settings_table() -> None:
    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert settings_table() in doc.read_text(), (
        "docs/configuration.md is stale: paste the output of `nexus-actors settings`")


def test_database_url_is_never_shown_in_the_config_repr() -> None:
    config = Config.from_sources({}, {"DATABASE_URL": "postgresql://app:s3cret@db/nexus"})
    assert config.database_url == "postgresql://app:s3cret@db/nexus"
    assert "s3cret" not in repr(config)


def test_db_ssl_accepts_the_usual_spellings_and_refuses_others() -> None:
    assert Config.from_sources({}, {"DB_SSL": "true"}).db_ssl is True
    assert Config.from_sources({}, {"DB_SSL": "0"}).db_ssl is False
    with pytest.raises(ConfigError, match="DB_SSL"):
        Config.from_sources({}, {"DB_SSL": "maybe"})


def test_cors_origins_are_a_normalized_set() -> None:
    config = Config.from_sources({}, {
        "CORS_ORIGIN": " https://Table.example.com/ , http://localhost:5000,"})
    assert config.cors_origin == frozenset({"https://table.example.com",
                                            "http://localhost:5000"})
    assert Config.from_sources({}, {}).cors_origin is None


def test_scale_out_settings_parse_into_networks_ids_and_urls() -> None:
    config = Config.from_sources({}, {
        "NEXUS_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1", "NEXUS_NODE_ID": "pod-7:5000",
        "NEXUS_LEASE_TTL": "6", "NEXUS_ADVERTISE_URL": "wss://nexus-7.internal:5000/"})
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                      ipaddress.ip_network("127.0.0.1/32"),
                                      ipaddress.ip_network("::1/128"))
    assert (config.node_id, config.lease_ttl) == ("pod-7:5000", 6.0)
    assert config.advertise_url == "wss://nexus-7.internal:5000"
    defaults = Config.from_sources({}, {})
    assert (defaults.trusted_proxies, defaults.node_id, defaults.advertise_url) == (
        None, None, None)
    assert defaults.lease_ttl == 15.0
