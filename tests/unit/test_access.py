"""AccessRule: the one "who may" option type (anyone / local / admins / nobody / listed)."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from xmppd.access import AccessRule
from xmppd.jid import JID
from xmppd.module import Options

LOCAL = {"example.org"}
ADMINS = {JID.parse("boss@example.org")}


def allows(rule: AccessRule, jid: str) -> bool:
    return rule.allows(
        JID.parse(jid), is_local=lambda j: j.domain in LOCAL, is_admin=lambda j: j.bare in ADMINS
    )


@pytest.mark.parametrize(
    ("rule", "jid", "expected"),
    [
        ("anyone", "stranger@elsewhere.net/x", True),
        ("nobody", "boss@example.org", False),
        ("local", "alice@example.org/phone", True),
        ("local", "alice@elsewhere.net", False),
        ("local", "example.org", False),  # the server itself is not a local user
        ("admins", "boss@example.org/laptop", True),
        ("admins", "alice@example.org", False),
        (["alice@example.org"], "alice@example.org/any", True),
        (["alice@example.org"], "bob@example.org", False),
        (["elsewhere.net"], "carol@elsewhere.net/x", True),
        (["elsewhere.net"], "carol@sub.elsewhere.net", False),
    ],
)
def test_rule_allows_whom_it_says(rule: object, jid: str, expected: bool) -> None:
    assert allows(AccessRule.parse(rule), jid) is expected


class _Opts(Options):
    create: AccessRule = Field(AccessRule("local"), description="who may")


def test_rule_is_an_option_type_with_a_default_and_round_trips() -> None:
    assert _Opts().create.kind == "local"
    listed = _Opts.model_validate({"create": ["bob@example.org", "example.net"]}).create
    assert listed.kind == "listed"
    assert listed.describe() == ["bob@example.org", "example.net"]
    assert _Opts.model_validate({"create": "admins"}).model_dump() == {"create": "admins"}


@pytest.mark.parametrize("bad", ["everyone", 3, ["not a jid@@"], [1]])
def test_bad_rule_is_a_config_error(bad: object) -> None:
    with pytest.raises(ValidationError) as err:
        _Opts.model_validate({"create": bad})
    assert "create" in str(err.value)
