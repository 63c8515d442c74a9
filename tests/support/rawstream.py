"""A raw-socket XMPP client for error-path tests: exact bytes in, bytes out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl

from tests.support.server import XmppdServer

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
)


class RawClient:
    """Speaks XMPP by hand. ``read_until`` accumulates what the server sent."""

    def __init__(self, server: XmppdServer) -> None:
        self.server = server
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received = b""

    async def connect(self, *, direct_tls: bool = False) -> RawClient:
        port = self.server.direct_tls_port if direct_tls else self.server.starttls_port
        ctx = self._tls() if direct_tls else None
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=self.server.domain if ctx else None
        )
        return self

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.server.cafile))

    def send(self, data: str | bytes) -> None:
        assert self.writer is not None
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def read_until(self, pattern: str | bytes, timeout: float = 10) -> bytes:
        """Read until ``pattern`` (a regex) matches what was received since the last call."""
        assert self.reader is not None
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
        async with asyncio.timeout(timeout):
            while not rx.search(self.received):
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed; received: {self.received[-2000:]!r}")
                self.received += chunk
        data, self.received = self.received, b""
        return data

    async def read_to_close(self, timeout: float = 10) -> bytes:
        """Everything the server sends until it closes the connection."""
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                self.received += chunk
        data, self.received = self.received, b""
        return data

    async def open_stream(self, to: str | None = None) -> bytes:
        self.send(STREAM_HEADER.format(to=to or self.server.domain))
        return await self.read_until(b"</stream:features>")

    async def starttls(self) -> None:
        await self.open_stream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until(b"<proceed")
        assert self.writer is not None
        await self.writer.start_tls(self._tls(), server_hostname=self.server.domain)

    async def login(self, username: str, password: str, resource: str = "raw") -> str:
        """STARTTLS, SASL PLAIN, bind; returns the bound full JID."""
        await self.starttls()
        await self.open_stream()
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        reply = await self.read_until(b"<success|<failure")
        if b"<success" not in reply:
            raise PermissionError(reply.decode())
        await self.open_stream()
        self.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        reply = await self.read_until(b"</iq>")
        match = re.search(rb"<jid>([^<]+)</jid>", reply)
        assert match, reply
        return match.group(1).decode()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()


def stream_error(data: bytes) -> str | None:
    """The condition of the ``<stream:error>`` in ``data``, if any."""
    match = re.search(
        rb"<stream:error[^>]*>\s*<([a-z-]+)[^>]*xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams",
        data,
    )
    return match.group(1).decode() if match else None


def stanza_error(data: bytes) -> str | None:
    """The condition of the first stanza ``<error>`` in ``data``, if any."""
    match = re.search(
        rb"<error[^>]*>\s*<([a-z-]+)[^>]*xmlns=['\"]urn:ietf:params:xml:ns:xmpp-stanzas", data
    )
    return match.group(1).decode() if match else None
