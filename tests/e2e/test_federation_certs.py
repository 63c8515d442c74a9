"""Certificate authentication between servers (RFC 6120 §6.4 SASL EXTERNAL, XEP-0178,
names per RFC 6125) and what happens without it.

Three xmppd servers on loopback, pinned to each other's s2s listeners:
``a.example`` and ``b.example`` hold certificates of a test CA (made with
``cryptography``) that both trust (``s2s.ca_file``), ``a`` naming itself with DNS-IDs
and ``b`` with an SRV-ID and an XmppAddr only; ``c.example`` has its generated
self-signed certificate. ``a`` and ``b`` require valid certificates
(``default_policy = "certificates"``) except that ``b`` allows dialback for ``c``,
and do not use bidirectional streams (each direction authenticates on its own).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.e2e import PASSWORD, new_account
from tests.support.push import logged
from tests.support.rawstream import RawClient
from tests.support.s2s import S2S_HEADER, s2s_extra, wait_port
from tests.support.server import XmppdServer, free_port, running_server
from tests.support.testca import TestCA, install_certificate
from tests.support.xmlclient import Element, XmlClient, error_condition, tag


@dataclass
class Trio:
    a: XmppdServer
    b: XmppdServer
    c: XmppdServer
    ca: TestCA
    a_s2s_port: int


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    tmp: Path = tmp_path_factory.mktemp("federation-certs")
    ca = TestCA()
    ca_file = ca.write_ca(tmp / "ca.crt")
    install_certificate(ca, tmp / "a" / "data", "a.example", dns=["a.example", "*.a.example"])
    install_certificate(
        ca, tmp / "b" / "data", "b.example", srv=["b.example"], xmpp=["b.example"], dns=[]
    )
    ports = {d: free_port() for d in ("a.example", "b.example", "c.example")}

    def pins(me: str) -> dict[str, str]:
        return {d: f"127.0.0.1:{p}" for d, p in ports.items() if d != me}

    # Without XEP-0288 each direction has a connection of its own: EXTERNAL both ways.
    strict = f'ca_file = "{ca_file}"\ndefault_policy = "certificates"\nbidi = false\n'
    more = {
        "a.example": strict,
        "b.example": strict + 'policies = { "c.example" = "dialback" }\n',
        "c.example": f'ca_file = "{ca_file}"\n',
    }
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                running_server(tmp / d[0], domain=d, extra=s2s_extra(ports[d], pins(d), more[d]))
            )
            for d in ports
        ]
        for port in ports.values():
            wait_port(port)
        yield Trio(*servers, ca=ca, a_s2s_port=ports["a.example"])


def body_is(body: str) -> object:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def test_ca_signed_certificates_authenticate_with_sasl_external_both_ways(
    trio: Trio,
) -> None:
    alice_jid = await new_account(trio.a, "alice")
    bob_jid = await new_account(trio.b, "bob")
    async with (
        await XmlClient.login(trio.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(trio.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        alice.send(f"<message to='{bob_jid}/r' type='chat'><body>signed</body></message>")
        got: Element = await bob.expect(body_is("signed"))  # type: ignore[arg-type]
        assert got.get("from") == f"{alice_jid}/r"
        bob.send(f"<message to='{alice_jid}/r' type='chat'><body>sealed</body></message>")
        await alice.expect(body_is("sealed"))  # type: ignore[arg-type]
    # Each side accepted the other's certificate: a's DNS-ID, b's SRV-ID/XmppAddr.
    await logged(trio.b, "a.example authenticated for b.example (EXTERNAL)")
    await logged(trio.a, "b.example authenticated for a.example (EXTERNAL)")
    await logged(trio.a, "s2s-out a.example→b.example")
    for server in (trio.a, trio.b):
        assert "authenticated (EXTERNAL; certificate: valid)" in server.log_text()
        assert "(dialback)" not in server.log_text()


async def test_dialback_is_used_when_the_certificate_does_not_validate_and_policy_allows(
    trio: Trio,
) -> None:
    carol_jid = await new_account(trio.c, "carol")
    bob_jid = await new_account(trio.b, "bob")
    async with (
        await XmlClient.login(trio.c, carol_jid, PASSWORD, resource="r") as carol,
        await XmlClient.login(trio.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        carol.send(f"<message to='{bob_jid}/r' type='chat'><body>self-made</body></message>")
        await bob.expect(body_is("self-made"))  # type: ignore[arg-type]
    await logged(trio.b, "c.example authenticated for b.example (dialback)")
    # b never offered EXTERNAL to c: its certificate is self-signed.
    assert "SASL EXTERNAL of c.example refused" not in trio.b.log_text()


async def test_a_remote_without_a_valid_certificate_is_refused_when_policy_requires_one(
    trio: Trio,
) -> None:
    alice_jid = await new_account(trio.a, "alice")
    carol_jid = await new_account(trio.c, "carol")
    async with (
        await XmlClient.login(trio.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(trio.c, carol_jid, PASSWORD, resource="r") as carol,
    ):
        # Outgoing: a refuses c's self-signed certificate; alice's stanza bounces.
        reply = await alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="c.example")
        assert reply.get("type") == "error"
        assert error_condition(reply) == "remote-server-not-found"
        text = reply.findtext(f"{tag('error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text")
        assert text is not None and text.startswith("certificate:"), text
        assert "self-signed" in text
        # Incoming: c's dialback to a is refused (a requires a certificate).
        back = await carol.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="a.example")
        assert back.get("type") == "error"
        assert error_condition(back) == "remote-server-not-found"
    await logged(trio.a, "c.example refused: the policy requires a valid certificate")


async def raw_with_certificate(trio: Trio, tmp: Path, frm: str, cert_names: list[str]) -> RawClient:
    """A raw s2s peer to a.example that claims ``frm`` and presents a CA-signed client
    certificate naming ``cert_names``; returns after the post-TLS features."""
    cert, key = trio.ca.issue(cn=cert_names[0], dns=cert_names)
    TestCA.write_pair(cert, key, tmp / "peer.crt", tmp / "peer.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(tmp / "peer.crt", tmp / "peer.key")
    raw = RawClient.__new__(RawClient)
    raw.received = b""
    raw.reader, raw.writer = await asyncio.open_connection("127.0.0.1", trio.a_s2s_port)
    raw.send(S2S_HEADER.format(frm=frm, to="a.example"))
    await raw.read_until(b"</stream:features>")
    raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await raw.read_until(b"<proceed")
    await raw.writer.start_tls(ctx, server_hostname="a.example")
    raw.send(S2S_HEADER.format(frm=frm, to="a.example"))
    return raw


async def drop_raw(raw: RawClient) -> None:
    """Abort the peer's connection, TLS and TCP at once: a TLS writer only closed, never
    awaited, leaves its socket to the garbage collector, whose ResourceWarning then
    fails whichever test runs next in this process."""
    writer = raw.writer
    if writer is not None:
        writer.transport.abort()
        await asyncio.sleep(0)


def sasl_auth(authzid: str) -> str:
    text = base64.b64encode(authzid.encode()).decode() if authzid else "="
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{text}</auth>"


async def test_sasl_external_is_only_for_the_domain_the_certificate_names(
    trio: Trio, tmp_path: Path
) -> None:
    # A certificate for b.example does not make its holder mallory.example.
    raw = await raw_with_certificate(trio, tmp_path, "mallory.example", ["b.example"])
    try:
        features = await raw.read_until(b"</stream:features>")
        assert b"EXTERNAL" not in features, features
        raw.send(sasl_auth(""))
        refused = await raw.read_until(b"</failure>")
        assert b"<not-authorized" in refused, refused
    finally:
        await drop_raw(raw)
    # With its header's domain it works, but not for another authorization identity.
    raw = await raw_with_certificate(trio, tmp_path, "b.example", ["b.example"])
    try:
        features = await raw.read_until(b"</stream:features>")
        assert b"<mechanism>EXTERNAL</mechanism>" in features, features
        raw.send(sasl_auth("c.example"))
        other = await raw.read_until(b"</failure>")
        assert b"<invalid-authzid" in other, other
        raw.send(sasl_auth("b.example"))
        await raw.read_until(b"<success")
    finally:
        await drop_raw(raw)
    await logged(trio.a, "SASL EXTERNAL of mallory.example refused: certificate is not for")
