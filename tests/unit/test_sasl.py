"""Tests for xmppd.auth.sasl and xmppd.auth.scram.

SCRAM exchanges are driven with scramp's client, an implementation independent of
ours.  Where scramp cannot produce the message we need (authzid, hand-made faults)
the tests build it from the RFC 5802 formulas directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator

import pytest
from scramp import ScramClient, ScramMechanism

from xmppd.auth.sasl import (
    Challenge,
    Failure,
    Mechanism,
    Success,
    TlsChannel,
    configure_unknown_user_disguise,
    create_mechanism,
    offered_mechanisms,
    verify_password,
)
from xmppd.auth.scram import SCRAM_HASHES, ScramCredentials, derive_credentials

DOMAIN = "example.org"
PASSWORD = "r0m30-myr0m30"
TLS_BINDINGS = {
    "tls-server-end-point": b"\x01server-end-point-hash\x02" * 2,
    "tls-unique": b"\x03finished-message\x04",
}
TLS = TlsChannel(TLS_BINDINGS)
TLS_NO_BINDINGS = TlsChannel({})

_HASHLIB = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}


class FakeLookup:
    """In-memory credential store recording the lookups made."""

    def __init__(self) -> None:
        self.creds: dict[tuple[str, str], ScramCredentials] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def add(self, username: str, password: str, hashes: tuple[str, ...] = SCRAM_HASHES) -> None:
        for hash_name in hashes:
            self.creds[username, hash_name] = derive_credentials(password, hash_name)

    async def get_scram(self, username: str, hash_name: str) -> ScramCredentials | None:
        self.calls.append((username, hash_name))
        if self.fail:
            raise RuntimeError("database is down")
        return self.creds.get((username, hash_name))


@pytest.fixture
def lookup() -> FakeLookup:
    store = FakeLookup()
    store.add("juliet", PASSWORD)
    return store


@pytest.fixture(autouse=True)
def _restore_disguise() -> Iterator[None]:
    yield
    configure_unknown_user_disguise(b"test-suite-default-secret")


def mechanism(
    name: str,
    lookup: FakeLookup,
    *,
    tls: TlsChannel | None = TLS,
    allow_plain: bool = True,
) -> Mechanism:
    mech = create_mechanism(name, domain=DOMAIN, lookup=lookup, tls=tls, allow_plain=allow_plain)
    assert mech is not None
    assert mech.name == name
    return mech


def scram_names(plus: bool) -> list[str]:
    return [f"SCRAM-{h}" + ("-PLUS" if plus else "") for h in SCRAM_HASHES]


async def scramp_exchange(
    mech: Mechanism,
    username: str,
    password: str,
    *,
    client_mechanism: str | None = None,
    channel_binding: tuple[str, bytes] | None = None,
) -> tuple[ScramClient, Challenge, Success | Failure]:
    """Run a whole exchange with scramp's client; verify v= on success."""
    client = ScramClient(
        [client_mechanism or mech.name], username, password, channel_binding=channel_binding
    )
    first = await mech.step(client.get_client_first().encode())
    assert isinstance(first, Challenge), first
    client.set_server_first(first.data.decode())
    result = await mech.step(client.get_client_final().encode())
    assert isinstance(result, Success | Failure), result
    if isinstance(result, Success):
        client.set_server_final(result.data.decode())  # raises if the verifier is wrong
    return client, first, result


def parse_server_first(data: bytes) -> dict[str, str]:
    items = data.decode().split(",")
    assert [item[:2] for item in items] == ["r=", "s=", "i="]
    return {item[0]: item[2:] for item in items}


def rfc5802_client_final(
    hash_name: str,
    password: str,
    client_first_bare: str,
    server_first: bytes,
    cbind_input: bytes,
) -> str:
    """Compute a client-final message straight from the RFC 5802 formulas."""
    name = _HASHLIB[hash_name]
    attrs = parse_server_first(server_first)
    salted = hashlib.pbkdf2_hmac(
        name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", name)
    stored_key = hashlib.new(name, client_key).digest()
    without_proof = f"c={base64.b64encode(cbind_input).decode()},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, name)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


async def manual_exchange(
    mech: Mechanism,
    hash_name: str,
    gs2_header: str,
    username: str,
    password: str,
    cb_data: bytes = b"",
) -> Success | Failure:
    bare = f"n={username},r=manualnonce123"
    first = await mech.step((gs2_header + bare).encode())
    if isinstance(first, Failure):
        return first
    assert isinstance(first, Challenge)
    final = rfc5802_client_final(
        hash_name, password, bare, first.data, gs2_header.encode() + cb_data
    )
    result = await mech.step(final.encode())
    assert isinstance(result, Success | Failure)
    return result


# ----------------------------------------------------------- mechanism lists


def test_offered_mechanisms_without_tls_are_scram_strongest_first() -> None:
    expected = ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert offered_mechanisms(tls=None, allow_plain=False) == expected
    assert offered_mechanisms(tls=None, allow_plain=True) == expected


def test_offered_mechanisms_with_tls_but_no_bindings() -> None:
    assert offered_mechanisms(tls=TLS_NO_BINDINGS, allow_plain=True) == [
        "SCRAM-SHA-512",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    assert "PLAIN" not in offered_mechanisms(tls=TLS_NO_BINDINGS, allow_plain=False)


def test_offered_mechanisms_with_channel_binding_put_plus_first() -> None:
    assert offered_mechanisms(tls=TLS, allow_plain=True) == [
        "SCRAM-SHA-512-PLUS",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-512",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]


def test_bindings_with_empty_data_do_not_count() -> None:
    tls = TlsChannel({"tls-unique": b""})
    assert "SCRAM-SHA-256-PLUS" not in offered_mechanisms(tls=tls, allow_plain=False)


@pytest.mark.parametrize(
    ("name", "tls", "allow_plain"),
    [
        ("DIGEST-MD5", TLS, True),
        ("scram-sha-256", TLS, True),
        ("SCRAM-SHA3-512", TLS, True),
        ("PLAIN", None, True),
        ("PLAIN", TLS, False),
        ("SCRAM-SHA-256-PLUS", None, True),
        ("SCRAM-SHA-256-PLUS", TLS_NO_BINDINGS, True),
        ("", TLS, True),
    ],
)
def test_create_mechanism_refuses_what_is_not_offered(
    name: str, tls: TlsChannel | None, allow_plain: bool, lookup: FakeLookup
) -> None:
    assert (
        create_mechanism(name, domain=DOMAIN, lookup=lookup, tls=tls, allow_plain=allow_plain)
        is None
    )


# ------------------------------------------------------------------ SCRAM ok


@pytest.mark.parametrize("name", scram_names(plus=False))
async def test_scram_succeeds_without_tls(name: str, lookup: FakeLookup) -> None:
    mech = mechanism(name, lookup, tls=None)
    _, _, result = await scramp_exchange(mech, "juliet", PASSWORD)
    assert isinstance(result, Success)
    assert result.username == "juliet"
    assert result.data.startswith(b"v=")


@pytest.mark.parametrize("name", scram_names(plus=False))
async def test_scram_without_plus_succeeds_over_tls_without_bindings(
    name: str, lookup: FakeLookup
) -> None:
    mech = mechanism(name, lookup, tls=TLS_NO_BINDINGS)
    _, _, result = await scramp_exchange(mech, "juliet", PASSWORD)
    assert isinstance(result, Success)
    assert result.username == "juliet"


@pytest.mark.parametrize("name", scram_names(plus=True))
@pytest.mark.parametrize("cb_type", ["tls-server-end-point", "tls-unique"])
async def test_scram_plus_succeeds_with_channel_binding(
    name: str, cb_type: str, lookup: FakeLookup
) -> None:
    mech = mechanism(name, lookup)
    _, _, result = await scramp_exchange(
        mech, "juliet", PASSWORD, channel_binding=(cb_type, TLS_BINDINGS[cb_type])
    )
    assert isinstance(result, Success)
    assert result.username == "juliet"


async def test_scram_looks_up_the_matching_hash(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-512-PLUS", lookup)
    await scramp_exchange(
        mech, "juliet", PASSWORD, channel_binding=("tls-unique", TLS_BINDINGS["tls-unique"])
    )
    assert lookup.calls == [("juliet", "SHA-512")]


async def test_scram_username_is_prepared(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    _, _, result = await scramp_exchange(mech, "JULIET", PASSWORD)
    assert isinstance(result, Success)
    assert result.username == "juliet"
    assert lookup.calls == [("juliet", "SHA-256")]


async def test_scram_username_escapes_are_decoded(lookup: FakeLookup) -> None:
    lookup.add("a,b=c", "pw", ("SHA-256",))
    mech = mechanism("SCRAM-SHA-256", lookup)
    client, _, result = await scramp_exchange(mech, "a,b=c", "pw")
    assert client.client_first_bare.startswith("n=a=2Cb=3Dc,")
    assert isinstance(result, Success)
    assert result.username == "a,b=c"


async def test_scram_non_ascii_password(lookup: FakeLookup) -> None:
    lookup.add("romeo", "Ünïcødé πassword", ("SHA-1",))
    mech = mechanism("SCRAM-SHA-1", lookup)
    _, _, result = await scramp_exchange(mech, "romeo", "Ünïcødé πassword")
    assert isinstance(result, Success)


async def test_scram_waits_for_initial_response_after_empty_challenge(
    lookup: FakeLookup,
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    assert await mech.step(b"") == Challenge(b"")
    _, _, result = await scramp_exchange(mech, "juliet", PASSWORD)
    assert isinstance(result, Success)


async def test_scram_second_empty_response_is_malformed(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    assert await mech.step(b"") == Challenge(b"")
    assert await mech.step(b"") == Failure("malformed-request")


async def test_scram_step_after_completion_fails(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    _, _, result = await scramp_exchange(mech, "juliet", PASSWORD)
    assert isinstance(result, Success)
    assert await mech.step(b"") == Failure("malformed-request")
    assert await mech.step(b"n,,n=juliet,r=abcdef") == Failure("malformed-request")


# ----------------------------------------------------------- SCRAM failures


@pytest.mark.parametrize("name", scram_names(plus=False))
async def test_scram_wrong_password_is_not_authorized(name: str, lookup: FakeLookup) -> None:
    mech = mechanism(name, lookup)
    _, _, result = await scramp_exchange(mech, "juliet", "wrong password")
    assert result == Failure("not-authorized")


@pytest.mark.parametrize("name", scram_names(plus=False))
async def test_scram_unknown_user_gets_normal_server_first_then_not_authorized(
    name: str, lookup: FakeLookup
) -> None:
    known_client, known_first, _ = await scramp_exchange(
        mechanism(name, lookup), "juliet", PASSWORD
    )
    client, first, result = await scramp_exchange(mechanism(name, lookup), "nobody", PASSWORD)
    assert result == Failure("not-authorized")

    known = parse_server_first(known_first.data)
    unknown = parse_server_first(first.data)
    assert unknown["r"].startswith(str(client.c_nonce))
    assert len(unknown["r"]) - len(str(client.c_nonce)) == len(known["r"]) - len(
        str(known_client.c_nonce)
    )
    assert len(base64.b64decode(unknown["s"])) == len(base64.b64decode(known["s"])) == 16
    assert unknown["i"] == known["i"] == "4096"


async def test_scram_unknown_user_salt_is_stable_per_user(lookup: FakeLookup) -> None:
    async def salt_for(username: str) -> str:
        mech = mechanism("SCRAM-SHA-256", lookup)
        _, first, _ = await scramp_exchange(mech, username, PASSWORD)
        return parse_server_first(first.data)["s"]

    assert await salt_for("nobody") == await salt_for("nobody")
    assert await salt_for("nobody") != await salt_for("someone-else")


async def test_scram_unknown_user_disguise_can_be_configured(lookup: FakeLookup) -> None:
    async def first_attrs() -> dict[str, str]:
        mech = mechanism("SCRAM-SHA-256", lookup)
        _, first, _ = await scramp_exchange(mech, "nobody", PASSWORD)
        return parse_server_first(first.data)

    configure_unknown_user_disguise(b"secret-one", iterations=10000)
    one = await first_attrs()
    configure_unknown_user_disguise(b"secret-two", iterations=10000)
    two = await first_attrs()
    assert one["s"] != two["s"]
    assert one["i"] == two["i"] == "10000"
    configure_unknown_user_disguise(b"secret-one", iterations=10000)
    assert (await first_attrs())["s"] == one["s"]
    with pytest.raises(ValueError):
        configure_unknown_user_disguise(b"")


async def test_scram_unusable_stored_credentials_act_like_unknown_user(
    lookup: FakeLookup,
) -> None:
    good = lookup.creds["juliet", "SHA-256"]
    lookup.creds["juliet", "SHA-256"] = ScramCredentials(
        "SHA-1", good.salt, good.iterations, good.stored_key, good.server_key
    )
    _, _, result = await scramp_exchange(mechanism("SCRAM-SHA-256", lookup), "juliet", PASSWORD)
    assert result == Failure("not-authorized")


async def test_scram_lookup_error_is_temporary_auth_failure(lookup: FakeLookup) -> None:
    lookup.fail = True
    mech = mechanism("SCRAM-SHA-256", lookup)
    client = ScramClient(["SCRAM-SHA-256"], "juliet", PASSWORD)
    assert await mech.step(client.get_client_first().encode()) == Failure("temporary-auth-failure")


@pytest.mark.parametrize("username", ["foo bar", "♚", "a@b", "a/b", 'quote"d'])
async def test_scram_invalid_username_is_not_authorized_without_details(
    username: str, lookup: FakeLookup
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    escaped = username.replace("=", "=3D").replace(",", "=2C")
    result = await mech.step(f"n,,n={escaped},r=abcdef".encode())
    assert result == Failure("not-authorized", "")
    assert lookup.calls == []


async def test_scram_y_flag_when_plus_was_offered_is_a_downgrade(lookup: FakeLookup) -> None:
    # scramp sends "y,," when it supports channel binding but picks a non-PLUS mechanism.
    mech = mechanism("SCRAM-SHA-256", lookup, tls=TLS)
    client = ScramClient(
        ["SCRAM-SHA-256"], "juliet", PASSWORD, channel_binding=("tls-unique", b"whatever")
    )
    first_message = client.get_client_first()
    assert first_message.startswith("y,,")
    assert await mech.step(first_message.encode()) == Failure("not-authorized")


@pytest.mark.parametrize("tls", [None, TLS_NO_BINDINGS])
async def test_scram_y_flag_is_fine_when_plus_was_not_offered(
    tls: TlsChannel | None, lookup: FakeLookup
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=tls)
    _, _, result = await scramp_exchange(
        mech, "juliet", PASSWORD, channel_binding=("tls-unique", b"client-side-data")
    )
    assert isinstance(result, Success)


@pytest.mark.parametrize("name", scram_names(plus=True))
async def test_scram_plus_mismatched_binding_data_is_not_authorized(
    name: str, lookup: FakeLookup
) -> None:
    mech = mechanism(name, lookup)
    _, _, result = await scramp_exchange(
        mech, "juliet", PASSWORD, channel_binding=("tls-unique", b"a different channel")
    )
    assert result == Failure("not-authorized")


async def test_scram_plus_with_unavailable_binding_type_is_not_authorized(
    lookup: FakeLookup,
) -> None:
    tls = TlsChannel({"tls-server-end-point": b"endpoint-hash"})
    mech = mechanism("SCRAM-SHA-256-PLUS", lookup, tls=tls)
    client = ScramClient(
        ["SCRAM-SHA-256-PLUS"], "juliet", PASSWORD, channel_binding=("tls-unique", b"x")
    )
    assert await mech.step(client.get_client_first().encode()) == Failure("not-authorized")


async def test_scram_plus_rejects_n_flag(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256-PLUS", lookup)
    assert await mech.step(b"n,,n=juliet,r=abcdef") == Failure("malformed-request")


async def test_scram_p_flag_with_non_plus_mechanism_is_malformed(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup)
    assert await mech.step(b"p=tls-unique,,n=juliet,r=abcdef") == Failure("malformed-request")


async def test_scram_plus_binding_over_hand_built_exchange(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-1-PLUS", lookup)
    result = await manual_exchange(
        mech,
        "SHA-1",
        "p=tls-server-end-point,,",
        "juliet",
        PASSWORD,
        TLS_BINDINGS["tls-server-end-point"],
    )
    assert isinstance(result, Success)


@pytest.mark.parametrize(
    "message",
    [
        b"",  # (after the empty challenge, see below)
        b"\xff\xfe\x00garbage",
        b"hello",
        b"n,,",
        b"n,",
        b"n,,r=abcdef",
        b"n,,n=juliet",
        b"n,,r=abcdef,n=juliet",
        b"x,,n=juliet,r=abcdef",
        b"p,,n=juliet,r=abcdef",
        b"n,,m=ext,n=juliet,r=abcdef",
        b"n,,n=jul=iet,r=abcdef",
        b"n,,n=jul=2ciet,r=abcdef",
        b"n,,n=juliet,r=abc def",
        b"n,,n=juliet,r=abc\x7fdef",
        b"n,,n=juliet,r=",
        b"n,,n=,r=abcdef",
        b"n,,n=juliet,,r=abcdef",
        b"n,b,n=juliet,r=abcdef",
        b"n,a=,n=juliet,r=abcdef",
        b"n,a=jul=iet,n=juliet,r=abcdef",
        b"n,,nn=juliet,r=abcdef",
        b"n,,n=juliet,r=abcdef,",
    ],
)
async def test_scram_malformed_client_first_is_malformed_request(
    message: bytes, lookup: FakeLookup
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    if not message:
        assert await mech.step(b"") == Challenge(b"")
    assert await mech.step(message) == Failure("malformed-request")
    assert lookup.calls == []


async def test_scram_plus_malformed_cb_name_is_malformed_request(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256-PLUS", lookup)
    assert await mech.step(b"p=tls_unique,,n=juliet,r=abcdef") == Failure("malformed-request")
    mech = mechanism("SCRAM-SHA-256-PLUS", lookup)
    assert await mech.step(b"p=,,n=juliet,r=abcdef") == Failure("malformed-request")


async def test_scram_extensions_after_nonce_are_ignored(lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    bare = "n=juliet,r=manualnonce,x=extension"
    first = await mech.step(f"n,,{bare}".encode())
    assert isinstance(first, Challenge)
    final = rfc5802_client_final("SHA-256", PASSWORD, bare, first.data, b"n,,")
    assert isinstance(await mech.step(final.encode()), Success)


def _replace_attr(message: str, key: str, value: str | None) -> str:
    items = message.split(",")
    out = []
    for item in items:
        if item.startswith(f"{key}="):
            if value is None:
                continue
            item = f"{key}={value}"
        out.append(item)
    return ",".join(out)


@pytest.mark.parametrize(
    ("mutate", "condition"),
    [
        (lambda m: "garbage", "malformed-request"),
        (lambda m: "\udcff", "malformed-request"),
        (lambda m: _replace_attr(m, "p", None), "malformed-request"),
        (lambda m: _replace_attr(m, "c", None), "malformed-request"),
        (lambda m: _replace_attr(m, "r", None), "malformed-request"),
        (lambda m: _replace_attr(m, "p", "!!not-base64!!"), "malformed-request"),
        (lambda m: _replace_attr(m, "p", "AAAA"), "malformed-request"),
        (lambda m: _replace_attr(m, "c", "bi=x"), "malformed-request"),
        (lambda m: m + ",x=trailing", "malformed-request"),
        (lambda m: m.replace(",p=", ",,p="), "malformed-request"),
        (lambda m: _replace_attr(m, "r", "someothernonce"), "not-authorized"),
        (lambda m: _replace_attr(m, "c", "eSws"), "not-authorized"),  # "y,,"
        (lambda m: _replace_attr(m, "p", "A" * 43 + "="), "not-authorized"),
    ],
)
async def test_scram_bad_client_final_fails_cleanly(
    mutate: Callable[[str], str], condition: str, lookup: FakeLookup
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    client = ScramClient(["SCRAM-SHA-256"], "juliet", PASSWORD)
    first = await mech.step(client.get_client_first().encode())
    assert isinstance(first, Challenge)
    client.set_server_first(first.data.decode())
    final = mutate(client.get_client_final())
    data = final.encode("utf-8", "surrogateescape")
    assert await mech.step(data) == Failure(condition)


async def test_scram_client_final_with_extension_before_proof_is_accepted(
    lookup: FakeLookup,
) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    bare = "n=juliet,r=manualnonce"
    first = await mech.step(f"n,,{bare}".encode())
    assert isinstance(first, Challenge)
    name = "sha256"
    attrs = parse_server_first(first.data)
    salted = hashlib.pbkdf2_hmac(
        name, PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", name)
    stored_key = hashlib.new(name, client_key).digest()
    without_proof = f"c=biws,r={attrs['r']},x=ext"
    auth_message = f"{bare},{first.data.decode()},{without_proof}".encode()
    proof = bytes(
        a ^ b for a, b in zip(client_key, hmac.digest(stored_key, auth_message, name), strict=True)
    )
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    assert isinstance(await mech.step(final.encode()), Success)


# ------------------------------------------------------------ SCRAM authzid


@pytest.mark.parametrize(
    "authzid",
    ["juliet@example.org", "Juliet@Example.ORG", "juliet@example.org."],
)
async def test_scram_authzid_equal_to_own_jid_is_accepted(authzid: str, lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    result = await manual_exchange(mech, "SHA-256", f"n,a={authzid},", "juliet", PASSWORD)
    assert isinstance(result, Success)
    assert result.username == "juliet"


@pytest.mark.parametrize(
    "authzid",
    [
        "romeo@example.org",
        "juliet@example.com",
        "juliet@example.org/balcony",
        "example.org",
        "juliet",
        "not a jid@@",
    ],
)
async def test_scram_other_authzid_is_invalid_authzid(authzid: str, lookup: FakeLookup) -> None:
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    escaped = authzid.replace("=", "=3D").replace(",", "=2C")
    result = await manual_exchange(mech, "SHA-256", f"n,a={escaped},", "juliet", PASSWORD)
    assert result == Failure("invalid-authzid")


async def test_scram_authzid_is_covered_by_channel_binding(lookup: FakeLookup) -> None:
    # The c= attribute must repeat the whole GS2 header, authzid included.
    mech = mechanism("SCRAM-SHA-256", lookup, tls=None)
    bare = "n=juliet,r=manualnonce"
    first = await mech.step(f"n,a=juliet@example.org,{bare}".encode())
    assert isinstance(first, Challenge)
    final = rfc5802_client_final("SHA-256", PASSWORD, bare, first.data, b"n,,")
    assert await mech.step(final.encode()) == Failure("not-authorized")


# --------------------------------------------------------------------- PLAIN


async def test_plain_succeeds(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    result = await mech.step(f"\0juliet\0{PASSWORD}".encode())
    assert result == Success("juliet")
    assert lookup.calls == [("juliet", "SHA-256")]


async def test_plain_username_is_prepared(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(f"\0JULIET\0{PASSWORD}".encode()) == Success("juliet")


async def test_plain_with_own_authzid_succeeds(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(f"juliet@example.org\0juliet\0{PASSWORD}".encode()) == Success("juliet")


async def test_plain_with_other_authzid_is_invalid_authzid(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    result = await mech.step(f"romeo@example.org\0juliet\0{PASSWORD}".encode())
    assert result == Failure("invalid-authzid")


async def test_plain_wrong_password_is_not_authorized(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(b"\0juliet\0nope") == Failure("not-authorized")


async def test_plain_unknown_user_is_not_authorized(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(f"\0nobody\0{PASSWORD}".encode()) == Failure("not-authorized")


async def test_plain_invalid_username_is_not_authorized(lookup: FakeLookup) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(f"\0foo bar\0{PASSWORD}".encode()) == Failure("not-authorized")


@pytest.mark.parametrize(
    "payload",
    [
        b"juliet",
        b"\0juliet",
        b"\0juliet\0pw\0extra",
        b"\0\0pw",
        b"\0juliet\0",
        b"\0juli\xffet\0pw",
        b"\0juliet\0p\xc3w",
    ],
)
async def test_plain_malformed_payload_is_malformed_request(
    payload: bytes, lookup: FakeLookup
) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(payload) == Failure("malformed-request")


async def test_plain_waits_for_initial_response_after_empty_challenge(
    lookup: FakeLookup,
) -> None:
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(b"") == Challenge(b"")
    assert await mech.step(f"\0juliet\0{PASSWORD}".encode()) == Success("juliet")
    assert await mech.step(f"\0juliet\0{PASSWORD}".encode()) == Failure("malformed-request")


async def test_plain_lookup_error_is_temporary_auth_failure(lookup: FakeLookup) -> None:
    lookup.fail = True
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(f"\0juliet\0{PASSWORD}".encode()) == Failure("temporary-auth-failure")


async def test_plain_falls_back_to_other_hashes(lookup: FakeLookup) -> None:
    lookup.add("romeo", "pw-512", ("SHA-512",))
    mech = mechanism("PLAIN", lookup)
    assert await mech.step(b"\0romeo\0pw-512") == Success("romeo")


def test_plain_is_not_offered_without_tls(lookup: FakeLookup) -> None:
    assert "PLAIN" not in offered_mechanisms(tls=None, allow_plain=True)
    assert (
        create_mechanism("PLAIN", domain=DOMAIN, lookup=lookup, tls=None, allow_plain=True) is None
    )


# ----------------------------------------------------------- verify_password


async def test_verify_password(lookup: FakeLookup) -> None:
    assert await verify_password(lookup, "juliet", PASSWORD)
    assert await verify_password(lookup, "Juliet", PASSWORD)
    assert not await verify_password(lookup, "juliet", PASSWORD + "x")
    assert not await verify_password(lookup, "nobody", PASSWORD)
    assert not await verify_password(lookup, "juliet", "")
    assert not await verify_password(lookup, "juliet", "bad\x00password")
    assert not await verify_password(lookup, "", PASSWORD)


async def test_verify_password_applies_precis_to_the_password(lookup: FakeLookup) -> None:
    lookup.add("romeo", "with space", ("SHA-256",))
    # OpaqueString maps non-ASCII spaces to U+0020.
    assert await verify_password(lookup, "romeo", "with\u00a0space")


# ------------------------------------------------------------------ scram.py


@pytest.mark.parametrize("hash_name", SCRAM_HASHES)
def test_derive_credentials_matches_scramp(hash_name: str) -> None:
    salt = b"0123456789abcdef"
    ours = derive_credentials(PASSWORD, hash_name, iterations=4096, salt=salt)
    theirs = ScramMechanism(f"SCRAM-{hash_name}").make_auth_info(
        PASSWORD, iteration_count=4096, salt=salt
    )
    assert (ours.salt, ours.stored_key, ours.server_key, ours.iterations) == theirs
    assert ours.hash_name == hash_name


def test_derive_credentials_uses_random_16_byte_salts() -> None:
    a = derive_credentials(PASSWORD, "SHA-256")
    b = derive_credentials(PASSWORD, "SHA-256")
    assert len(a.salt) == len(b.salt) == 16
    assert a.salt != b.salt
    assert a.stored_key != b.stored_key
    assert a.iterations == 4096


def test_derive_credentials_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        derive_credentials(PASSWORD, "MD5")
    with pytest.raises(ValueError):
        derive_credentials("", "SHA-256")
    with pytest.raises(ValueError):
        derive_credentials("bad\x07", "SHA-256")
    with pytest.raises(ValueError):
        derive_credentials(PASSWORD, "SHA-256", iterations=0)
    with pytest.raises(ValueError):
        derive_credentials(PASSWORD, "SHA-256", salt=b"")


def test_derive_credentials_error_does_not_echo_the_password() -> None:
    with pytest.raises(ValueError) as info:
        derive_credentials("hunter2\x07", "SHA-256")
    assert "hunter2" not in str(info.value)


# ------------------------------------------------------------------- logging


async def test_secrets_and_payloads_are_not_logged(
    lookup: FakeLookup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lookup.creds["juliet", "SHA-1"] = ScramCredentials("SHA-1", b"s", 1, b"short", b"short")
    for name in ["SCRAM-SHA-1", "SCRAM-SHA-256"]:
        mech = mechanism(name, lookup)
        await scramp_exchange(mech, "juliet", "Secret-Password-1")
    await mechanism("PLAIN", lookup).step(b"\0juliet\0Secret-Password-2")
    await mechanism("SCRAM-SHA-256", lookup).step(b"n,,n=juliet,r=Nonce-Payload-3 x")
    lookup.fail = True
    await mechanism("PLAIN", lookup).step(b"\0juliet\0Secret-Password-4")
    assert caplog.records  # the unusable credentials and the lookup error were logged
    for secret in ["Secret-Password", "Nonce-Payload", "database is down"]:
        assert secret not in caplog.text
