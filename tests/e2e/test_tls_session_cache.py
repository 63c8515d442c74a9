"""TLS session resumption from outside: xmppd issues stateless session tickets
(``tls.session_tickets``, on by default), so a client that comes back with the ticket of
its last connection resumes its TLS session, on the STARTTLS and the direct TLS port,
and the stream it then opens offers what a full handshake's does, but for ``tls-unique``
on a resumed TLS 1.2 session (the triple handshake attack, RFC 7627). That the server
caches nothing per ticket is checked with OpenSSL in ``tests/unit/test_tls_tickets.py``.
With ``session_tickets = false`` no ticket is issued at all."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.support.rawstream import STREAM_HEADER
from tests.support.server import XmppdServer, running_server

TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


class BlockingStream:
    """An XMPP stream over a blocking socket, for TLS options asyncio does not pass
    (the session to resume)."""

    def __init__(self, server: XmppdServer, *, direct: bool) -> None:
        self.server = server
        port = server.direct_tls_port if direct else server.starttls_port
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.received = b""

    def tls(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
        self.sock = context.wrap_socket(
            self.sock, server_hostname=self.server.domain, session=session
        )
        return self.sock

    def read_until(self, pattern: bytes) -> bytes:
        rx = re.compile(pattern, re.S)
        while not rx.search(self.received):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; received: {self.received[-2000:]!r}")
            self.received += chunk
        data, self.received = self.received, b""
        return data

    def open_stream(self) -> bytes:
        self.sock.sendall(STREAM_HEADER.format(to=self.server.domain).encode())
        return self.read_until(b"</stream:features>")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"</stream:stream>")
        self.sock.close()


@dataclass(frozen=True)
class Visit:
    """What one TLS connection showed before it was closed."""

    version: str | None
    resumed: bool
    session: ssl.SSLSession | None
    features: bytes


def connect(
    server: XmppdServer,
    context: ssl.SSLContext,
    session: ssl.SSLSession | None,
    *,
    direct: bool,
) -> Visit:
    """A TLS stream (direct, or after STARTTLS) offering ``session``, opened and
    closed."""
    stream = BlockingStream(server, direct=direct)
    if not direct:
        assert f'<starttls xmlns="{TLS_NS}"'.encode() in stream.open_stream()
        stream.sock.sendall(f"<starttls xmlns='{TLS_NS}'/>".encode())
        stream.read_until(b"<proceed")
    tls = stream.tls(context, session)
    features = stream.open_stream()  # a TLS 1.3 ticket arrives before the features
    visit = Visit(tls.version(), tls.session_reused, tls.session, features)
    stream.close()
    return visit


def client_context(server: XmppdServer, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.cafile))
    context.maximum_version = version
    return context


def channel_bindings(features: bytes) -> set[str]:
    """The channel-binding types the features advertise (XEP-0440)."""
    return {m.decode() for m in re.findall(rb"<channel-binding type=['\"]([^'\"]+)", features)}


def test_a_returning_client_resumes_its_tls_session(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        for direct in (False, True):
            context = client_context(server, ssl.TLSVersion.TLSv1_3)
            first = connect(server, context, None, direct=direct)
            assert first.version == "TLSv1.3"
            assert not first.resumed
            assert channel_bindings(first.features) == {"tls-server-end-point"}
            session = first.session
            assert session is not None and session.has_ticket, "no session ticket"
            for _ in range(3):  # each resumption brings a new ticket, resumable in turn
                again = connect(server, context, session, direct=direct)
                assert again.resumed, f"not resumed (direct TLS: {direct})"
                assert b"SCRAM-SHA-1-PLUS" in again.features
                assert channel_bindings(again.features) == {"tls-server-end-point"}
                assert again.session is not None
                session = again.session


def test_tls_unique_is_withheld_on_a_resumed_tls12_session(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        context = client_context(server, ssl.TLSVersion.TLSv1_2)
        first = connect(server, context, None, direct=False)
        assert first.version == "TLSv1.2"
        assert channel_bindings(first.features) == {"tls-server-end-point", "tls-unique"}
        again = connect(server, context, first.session, direct=False)
        assert again.resumed
        assert channel_bindings(again.features) == {"tls-server-end-point"}
        assert b"SCRAM-SHA-256-PLUS" in again.features  # tls-server-end-point still binds


def test_no_ticket_when_tickets_are_off(tmp_path: Path) -> None:
    with running_server(tmp_path, extra="[tls]\nsession_tickets = false\n") as server:
        for direct in (False, True):
            context = client_context(server, ssl.TLSVersion.TLSv1_3)
            visit = connect(server, context, None, direct=direct)
            assert visit.version == "TLSv1.3"
            assert visit.session is None or not visit.session.has_ticket, "a ticket was issued"
