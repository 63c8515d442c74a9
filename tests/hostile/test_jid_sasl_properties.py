"""Properties of JID parsing, SASL (SCRAM, PLAIN) and SASL2 under random and garbled
input (issue 15 fuzzing). The targets are in :mod:`tests.hostile.fuzz_targets`.

``XMPPD_FUZZ_EXAMPLES`` sets ``max_examples`` (150 in the suite); the long campaign is
``python -m tests.hostile.fuzz``. Crashers found are kept as ``@example`` cases here.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.hostile.fuzz import kept_crashers, run_bytes
from tests.hostile.fuzz_targets import (
    MECHANISMS,
    PASSWORD,
    USER,
    jid_target,
    sasl2_target,
    sasl_target,
)

EXAMPLES = int(os.environ.get("XMPPD_FUZZ_EXAMPLES", "150"))
_DATABASE = os.environ.get("XMPPD_FUZZ_DATABASE")
"""Where the long campaign (tests/hostile/fuzz.py) keeps failing examples."""
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    **({"database": DirectoryBasedExampleDatabase(_DATABASE)} if _DATABASE else {}),
)

# ----------------------------------------------------------------------------- JIDs

_JID_PIECES = st.sampled_from(
    ["@", "/", ".", "..", "juliet", "example.org", "[::1]", "[", "]", "xn--", "-", "\u0301"]
)
_ANY_CHAR = st.characters(codec=None, exclude_categories=())
"""Every code point, lone surrogates included (text that did not come from XML)."""
jids = st.one_of(
    st.text(_ANY_CHAR, max_size=40),
    st.lists(st.one_of(_JID_PIECES, st.text(max_size=6)), max_size=8).map("".join),
    st.text(st.sampled_from("a@/.-[]:"), max_size=1100),
)


@SETTINGS
@given(jids)
@example("a@b/c")
@example("\ud800@example.org")
@example("@example.org")
@example("a" * 1024 + "@example.org")
@example("juliet@[::1]/\u0301")
def test_jid_parse_raises_only_invalid_jid_and_round_trips(text: str) -> None:
    jid_target(text)


# ----------------------------------------------------------------------------- SASL


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


_gs2 = st.sampled_from(
    [
        *("n,,", "y,,", "p=tls-server-end-point,,", "p=tls-unique,,", "p=bogus,,"),
        *("n,a=juliet,", "n,a=x@example.org,", "x,,", "", "n,", ",,", "n,a==2C,"),
    ]
)
_attr = st.tuples(
    st.sampled_from(["n", "r", "m", "c", "p", "s", "i", "e", "x", "", "N", "=="]),
    st.one_of(
        st.sampled_from([USER, "juliet=2C", "=3D", "", "{nonce}", "abc", "\u00e9", "biws"]),
        st.text(max_size=12),
        st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode()),
    ),
).map(lambda kv: f"{kv[0]}={kv[1]}" if kv[0] else kv[1])
scram_messages = st.builds(
    lambda gs2, attrs: (gs2 + ",".join(attrs)).encode("utf-8", "surrogatepass"),
    _gs2,
    st.lists(_attr, max_size=6),
)
plain_messages = st.one_of(
    st.lists(
        st.one_of(st.sampled_from([USER, PASSWORD, "", "x@example.org"]), st.text(max_size=8)),
        min_size=1,
        max_size=4,
    ).map(lambda parts: "\0".join(parts).encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
)
exchanges = st.tuples(
    st.sampled_from(MECHANISMS),
    st.lists(st.one_of(scram_messages, plain_messages, st.binary(max_size=80)), max_size=4),
)


@SETTINGS
@given(exchanges)
@example(("SCRAM-SHA-256", [b"n,,n=juliet,r=abc", b"c=biws,r={nonce},p=AAAA"]))
@example(("SCRAM-SHA-1", [b"n,,n=juliet,r=abc", b"c=biws,r={nonce}"]))
@example(("SCRAM-SHA-256-PLUS", [b"p=tls-server-end-point,,n=juliet,r=a", b"c=,r={nonce},p="]))
@example(("PLAIN", [b"\0juliet\0wrong"]))
@example(("PLAIN", [b"\xff\0juliet\0" + PASSWORD.encode()]))
@example(("SCRAM-SHA-512", [b"", b"n,,n=\xed\xa0\x80,r=x"]))
def test_sasl_exchanges_end_only_in_documented_failures(
    exchange: tuple[str, list[bytes]],
) -> None:
    mechanism, messages = exchange
    outcomes = sasl_target(mechanism, messages)
    if mechanism.startswith("SCRAM") and "success" in outcomes:
        raise AssertionError(f"a garbled SCRAM exchange succeeded: {messages!r}")


def test_a_correct_plain_login_still_succeeds() -> None:
    """The target can see success: the property above is not vacuous."""
    assert sasl_target("PLAIN", [f"\0{USER}\0{PASSWORD}".encode()]) == ["success"]


# ----------------------------------------------------------------------------- SASL2

_SASL2 = "urn:xmpp:sasl:2"
authenticates = st.builds(
    lambda mech, initial, agent_id, software, extra: (
        f"<authenticate xmlns='{_SASL2}'{mech}>{initial}"
        f"<user-agent{agent_id}><software>{software}</software></user-agent>{extra}"
        "</authenticate>"
    ).encode("utf-8", "surrogatepass"),
    st.sampled_from(["", " mechanism=''", " mechanism='PLAIN'", " mechanism='SCRAM-SHA-1'"]),
    st.one_of(
        st.just(""),
        st.text(st.sampled_from("AZaz09+/= \n&;<"), max_size=40).map(
            lambda t: f"<initial-response>{t}</initial-response>"
        ),
        st.binary(max_size=30).map(
            lambda b: f"<initial-response>{_b64(b).decode()}</initial-response>"
        ),
    ),
    st.sampled_from(["", " id=''", " id='d4565fa7-4d72-4749-b3d3-740edbf87770'", " id='x'"]),
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            "<bind xmlns='urn:xmpp:bind:0'><tag>x</tag></bind>",
            "<request-token xmlns='urn:xmpp:fast:0'/>",
            "<fast xmlns='urn:xmpp:fast:0' count='x'/>",
            "<resume xmlns='urn:xmpp:sm:3' previd='a' h='-1'/>",
        ]
    ),
)


@SETTINGS
@given(st.one_of(authenticates, st.binary(max_size=200)))
@example(
    b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>===</initial-response></authenticate>"
)
def test_sasl2_authenticate_reader_raises_only_documented_errors(xml: bytes) -> None:
    sasl2_target(xml)


# ----------------------------------------------------------------------------- kept crashers


def _kept() -> list[tuple[str, Path]]:
    return [(t, p) for t in ("jid", "sasl", "sasl2") for p in kept_crashers(t)]


@pytest.mark.parametrize(
    ("target", "path"), _kept() or [pytest.param("", Path(), marks=pytest.mark.skip("none kept"))]
)
def test_kept_fuzz_crashers(target: str, path: Path) -> None:
    """Inputs that once broke a target (``python -m tests.hostile.fuzz`` keeps them)."""
    run_bytes(target, path.read_bytes())


# ------------------------------------------------------------------ SASL usernames


def _prepared_the_long_way(raw: str) -> str | None:
    from xmppd.auth.sasl import _OPAQUE_PROFILE
    from xmppd.jid import InvalidJID, nodeprep

    try:
        return nodeprep(_OPAQUE_PROFILE.enforce(raw))
    except (UnicodeError, InvalidJID):
        return None


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12))
@example(" ")
@example("Juliet ")
@example("jul\x7fiet")
def test_an_ascii_username_is_prepared_as_saslprep_then_nodeprep_would(raw: str) -> None:
    """The shortcut for printable ASCII (OpaqueString leaves it as it is) gives what
    the whole profile gives, for every ASCII string."""
    from xmppd.auth.sasl import prepare_username
    from xmppd.jid import InvalidJID

    try:
        quick: str | None = prepare_username(raw)
    except InvalidJID:
        quick = None
    assert quick == _prepared_the_long_way(raw)
