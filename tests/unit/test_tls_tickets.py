"""The c2s TLS context's session tickets, with OpenSSL itself on both ends (memory BIOs,
no sockets): a client that kept its ticket resumes without the certificate, and the
server keeps nothing per session, however many it issued. With ``OP_NO_TICKET`` alone
TLS 1.3 tickets would be *stateful*: every session cached in the context."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from xmppd.tls import generate_self_signed, server_context

HANDSHAKES = 200


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cert")
    cert, key = folder / "c.crt", folder / "c.key"
    generate_self_signed("localhost", cert, key)
    return cert, key


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """One handshake through memory BIOs, then one application record from the server
    (a TLS 1.3 ticket arrives after the handshake, before the first data)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    s.write(b"<stream:features/>")
    c_in.write(s_out.read())
    assert c.read(100) == b"<stream:features/>"
    return c, s


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_returning_client_resumes_and_the_server_keeps_nothing(
    certificate: tuple[Path, Path], version: ssl.TLSVersion
) -> None:
    server = server_context(*certificate)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    client.maximum_version = version
    session: ssl.SSLSession | None = None
    resumed = 0
    for _ in range(HANDSHAKES):
        c, s = _handshake(server, client, session)
        assert s.version() == version.name.replace("v1_", "v1.")
        resumed += s.session_reused
        assert c.session is not None and c.session.has_ticket
        session = c.session
    assert resumed == HANDSHAKES - 1  # every handshake after the first
    stats = server.session_stats()
    assert stats["hits"] == HANDSHAKES - 1
    assert stats["number"] == 0, "sessions are cached on the server"


def test_without_tickets_none_is_issued_and_nothing_is_cached(
    certificate: tuple[Path, Path],
) -> None:
    server = server_context(*certificate, session_tickets=False)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    for _ in range(20):
        c, s = _handshake(server, client, None)
        assert s.version() == "TLSv1.3"
        assert c.session is None or not c.session.has_ticket
    assert server.session_stats()["number"] == 0
