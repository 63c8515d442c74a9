"""Lean TLS for XMPP streams: :class:`ssl.SSLObject` over two memory BIOs, driven by
the connection's protocol itself instead of the event loop's TLS transport.

Why: uvloop's TLS transport (``create_server(ssl=...)``, ``loop.start_tls``) keeps a
256 KiB read buffer per connection (asyncio's own loop zero-fills one), of which an
idle connection keeps ~11 KiB resident; together with OpenSSL's own state that made
an idle TLS session cost ~29 KB more than a plaintext one. Here the socket is read
as a plain stream (uvloop reads every plain stream into one buffer of the loop), the
bytes read go to the incoming BIO at once, and decrypted bytes are read into one
shared plaintext buffer: a connection owns only OpenSSL's state, the two BIOs and
:class:`TlsLayer` itself.

A memory BIO keeps the capacity of the largest chunk it ever held, so bytes go in
and out in slices of at most :data:`SLICE`: a connection that once received or sent
a 200 KB stanza keeps ~5 KB of BIO buffers, not ~270 KB. (OpenSSL's own record
buffers are released between records: CPython sets ``SSL_MODE_RELEASE_BUFFERS``.)
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final, cast

SLICE: Final = 4096
"""Most bytes written into a memory BIO before they are read out again."""
_PLAIN_SIZE: Final = 65536


class _Buffers(threading.local):
    """The plaintext buffer of the event loop running in this thread. It is used only
    within one synchronous call, so every connection shares it."""

    def __init__(self) -> None:
        self.plain = memoryview(bytearray(_PLAIN_SIZE))


_buffers = _Buffers()


class TlsLayer:
    """One connection's TLS state. Bytes from the network go in with
    :meth:`receive` (plaintext comes out), plaintext to send with :meth:`send`
    (records come out); after every call, :meth:`output` holds what must be sent
    (handshake flights, alerts, key updates)."""

    __slots__ = ("_incoming", "_outgoing", "done", "obj", "peer_closed")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self.done = False
        """The handshake is complete."""
        self.peer_closed = False
        """The peer sent close_notify."""

    def start(self) -> None:
        """Begin the handshake (the client's first flight goes to :meth:`output`)."""
        self._handshake()

    def _handshake(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.done = True
        return True

    def receive(self, data: bytes) -> bytes:
        """Feed network bytes; the plaintext they complete (``b""``: none yet).
        Raises :class:`ssl.SSLError` when the peer breaks TLS."""
        incoming = self._incoming
        total = len(data)
        view = memoryview(data) if total > SLICE else data  # slices without copies
        start = 0
        chunks: list[bytes] = []
        plain = _buffers.plain
        got = 0
        while start < total and not self.peer_closed:
            incoming.write(view[start : start + SLICE])
            start += SLICE
            if not self.done and not self._handshake():
                continue
            got = self._read(plain, got, chunks)
        if got:
            chunks.append(bytes(plain[:got]))
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def _read(self, plain: memoryview, got: int, chunks: list[bytes]) -> int:
        """Decrypt what the incoming BIO holds into ``plain`` from ``got``; returns
        the new fill (full buffers move to ``chunks``)."""
        incoming = self._incoming
        obj = self.obj
        # SSLObject.read(len, buffer) returns a count (typeshed says bytes).
        read: Callable[[int, memoryview], int] = cast(Any, obj.read)
        # Stop once nothing is left to decrypt, rather than on SSLWantReadError: an
        # exception per socket read costs more than the two checks.
        while incoming.pending or obj.pending():
            if got == _PLAIN_SIZE:
                chunks.append(bytes(plain))
                got = 0
            try:
                n = read(_PLAIN_SIZE - got, plain[got:])
            except ssl.SSLWantReadError:  # a record's remainder is still to come
                break
            if n == 0:  # close_notify
                self.peer_closed = True
                break
            got += n
        return got

    def send(self, data: bytes) -> bytes:
        """Encrypt ``data``; the records to send."""
        obj = self.obj
        outgoing = self._outgoing
        if len(data) <= SLICE:
            obj.write(data)
            return outgoing.read()
        view = memoryview(data)
        parts = []
        for start in range(0, len(data), SLICE):
            obj.write(view[start : start + SLICE])
            parts.append(outgoing.read())
        return b"".join(parts)

    def output(self) -> bytes:
        """Bytes TLS itself must send now (``b""``: none)."""
        outgoing = self._outgoing
        return outgoing.read() if outgoing.pending else b""

    def shutdown(self) -> bytes:
        """Our close_notify; the bytes to send."""
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.obj.unwrap()
        return self.output()

    def describe(self) -> str:
        """Protocol version and cipher, for logs."""
        cipher = self.obj.cipher()
        return f"{self.obj.version()} {cipher[0] if cipher else '?'}"
