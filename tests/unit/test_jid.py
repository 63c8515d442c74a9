"""Tests for xmppd.jid (RFC 7622 addresses)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from precis_i18n import get_profile

from xmppd.jid import JID, InvalidJID, domainprep, nodeprep, resourceprep

# RFC 7622 §3.5 "Examples": valid JIDs and their expected prepared parts.
RFC7622_VALID = [
    ("juliet@example.com", ("juliet", "example.com", "")),
    ("juliet@example.com/foo", ("juliet", "example.com", "foo")),
    ("juliet@example.com/foo bar", ("juliet", "example.com", "foo bar")),
    ("juliet@example.com/foo@bar", ("juliet", "example.com", "foo@bar")),
    ("foo\\20bar@example.com", ("foo\\20bar", "example.com", "")),
    ("fussball@example.com", ("fussball", "example.com", "")),
    ("fußball@example.com", ("fußball", "example.com", "")),
    ("π@example.com", ("π", "example.com", "")),
    ("Σ@example.com/foo", ("\u03c3", "example.com", "foo")),
    ("\u03c3@example.com/foo", ("\u03c3", "example.com", "foo")),
    ("ς@example.com/foo", ("ς", "example.com", "foo")),
    ("king@example.com/♚", ("king", "example.com", "♚")),
    ("example.com", ("", "example.com", "")),
    ("example.com/foobar", ("", "example.com", "foobar")),
    ("a.example.com/b@example.net", ("", "a.example.com", "b@example.net")),
]

# RFC 7622 §3.5 examples of invalid JIDs, plus a few more.
RFC7622_INVALID = [
    '"juliet"@example.com',
    "foo bar@example.com",
    "juliet@example.com/",
    "@example.com/",
    "henryⅣ@example.com",
    "♚@example.com",
    "juliet@",
    "/foobar",
    "",
    "@example.com",
    "juliet@example.com/\x07",
    "jul\x00iet@example.com",
    "a@b@example.com",
    "juliet&co@example.com",
    "juliet'@example.com",
    "ju:liet@example.com",
    "<juliet>@example.com",
    "jul\u200biet@example.com",
]


@pytest.mark.parametrize(("text", "parts"), RFC7622_VALID)
def test_parse_accepts_rfc7622_valid_examples(text: str, parts: tuple[str, str, str]) -> None:
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == parts


@pytest.mark.parametrize("text", RFC7622_INVALID)
def test_parse_rejects_invalid_examples(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_invalid_jid_is_a_value_error() -> None:
    assert issubclass(InvalidJID, ValueError)


def test_local_and_domain_are_case_mapped_but_resource_is_not() -> None:
    jid = JID.parse("JuLiEt@ExAmPlE.COM/BalCony")
    assert jid == JID("juliet", "example.com", "BalCony")
    assert JID.parse("juliet@example.com/balcony") != jid


def test_equality_and_hash_use_prepared_parts() -> None:
    a = JID.parse("Juliet@Example.com/r")
    b = JID.parse("juliet@example.com./r")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_fullwidth_localpart_is_width_mapped() -> None:
    assert JID.parse("\uff2a\uff35\uff2c\uff29\uff25\uff34@example.com").local == "juliet"


def test_fullwidth_at_sign_in_localpart_is_rejected() -> None:
    # U+FF20 maps to "@" under UsernameCaseMapped, which a localpart may not contain.
    with pytest.raises(InvalidJID):
        nodeprep("a\uff20b")


@pytest.mark.parametrize("code", range(0x80))
def test_ascii_localpart_fast_path_matches_precis(code: int) -> None:
    profile = get_profile("UsernameCaseMapped")
    text = f"aB{chr(code)}c"
    try:
        expected: str | None = profile.enforce(text)
    except UnicodeError:
        expected = None
    if expected is not None and set(expected) & set("\"&'/:<>@"):
        expected = None
    try:
        got: str | None = nodeprep(text)
    except InvalidJID:
        got = None
    assert got == expected


@pytest.mark.parametrize("code", range(0x80))
def test_ascii_resource_fast_path_matches_precis(code: int) -> None:
    profile = get_profile("OpaqueString")
    text = f"Re{chr(code)}S"
    try:
        expected: str | None = profile.enforce(text)
    except UnicodeError:
        expected = None
    try:
        got: str | None = resourceprep(text)
    except InvalidJID:
        got = None
    assert got == expected


def test_resource_keeps_spaces_and_maps_non_ascii_spaces() -> None:
    assert resourceprep(" a b ") == " a b "
    assert resourceprep("a\u00a0b") == "a b"


def test_resource_is_nfc_normalised() -> None:
    assert resourceprep("e\u0301") == "\u00e9"


def test_resource_may_contain_slashes_and_at_signs() -> None:
    jid = JID.parse("juliet@example.com/a/b@c")
    assert jid.resource == "a/b@c"


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("EXAMPLE.COM", "example.com"),
        ("example.com.", "example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.example", "a-b.example"),
        ("localhost", "localhost"),
        ("192.0.2.1", "192.0.2.1"),
        ("[::1]", "[::1]"),
        ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
        ("Bücher.Example", "bücher.example"),
        ("bu\u0308cher.example", "bücher.example"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25。com", "example.com"),
        ("例え。テスト", "例え.テスト"),
        ("ΑΒΓ.example", "αβγ.example"),
    ],
)
def test_domainpart_is_prepared(domain: str, expected: str) -> None:
    assert domainprep(domain) == expected
    assert JID.parse(f"user@{domain}/r").domain == expected


@pytest.mark.parametrize(
    "domain",
    [
        "",
        ".",
        "example..com",
        ".example.com",
        "example.com..",
        "-example.com",
        "example-.com",
        "exa mple.com",
        "exa_mple.com",
        "example.com:5222",
        "a" * 64 + ".com",
        "[::1",
        "[::g]",
        "[fe80::1%eth0]",
        "[1.2.3.4]",
        "♚.example",
        "bü cher.example",
        "\u0308a.example",
        "ü" * 60 + ".example",
    ],
)
def test_invalid_domainparts_are_rejected(domain: str) -> None:
    with pytest.raises(InvalidJID):
        domainprep(domain)


def test_label_of_63_octets_is_allowed() -> None:
    domain = "a" * 63 + ".com"
    assert JID.parse(domain).domain == domain


def test_localpart_length_limit_is_1023_octets() -> None:
    assert JID.parse("a" * 1023 + "@example.com").local == "a" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("a" * 1024 + "@example.com")
    assert nodeprep("é" * 511) == "é" * 511  # 1022 octets
    with pytest.raises(InvalidJID):
        nodeprep("é" * 512)  # 1024 octets


def test_resourcepart_length_limit_is_1023_octets() -> None:
    assert JID.parse("example.com/" + "r" * 1023).resource == "r" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("example.com/" + "r" * 1024)
    with pytest.raises(InvalidJID):
        resourceprep("ř" * 512)


def test_domainpart_length_limit_is_1023_octets() -> None:
    domain = ".".join(["a" * 63] * 16)
    assert len(domain) == 1023
    assert JID.parse(domain).domain == domain
    with pytest.raises(InvalidJID):
        JID.parse(domain + ".b")


def test_huge_input_is_rejected() -> None:
    with pytest.raises(InvalidJID):
        JID.parse("é" * 100_000 + "@example.com")
    with pytest.raises(InvalidJID):
        JID.parse("example.com/" + "ř" * 100_000)


@pytest.mark.parametrize(
    "text",
    [
        "juliet@example.com",
        "juliet@example.com/balcony",
        "example.com",
        "example.com/foo/bar",
        "\u03c3@example.com/♚",
        "a.example.com/b@example.net",
        "[::1]/x",
    ],
)
def test_str_round_trips_canonical_forms(text: str) -> None:
    jid = JID.parse(text)
    assert str(jid) == text
    assert JID.parse(str(jid)) == jid


def test_str_gives_the_prepared_form() -> None:
    assert str(JID.parse("Juliet@Example.COM./Balcony")) == "juliet@example.com/Balcony"


def test_bare_strips_the_resource() -> None:
    full = JID.parse("juliet@example.com/balcony")
    assert full.bare == JID("juliet", "example.com")
    assert full.bare.is_bare
    assert full.bare_str == "juliet@example.com"
    assert str(full.bare) == "juliet@example.com"


def test_bare_returns_self_when_already_bare() -> None:
    jid = JID.parse("juliet@example.com")
    assert jid.bare is jid
    assert jid.bare_str == "juliet@example.com"


def test_kind_predicates() -> None:
    full = JID.parse("juliet@example.com/r")
    bare = JID.parse("juliet@example.com")
    domain = JID.parse("example.com")
    domain_full = JID.parse("example.com/r")
    assert (full.is_bare, full.is_full, full.is_domain) == (False, True, False)
    assert (bare.is_bare, bare.is_full, bare.is_domain) == (True, False, False)
    assert (domain.is_bare, domain.is_full, domain.is_domain) == (True, False, True)
    assert (domain_full.is_bare, domain_full.is_full, domain_full.is_domain) == (
        False,
        True,
        False,
    )


def test_with_resource_prepares_the_resource() -> None:
    jid = JID.parse("juliet@example.com/old")
    new = jid.with_resource("New\u00a0One")
    assert new == JID("juliet", "example.com", "New One")
    with pytest.raises(InvalidJID):
        jid.with_resource("")
    with pytest.raises(InvalidJID):
        jid.with_resource("bad\x00")


def test_create_prepares_like_parse() -> None:
    assert JID.create("Juliet", "Example.com.", "Balcony") == JID.parse(
        "juliet@example.com/Balcony"
    )
    assert JID.create("", "example.com") == JID.parse("example.com")
    assert str(JID.create("", "example.com", "r")) == "example.com/r"


@pytest.mark.parametrize(
    ("local", "domain", "resource"),
    [
        ("a@b", "example.com", ""),
        ("juliet", "", ""),
        ("juliet", "exa mple.com", ""),
        ("juliet", "example.com", "\x07"),
        ("foo bar", "example.com", ""),
    ],
)
def test_create_rejects_invalid_parts(local: str, domain: str, resource: str) -> None:
    with pytest.raises(InvalidJID):
        JID.create(local, domain, resource)


def test_parse_is_cached() -> None:
    first = JID.parse("cache-test@example.com/x")
    second = JID.parse("cache-test@example.com/x")
    assert first is second
    assert JID.parse("Cache-Test@example.com/x") == first


def test_jid_is_frozen_and_slotted() -> None:
    jid = JID.parse("juliet@example.com")
    assert not hasattr(jid, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        jid.local = "romeo"  # type: ignore[misc]


def test_repr_shows_the_parts() -> None:
    assert repr(JID.parse("juliet@example.com/r")) == (
        "JID(local='juliet', domain='example.com', resource='r')"
    )


def test_jid_pickles() -> None:
    jid = JID.parse("juliet@example.com/r")
    copy = pickle.loads(pickle.dumps(jid))
    assert copy == jid
    assert str(copy) == str(jid)


def test_nodeprep_and_resourceprep_reject_empty_strings() -> None:
    with pytest.raises(InvalidJID):
        nodeprep("")
    with pytest.raises(InvalidJID):
        resourceprep("")


def test_long_jids_work_without_the_cache() -> None:
    text = "u" * 300 + "@example.com/" + "r" * 300
    jid = JID.parse(text)
    assert jid == JID.parse(text)
    assert str(jid) == text
    assert jid.bare == JID("u" * 300, "example.com")
    assert jid.bare_str == "u" * 300 + "@example.com"
