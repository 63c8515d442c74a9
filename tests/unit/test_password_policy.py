"""One password policy: ``accounts.min_password_length`` (the old
``modules.register.min_password_length`` is read with a deprecation warning), and
what it refuses."""

from __future__ import annotations

import logging

import pytest

from xmppd.auth.passwords import MAX_PASSWORD_LENGTH, password_problem
from xmppd.config import ConfigError, parse_config


def test_the_shared_setting_and_its_default() -> None:
    assert parse_config({}).accounts.min_password_length == 8
    config = parse_config({"accounts": {"min_password_length": 12}})
    assert config.accounts.min_password_length == 12
    with pytest.raises(ConfigError, match=r"accounts\.min_password_length"):
        parse_config({"accounts": {"min_password_length": 0}})


def test_the_old_register_key_is_moved_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xmppd.config"):
        config = parse_config(
            {"modules": {"register": {"allow_registration": True, "min_password_length": 10}}}
        )
    assert config.accounts.min_password_length == 10
    assert config.modules["register"] == {"allow_registration": True}
    assert "modules.register.min_password_length is deprecated" in caplog.text
    # Per host too; the new key wins when both are given.
    config = parse_config(
        {
            "accounts": {"min_password_length": 6},
            "hosts": {"example.org": {"modules": {"register": {"min_password_length": 20}}}},
        }
    )
    assert config.accounts.min_password_length == 6
    assert config.hosts["example.org"].modules == {"register": {}}
    with pytest.raises(ConfigError, match=r"accounts\.min_password_length"):
        parse_config({"modules": {"register": {"min_password_length": "long"}}})


def test_what_the_policy_refuses() -> None:
    assert password_problem("12345678", 8) is None
    assert "too short" in (password_problem("1234567", 8) or "")
    assert "too long" in (password_problem("x" * (MAX_PASSWORD_LENGTH + 1), 8) or "")
    assert "OpaqueString" in (password_problem("abc\x00defgh", 4) or "")
    assert password_problem("pässwörd ok", 4) is None
