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


EXAMPLE = Path(__file__).parents[2] / "config" / "xmppd.toml"


def test_example_config_is_exactly_the_defaults() -> None:
    """config/xmppd.toml changes nothing: the same sections, the same data directory
    (from the repository root, as ./dev runs), and on every host the same modules with
    the same options as without a file."""
    from xmppd.modules import import_module, module_table, validate_options

    example = load_config(EXAMPLE)
    default = parse_config({})
    repo = EXAMPLE.parents[1]
    assert example.server.data_dir.resolve() == (repo / default.server.data_dir).resolve()
    skip = {"server": {"data_dir"}, "source": True, "modules": True}  # compared below
    assert example.model_dump(exclude=skip) == default.model_dump(exclude=skip)
    assert list(example.hosts) == list(default.hosts)
    for domain in default.hosts:
        ours, theirs = module_table(example, domain), module_table(default, domain)
        assert list(ours) == list(theirs)
        for name in theirs:
            module = import_module(name)
            assert validate_options(module, ours[name], name, "x") == validate_options(
                module, theirs[name], name, "x"
            ), name
    assert example.hooks == default.hooks == {}


def test_every_error_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\n"  # 1
        "log_levl = 'info'\n"  # 2
        "[c2s]\n"  # 3
        "max_unacked = '50'\n"  # 4
        "require_encryption = 'yes'\n"  # 5
        "[storage]\n"  # 6
        "pool_size = 2.0\n"  # 7
        "auto_upgrade = 1\n",  # 8
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.lines == [
        f"{path}: server.log_levl: unknown key (did you mean 'log_level'?) (line 2)",
        f"{path}: c2s.max_unacked: expected a whole number, got a string (line 4)",
        f"{path}: c2s.require_encryption: expected true or false, got a string (line 5)",
        f"{path}: storage.pool_size: expected a whole number, got a number (line 7)",
        f"{path}: storage.auto_upgrade: expected true or false, got a whole number (line 8)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[c2s]\nmax_unacked = '50'\n", "c2s.max_unacked: expected a whole number, got a string"),
        ("[http]\nbosh = 'false'\n", "http.bosh: expected true or false, got a string"),
        ("[[listeners]]\nport = '5222'\n", "listeners.0.port: expected a whole number"),
        ("[s2s]\nenabled = 0\n", "s2s.enabled: expected true or false, got a whole number"),
        # A duration or size may still be a string: that is its format.
        ("[c2s]\nconnect_timeout = 'x'\n", "c2s.connect_timeout: expected a duration"),
    ],
)
def test_strings_are_refused_where_numbers_or_booleans_belong(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)


def test_numbers_still_accepted_where_they_belong(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[c2s]\nmax_unacked = 50\nconnect_timeout = '5s'\nresume_timeout = 0\n")
    )
    assert (config.c2s.max_unacked, config.c2s.connect_timeout) == (50, 5.0)
    assert config.c2s.resume_timeout == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[listeners]]\nport = 6000\n[[listeners]]\naddress = '127.0.0.1'\nport = 6000\n",
            "listeners.1: 127.0.0.1 port 6000 is already taken by listeners.0 (0.0.0.0 port "
            "6000): two listeners cannot share an address and port (line 3)",
        ),
        (
            "[[listeners]]\naddress = '127.0.0.1'\nport = 6000\n"
            "[[listeners]]\nkind = 'http'\nport = 6000\n",
            "listeners.1: 127.0.0.1 port 6000 is already taken by listeners.0",
        ),
        (
            "[[components]]\ndomain = 'push.localhost'\nsecret = 'x'\n",
            "components: external components are configured but no listener has kind = 'component'",
        ),
    ],
)
def test_listener_conflicts_and_lonely_components(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)


def test_distinct_listeners_on_one_port_are_fine(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[[listeners]]\naddress = '127.0.0.1'\nport = 6000\n"
            "[[listeners]]\naddress = '127.0.0.2'\nport = 6000\n"
            "[[listeners]]\naddress = '::1'\nport = 6001\n"
            "[[listeners]]\naddress = '127.0.0.1'\nport = 6001\n",
        )
    )
    assert len(config.listeners) == 4


@pytest.mark.parametrize(
    ("text", "forbidden"),
    [
        ("[c2s]\nmax_unacked = 'x'\n", "Input should"),
        ("[[listeners]]\nport = 70000\n", "Input should"),
        ("[[listeners]]\ntls = 'maybe'\n", "Input should"),
        ("[[components]]\ndomain = 'a.localhost'\n", "Field required"),
        ("[hosts]\nlocalhost = 5\n", "valid dictionary"),
    ],
)
def test_no_library_wording(tmp_path: Path, text: str, forbidden: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert forbidden not in message and "pydantic" not in message and "https://" not in message


def test_check_config_reports_server_and_module_problems_together(tmp_path: Path) -> None:
    from xmppd.configcheck import check_file

    path = write(
        tmp_path,
        "[c2s]\n"  # 1
        "max_unacked = '50'\n"  # 2
        "[modules.rostr]\n"  # 3
        "[modules.ping]\n"  # 4
        "idle_intervl = '5m'\n"  # 5
        "timeout = true\n",  # 6
    )
    assert check_file(path) == [
        f"{path}: c2s.max_unacked: expected a whole number, got a string (line 2)",
        f"{path}: modules.rostr: no such module (modules/mod_rostr.py) (did you mean 'roster'?) "
        "(line 3)",
        f"{path}: modules.ping.idle_intervl: unknown key (did you mean 'idle_interval'?) (line 5)",
        f"{path}: modules.ping.timeout: expected a duration such as '30s', '5m' or '1d' (line 6)",
    ]
    assert check_file(EXAMPLE) == []


def test_key_lines_follow_tables_arrays_and_multiline_values() -> None:
    from xmppd.configtext import KeyLines

    lines = KeyLines(
        "[server]\n"  # 1
        "data_dir = 'x'\n"  # 2
        "[[listeners]]\n"  # 3
        "port = 1\n"  # 4
        "[[listeners]]\n"  # 5
        "tls = '''\n"  # 6
        "port = 2\n"  # 7 (inside the string)
        "'''\n"  # 8
        "port = 3\n"  # 9
        "[hosts.'example.org']\n"  # 10
        "admins = [\n"  # 11
        "  'a@example.org',\n"  # 12
        "]\n"  # 13
        "certificate = 'c'\n"  # 14
    )
    assert lines.line_of("server.data_dir") == 2
    assert lines.line_of("listeners.0.port") == 4
    assert lines.line_of("listeners.1.port") == 9
    assert lines.line_of("listeners.1.backlog") == 5
    assert lines.line_of("hosts.example.org.admins.0") == 11
    assert lines.line_of("hosts.example.org.certificate") == 14
    assert lines.line_of("storage.url") is None


def test_toml_syntax_errors_speak_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[c2s]\nmax_unacked = 5\n[c2s]\nresume_timeout = 0\n"))
    assert (
        str(err.value)
        == f"{tmp_path / 'xmppd.toml'}: not valid TOML: cannot declare c2s twice (line 3, column 5)"
    )
