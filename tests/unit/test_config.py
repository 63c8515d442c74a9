"""Configuration validation: errors name the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmppd.config import ConfigError, load_config, parse_config, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xmppd.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[c2s]\nmax_stanza_size = 'huge'\n", "c2s.max_stanza_size: expected a size"),
        ("[c2s]\nconnect_timeout = 'soon'\n", "c2s.connect_timeout: expected a duration"),
        ("[server]\nlog_levl = 'info'\n", "server.log_levl: unknown key"),
        ("[[listeners]]\nport = 70000\n", "listeners.0.port"),
        ("[storage]\nurl = 'mysql://x'\n", "storage.url: expected a sqlite+aiosqlite://"),
        ("[hosts]\n", "hosts: at least one host is needed"),
        ("[tls]\ncertificate = 'a.pem'\n", "tls: set both certificate and key, or neither"),
        (
            "[[listeners]]\ntls = 'none'\n",
            "listener on port 5222 has tls = 'none' but c2s.require_encryption is true",
        ),
        ("not toml = = 1", "not valid TOML"),
        (
            "[hosts.localhost]\nadmins = ['boss@example.net']\n",
            "hosts.localhost.admins.0: 'boss@example.net' is not on one of this server's hosts",
        ),
        (
            "[hosts.localhost]\nadmins = ['localhost']\n",
            "hosts.localhost.admins.0: 'localhost' is not a bare JID",
        ),
        ("[sessions]\nregistry = 'redis'\n", "sessions.registry"),
        (
            "[[listeners]]\nkind = 'http'\ntls = 'starttls'\n",
            "HTTP listeners have no STARTTLS",
        ),
        ("[http]\npublic_url = 'chat.example.org'\n", "http.public_url: expected an http://"),
        (
            "[http]\nops_allowed = ['intranet']\n",
            "http.ops_allowed: 'intranet' is not an IP address",
        ),
        ("[http]\ntrusted_proxies = ['proxy']\n", "http.trusted_proxies: 'proxy' is not an IP"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\ndata_dir = 'd'\n[storage]\nurl = 'sqlite+aiosqlite:///db/x.sqlite3'\n"
        "[hosts.'example.org']\ncertificate = 'c.pem'\nkey = 'k.pem'\n",
    )
    config = load_config(path)
    assert config.server.data_dir == tmp_path / "d"
    assert config.storage_url() == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'db/x.sqlite3'}"
    assert config.hosts["example.org"].certificate == tmp_path / "c.pem"


def test_defaults_without_a_file() -> None:
    config = parse_config({})
    assert list(config.hosts) == ["localhost"]
    assert [(listener.port, listener.tls) for listener in config.listeners] == [
        (5222, "starttls"),
        (5223, "direct"),
        (5280, "none"),  # kind = "http": WebSocket, BOSH, discovery
    ]
    http = config.listeners[2]
    assert http.kind == "http" and http.address == "127.0.0.1"
    assert config.c2s.require_encryption and config.c2s.max_stanza_size == 256 * 1024


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1d", 86400.0), (12, 12.0), ("1.5h", 5400.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_sizes() -> None:
    assert parse_size("256KiB") == 262144 and parse_size("10MiB") == 10 * 1024 * 1024
    with pytest.raises(ValueError):
        parse_size("lots")
