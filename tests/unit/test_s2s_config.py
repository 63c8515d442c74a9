"""The [s2s] section and s2s listeners: defaults, policies, pins, refusals."""

from __future__ import annotations

import pytest

from xmppd.config import ConfigError, parse_config


def test_an_s2s_listener_defaults_to_5269_with_starttls() -> None:
    config = parse_config({"listeners": [{"kind": "s2s"}]})
    (listener,) = config.listeners
    assert (listener.kind, listener.port, listener.tls) == ("s2s", 5269, "starttls")
    assert config.s2s.enabled and config.s2s.default_policy == "dialback"


def test_policies_deny_and_allow_lists() -> None:
    config = parse_config(
        {
            "s2s": {
                "policies": {"bank.example": "certificates"},
                "deny": ["spam.example"],
            }
        }
    )
    s2s = config.s2s
    assert s2s.policy_for("bank.example") == "certificates"
    assert s2s.policy_for("spam.example") == "deny"
    assert s2s.policy_for("muc.spam.example") == "deny"
    assert s2s.policy_for("other.example") == "dialback"
    only = parse_config({"s2s": {"allow": ["friend.example"]}}).s2s
    assert only.policy_for("friend.example") == "dialback"
    assert only.policy_for("chat.friend.example") == "dialback"
    assert only.policy_for("stranger.example") == "deny"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"listeners": [{"kind": "s2s", "tls": "none"}]}, "server-to-server streams need TLS"),
        ({"s2s": {"pins": {"x.example": "nohost"}}}, 's2s.pins: x.example: expected "host:port"'),
        ({"s2s": {"default_policy": "maybe"}}, "s2s.default_policy"),
        ({"s2s": {"deny": ["Upper.Example"]}}, "expected a lowercase domain name"),
    ],
)
def test_invalid_s2s_settings_are_refused(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert expected in str(err.value)
