"""TLS for incoming server-to-server connections that asks for the peer's certificate
without judging it (pyOpenSSL over memory BIOs).

SASL EXTERNAL (RFC 6120 §6.4, XEP-0178) needs the certificate the remote server
presents as a TLS client. The standard library can request one only with
``CERT_OPTIONAL``/``CERT_REQUIRED``, which make OpenSSL fail the handshake whenever the
certificate does not chain to a configured CA: a remote with a self-signed certificate
(which may still authenticate with dialback) could not connect at all. Here the
handshake requests a certificate, accepts whatever comes (or nothing), and
:mod:`xmppd.s2s.certs` decides afterwards, so the log can say why it does not validate.

:class:`PeerTlsContexts` holds one pyOpenSSL context per local host (chosen by SNI);
:class:`TlsSession` is one connection's TLS state: bytes from the network go in with
:meth:`TlsSession.receive`, plaintext comes out, and what must be sent back is
returned by every call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

_READ_CHUNK: Final = 65536


def _accept_any(_conn: SSL.Connection, _cert: object, _errnum: int, _depth: int, _ok: int) -> bool:
    """Every certificate passes the handshake; :mod:`xmppd.s2s.certs` checks it later."""
    return True


class PeerTlsContexts:
    """Server contexts per local domain that request (never require) a client
    certificate; the first domain is the default when SNI names none of ours."""

    __slots__ = ("_by_domain", "default")

    def __init__(self, pairs: Mapping[str, tuple[Path, Path]], *, min_version: str = "1.2") -> None:
        if not pairs:
            raise ValueError("no certificates")
        self._by_domain: dict[str, SSL.Context] = {}
        for domain, (cert, key) in pairs.items():
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(
                SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION
            )
            ctx.use_certificate_chain_file(str(cert))
            ctx.use_privatekey_file(str(key))
            ctx.check_privatekey()
            ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
            ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
            ctx.set_tlsext_servername_callback(self._select)
            self._by_domain[domain] = ctx
        self.default = next(iter(self._by_domain.values()))

    def _select(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").lower().rstrip(".")
        ctx = self._by_domain.get(name)
        if ctx is None and "." in name:
            ctx = self._by_domain.get(name.split(".", 1)[1])
        if ctx is not None:
            conn.set_context(ctx)

    def session(self) -> TlsSession:
        return TlsSession(self.default)


class TlsError(Exception):
    """The TLS layer failed (handshake or record error); the connection must close."""


class TlsSession:
    """One server-side TLS connection over memory buffers."""

    __slots__ = ("_conn", "closed", "handshake_done")

    def __init__(self, context: SSL.Context) -> None:
        self._conn = SSL.Connection(context, None)
        self._conn.set_accept_state()
        self.handshake_done = False
        self.closed = False
        """The peer sent close_notify."""

    def _outgoing(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self._conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed network bytes; returns (plaintext, bytes to send to the peer)."""
        self._conn.bio_write(data)
        try:
            if not self.handshake_done:
                try:
                    self._conn.do_handshake()
                except SSL.WantReadError:
                    return b"", self._outgoing()
                self.handshake_done = True
            plain = bytearray()
            while True:
                try:
                    plain += self._conn.recv(_READ_CHUNK)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    self.closed = True
                    break
        except SSL.Error as exc:
            raise TlsError(str(exc) or type(exc).__name__) from None
        return bytes(plain), self._outgoing()

    def send(self, data: bytes) -> bytes:
        """Encrypt ``data``; the bytes to send."""
        view = memoryview(data)
        try:
            while view:
                sent = self._conn.send(view[:_READ_CHUNK].tobytes())
                view = view[sent:]
        except SSL.Error as exc:
            raise TlsError(str(exc) or type(exc).__name__) from None
        return self._outgoing()

    def shutdown(self) -> bytes:
        """Our close_notify; the bytes to send."""
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        return self._outgoing()

    def peer_chain(self) -> list[bytes]:
        """The certificates the peer sent (DER, leaf first), validated or not."""
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return []
        chain = [leaf.public_bytes(Encoding.DER)]
        for cert in self._conn.get_peer_cert_chain(as_cryptography=True) or []:
            der = cert.public_bytes(Encoding.DER)
            if der not in chain:
                chain.append(der)
        return chain

    def version(self) -> str:
        return str(self._conn.get_protocol_version_name())
